class UserError(Exception):
    """Bad input from the user (a config, a flag, a file, a checkpoint).

    The command-line tools print its message as one line on stderr and exit with status 2,
    so nothing the user typed ever ends in a traceback.
    """


class CommTimeout(Exception):
    """A collective that did not complete within comm_timeout seconds: a rank died, a host
    dropped off or a link was cut. The message names the collective and the silent ranks."""

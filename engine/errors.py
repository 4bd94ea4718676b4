class UserError(Exception):
    """Bad input from the user (a config, a flag, a file, a checkpoint).

    The command-line tools print its message as one line on stderr and exit with status 2,
    so nothing the user typed ever ends in a traceback.
    """

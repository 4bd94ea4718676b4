"""What every nano2 command shares: argument parsing that ends a bad flag with one line and
exit status 2, config overrides from the leftover `--key=value` words, and the error wrapper."""
import argparse
import sys

from engine.errors import UserError
from train.config import FIELD_TYPES, load_config

OVERRIDES_HELP = ("Any config key can also be set on the command line as --key=value or --key value: "
                  + ", ".join(FIELD_TYPES) + ".")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is a UserError (one line, exit 2) instead of usage text."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("epilog", OVERRIDES_HELP)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UserError(message)


def parse_with_config(parser, argv=None):
    """(args, cfg): the command's own flags, and the config from --config plus any overrides."""
    args, rest = parser.parse_known_args(argv)
    return args, load_config(args.config, rest)


def run_main(main, prog):
    """Run a command's main(); a UserError becomes one line on stderr and exit status 2."""
    try:
        return main()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)

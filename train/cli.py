"""What every nano2 command shares: argument parsing that ends a bad flag with one line and
exit status 2, config overrides from the leftover `--key=value` words, and the error wrapper
that, under MPI, ends the whole job when any rank fails."""
import argparse
import math
import os
import re
import sys
import tempfile
import traceback

from engine import comm
from engine.errors import CommTimeout, UserError
from train.config import FIELD_TYPES, load_config

OVERRIDES_HELP = ("Any config key can also be set on the command line as --key=value or --key value: "
                  + ", ".join(FIELD_TYPES) + ".")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is a UserError (one line, exit 2) instead of usage text, said
    as `--flag must ...` for the number types below."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("epilog", OVERRIDES_HELP)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UserError(re.sub(r"^argument (-[^/:\s]+)\S*: (must )", r"\1 \2", message))


def finite(kind, text):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def positive(kind):
    """An argparse type: a finite number of `kind` (int or float) above 0."""
    def parse(text):
        value = finite(kind, text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be positive")
        return value
    return parse


def not_negative(kind):
    """An argparse type: a finite number of `kind` (int or float), 0 or more."""
    def parse(text):
        value = finite(kind, text)
        if value < 0:
            raise argparse.ArgumentTypeError("must not be negative")
        return value
    return parse


def make_folder(path, flag):
    """os.makedirs(path), with a path that cannot be a folder, or a folder this process cannot
    write in, as one UserError naming the flag."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"--{flag}={path}: cannot make this folder ({e.strerror})") from None
    try:
        with tempfile.TemporaryFile(dir=path):  # permissions alone do not say (root, read-only mounts)
            pass
    except OSError as e:
        raise UserError(f"--{flag}={path}: cannot write in this folder ({e.strerror})") from None


def parse_with_config(parser, argv=None, checkpoint_flag=None):
    """(args, cfg): the command's own flags, and the config from --config plus any overrides,
    over the model of the checkpoint that the flag named `checkpoint_flag` gives, if any."""
    args, rest = parser.parse_known_args(argv)
    return args, load_config(args.config, rest, getattr(args, checkpoint_flag) if checkpoint_flag else None)


def add_checkpoint_argument(parser, flag="--ckpt"):
    parser.add_argument(flag, metavar="CKPT", help="start from this nano2 checkpoint's parameters, its model's "
                        "shape and tokenizer (an imported one too) instead of a fresh init")


def user_message(error):
    if isinstance(error, MemoryError):
        return f"out of memory ({error}); try a smaller batch_size, seq_len or model"
    return str(error)


def run_main(main, prog):
    """Run a command's main() and return its status. A UserError, or running out of memory (a
    batch, sequence or model too big for the machine), becomes one line on stderr and status 2.
    Under mpirun, any exception on any rank prints one line naming the rank and ends
    every rank at once through MPI_Abort, rather than leaving the others waiting forever."""
    if not comm.launched_by_mpi():
        try:
            return main()
        except (UserError, MemoryError) as e:
            print(f"{prog}: error: {user_message(e)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            sys.exit(130)
    world = comm.world()
    try:
        return main()
    except (UserError, MemoryError) as e:
        print(f"{prog}: rank {world.rank}: error: {user_message(e)}", file=sys.stderr)
        world.abort(2)
    except CommTimeout as e:
        print(f"{prog}: rank {world.rank}: {e}; ending the job", file=sys.stderr)
        world.abort(3)
    except BaseException as e:  # a bug, or Ctrl-C outside the training loop: all ranks must end
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):
            traceback.print_exc()
        if isinstance(e, SystemExit) and e.code in (0, None):
            raise
        print(f"{prog}: rank {world.rank}: {type(e).__name__}: {e}", file=sys.stderr)
        world.abort(e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1)

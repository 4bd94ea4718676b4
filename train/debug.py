"""nano2_debug: look inside one step of backprop.

  state   one forward and backward on a seeded random batch, written as a safetensors debug
          state (as llm.c's gpt2_124M_debug_state.bin): inputs, targets, logits, loss, every
          parameter under its checkpoint name and every gradient as grad.<name>.
"""
import argparse
import sys

import numpy as np

from engine.backend import to_numpy
from engine.params import write_safetensors
from train.cli import ArgumentParser, parse_with_config, run_main
from train.config import build_model, validate
from train.gradcheck import random_batch


def write_state(model, cfg, idx, targets, path):
    """Run one forward and backward on (idx, targets) and write everything it produced to `path`."""
    model.store.zero_grad()
    logits, loss = model.forward(idx, targets)
    model.backward()
    tensors = {
        "inputs": to_numpy(idx).astype(np.int32),
        "targets": to_numpy(targets).astype(np.int32),
        "logits": to_numpy(logits),
        "loss": to_numpy(loss).reshape(1),
    }
    tensors.update(model.store.state_tensors(with_grads=True))
    write_safetensors(path, tensors, {"config": cfg.to_dict(), "format": "nano2 debug state"})
    return float(loss)


def state_command(args, cfg):
    for key in ("batch_size", "seq_len", "seed", "dtype"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    validate(cfg)
    model = build_model(cfg)
    rng = np.random.default_rng(cfg.seed)
    idx, targets = random_batch(rng, cfg.batch_size, cfg.seq_len, cfg.vocab_size)
    loss = write_state(model, cfg, model.xp.asarray(idx), model.xp.asarray(targets), args.out)
    print(f"wrote {args.out}: loss {loss:.6f}, {len(model.store.shapes)} parameters and their "
          f"gradients, batch {cfg.batch_size} x {cfg.seq_len}, {cfg.dtype}")
    return 0


def main(argv=None):
    parser = ArgumentParser(prog="nano2_debug", description=__doc__.splitlines()[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    state = commands.add_parser("state", help="write one step's inputs, logits, loss, parameters and gradients")
    state.add_argument("--config", help="JSON config file (default: the built-in defaults)")
    state.add_argument("--batch-size", type=int)
    state.add_argument("--seq-len", type=int)
    state.add_argument("--seed", type=int)
    state.add_argument("--dtype", choices=["float32", "float64"])
    state.add_argument("--out", required=True, help="the .safetensors file to write")
    args, cfg = parse_with_config(parser, argv)
    return state_command(args, cfg)


def entry():
    sys.exit(run_main(main, "nano2_debug"))

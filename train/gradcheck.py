"""nano2_gradcheck: the whole model's analytic gradients against central finite differences.

The differences are always taken in float64 (on a float64 copy of the same weights): float32's
~1e-7 rounding in each loss would swamp the small gradients of the LayerNorm and attention
parameters. With --dtype float32 this checks the float32 backward against the true derivative.

For every parameter tensor it perturbs a sample of entries (the largest analytic gradients,
where a wrong formula shows most, plus random ones, which catch gradients wrongly left at
zero), and reports ||analytic - numeric|| / max(||analytic||, ||numeric||) over that sample;
a tensor over the tolerance is differenced again at a tenth of the step, in case it straddled a
kink (train/finite_differences.py).
"""
import sys

import numpy as np

from engine.backend import to_numpy
from train.checkpoint import load_parameters
from train.cli import ArgumentParser, add_checkpoint_argument, not_negative, parse_with_config, positive, run_main
from train.config import cover_seq_len
from train.data import random_batch
from train.finite_differences import EPS, TOLERANCE, checked_differences, sample_entries
from train.model_setup import build_model


def check_model(model, model64, idx, targets, n_samples, eps, tol, rng):
    """[(name, shape, entries checked, ||analytic||, ||numeric||, relative error)] per tensor:
    `model`'s backward against central differences of `model64`, a float64 copy of it."""
    model64.store.data[...] = model.store.data.astype(np.float64)
    model.store.zero_grad()
    model.forward(idx, targets)
    model.backward()
    rows = []
    for name, shape in model.store.shapes.items():
        param = model64.store.params[name].reshape(-1)
        analytic = to_numpy(model.store.grads[name]).ravel().astype(np.float64)
        entries = sample_entries(analytic, n_samples, rng)
        a = analytic[entries]
        numeric, err = checked_differences(lambda: model64.forward(idx, targets)[1], param, entries, a, eps, tol)
        rows.append((name, shape, len(entries), np.linalg.norm(a), np.linalg.norm(numeric), err))
    return rows


def main(argv=None):
    parser = ArgumentParser(prog="nano2_gradcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="JSON config file (default: the built-in defaults)")
    add_checkpoint_argument(parser)
    parser.add_argument("--dtype", choices=sorted(TOLERANCE), default="float64",
                        help="dtype of the backward under test (default float64)")
    # A check wants a small batch whatever the config trains with, so these are the tool's own
    # flags, in either spelling (the config's batch_size and seq_len are not used).
    parser.add_argument("--batch-size", "--batch_size", type=positive(int), default=2)
    parser.add_argument("--seq-len", "--seq_len", type=positive(int), default=16)
    parser.add_argument("--samples", type=positive(int), default=6, help="entries checked per tensor")
    parser.add_argument("--eps", type=positive(float), default=EPS, help=f"finite-difference step (default {EPS:g})")
    parser.add_argument("--tol", type=not_negative(float), help="largest relative error that passes (default by dtype)")
    args, cfg = parse_with_config(parser, argv, "ckpt")
    cover_seq_len(cfg, args.seq_len)
    eps, tol = args.eps, TOLERANCE[args.dtype] if args.tol is None else args.tol

    model = build_model(cfg, dtype=args.dtype)
    model64 = build_model(cfg, dtype="float64")
    if args.ckpt is not None:
        for m in (model, model64):
            load_parameters(args.ckpt, m)
    rng = np.random.default_rng(cfg.seed)
    idx, targets = random_batch(rng, args.batch_size, args.seq_len, cfg.vocab_size)
    idx, targets = model.xp.asarray(idx), model.xp.asarray(targets)
    rows = check_model(model, model64, idx, targets, args.samples, eps, tol, rng)

    print(f"gradcheck: {args.dtype}, batch {args.batch_size} x {args.seq_len} tokens, "
          f"eps {eps:g}, tolerance {tol:g}")
    print(f"{'tensor':<28} {'shape':>13} {'n':>3} {'|analytic|':>11} {'|numeric|':>11} {'rel err':>9}")
    failed = zero = 0
    for name, shape, n, a_norm, n_norm, err in rows:
        ok = err <= tol
        failed += not ok
        zero += a_norm == n_norm == 0
        shape_text = "x".join(map(str, shape))
        print(f"{name:<28} {shape_text:>13} {n:>3} {a_norm:11.4e} {n_norm:11.4e} {err:9.2e}"
              f"{'' if ok else '  FAIL'}{'  zero' if a_norm == n_norm == 0 else ''}")
    worst = max(rows, key=lambda r: r[-1])
    print(f"{len(rows) - failed}/{len(rows)} tensors within {tol:g}; worst {worst[0]} at {worst[-1]:.2e}")
    if zero:  # zero_init_proj's start: the projections and the head at 0 leave most gradients at 0
        print(f"{zero} tensors have zero gradients at these weights, where the check shows nothing: "
              f"check a trained model with --ckpt")
    return 1 if failed else 0


def entry():
    sys.exit(run_main(main, "nano2_gradcheck"))

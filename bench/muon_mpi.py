"""Muon under MPI, the two designs: every rank orthogonalising every matrix, against each rank
its own run of them and one all-gather of the updated matrices (engine/optim.py's Muon with a
comm). Each rank's step time (the slowest rank's, at each iteration; the designs in turn), for
1, 2 ... ranks on this machine, each rank with the cores shared among them. With one rank the
two are the same code, so that row shows the measurement's noise.

    .venv/bin/python bench/muon_mpi.py [--configs configs/tiny.json,configs/nano2.json] [--ranks 1,2]
                                       [--iters 10] [--warmup 2]

Both designs start from the same parameters, momentum and gradient, and their first steps are
compared bit for bit. A benchmark, not a test: it prints a table and writes bench/muon_mpi.png.
"""
import argparse
import json
import os
import subprocess
import sys

from engine.errors import UserError
from train.cli import ArgumentParser, positive, run_main
from train.plot import save_figure
from vs_torch import blas_description

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(config, iters, warmup):
    """Run under mpiexec: time both designs' Muon step; rank 0 prints JSON."""
    import numpy as np

    from engine import comm
    from engine.backend import to_numpy
    from engine.optim import Muon
    from layers.model import hidden_matrices
    from train.config import load_config
    from train.model_setup import set_up_rank
    from train.profiler import time_steps

    cfg = load_config(config, ["--optimizer=muon"])
    world = comm.world()
    model, threads = set_up_rank(cfg)
    store, matrices = model.store, hidden_matrices(model)
    store.grad[...] = model.xp.asarray(np.random.default_rng(0).normal(size=store.numel).astype(store.dtype))
    designs = {"every rank all": Muon(store, matrices, cfg.muon_momentum),
               "a run each + all-gather": Muon(store, matrices, cfg.muon_momentum, world)}
    start, first = to_numpy(store.data).copy(), []
    for muon in designs.values():
        store.data[...] = model.xp.asarray(start)
        muon.step(0.02)
        first.append(to_numpy(store.data).copy())
    seconds = {name: [] for name in designs}
    for _ in range(iters):  # the designs in turn, so a drift in the machine's speed reaches both
        for name, muon in designs.items():
            seconds[name] += time_steps(lambda: muon.step(1e-9), 1, warmup, world, model.xp)[0]
    slowest = {name: world.gather(s, "the times' gather") for name, s in seconds.items()}  # None off the root
    if world.is_root:
        print(json.dumps({"config": os.path.basename(config), "ranks": world.world_size, "threads": threads,
                          "matrix_mb": sum(store.params[n].nbytes for n in matrices) / 2**20,
                          "same_bits": bool(np.array_equal(*first)),
                          **{name: float(np.median(np.max(s, axis=0))) for name, s in slowest.items()}}))


def launch(config, ranks, args):
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    command = [mpiexec, "-n", str(ranks), sys.executable, __file__, "--worker", "--configs", config,
               "--iters", str(args.iters), "--warmup", str(args.warmup)]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # errors reach stderr
    if result.returncode != 0:
        raise UserError(f"mpiexec -n {ranks} on {config} failed (status {result.returncode}); its error is above")
    return json.loads(result.stdout.strip().splitlines()[-1])


def draw(rows, path):
    import matplotlib.pyplot as plt  # train.plot chose the Agg backend
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    labels = [f"{r['config']}\n{r['ranks']} rank(s)" for r in rows]
    x = range(len(rows))
    for offset, name, color in ((-0.2, "every rank all", "tab:blue"), (0.2, "a run each + all-gather", "tab:orange")):
        ax.bar([i + offset for i in x], [r[name] * 1e3 for r in rows], 0.4, label=name, color=color)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("Muon step (ms, the slowest rank)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, path)


def main():
    parser = ArgumentParser(description=__doc__.splitlines()[0], epilog=None)
    parser.add_argument("--configs", default="configs/tiny.json,configs/nano2.json")
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--iters", type=positive(int), default=10)
    parser.add_argument("--warmup", type=positive(int), default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.configs, args.iters, args.warmup)
    try:
        ranks = [int(r) for r in args.ranks.split(",")]
    except ValueError:
        raise UserError(f"--ranks must be numbers separated by commas, got {args.ranks!r}") from None
    rows = [launch(config, n, args) for config in args.configs.split(",") for n in ranks]
    print(f"Muon's step, {os.cpu_count()} CPUs, {blas_description()}\n")
    print("| config | ranks | threads/rank | matrices (MiB) | every rank all (ms) | a run each + all-gather (ms) "
          "| ratio | same bits |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        every, shared = r["every rank all"] * 1e3, r["a run each + all-gather"] * 1e3
        print(f"| {r['config']} | {r['ranks']} | {r['threads']} | {r['matrix_mb']:.1f} | {every:.1f} | {shared:.1f} "
              f"| {shared / every:.2f} | {r['same_bits']} |")
    draw(rows, os.path.join(HERE, "muon_mpi.png"))


if __name__ == "__main__":
    sys.exit(run_main(main, "muon_mpi"))

"""Data-parallel scaling on this machine: training tokens/s with `mpiexec -n 2` (one thread per
rank) against `-n 1` (one thread), each rank on its own batch_size rows (weak scaling), and
the share of step time that communication did not hide.

    .venv/bin/python bench/mpi_scaling.py [--config configs/tiny.json] [--steps 30] [--repeats 3] [--key=value ...]

The two launches alternate --repeats times and each keeps its median, since a shared machine's
speed drifts between runs. A benchmark, not a test: it prints a table and writes
bench/mpi_scaling.png.
"""
import argparse
import json
import os
import subprocess
import sys

from engine.errors import UserError
from train.cli import ArgumentParser, not_negative, positive, run_main
from train.config import load_config

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(config, steps, warmup, overrides):
    """Run under mpiexec: time `steps` training steps on random batches; rank 0 prints JSON."""
    import numpy as np

    from engine import comm
    from engine.comm import GradientAllreduce
    from engine.optim import AdamW
    from train.data import random_batch
    from train.model_setup import set_up_rank
    from train.profiler import time_steps
    from train.trainer import train_step

    cfg = load_config(config, overrides)
    world = comm.world()
    cfg.threads = cfg.threads or 1  # one thread a rank, unless the config says otherwise: scaling over ranks
    model, _ = set_up_rank(cfg)
    optimizer = AdamW(model.store, cfg.beta1, cfg.beta2, cfg.adam_eps, cfg.weight_decay)
    sync = GradientAllreduce(world, model.store, model.gradient_buckets())
    rng = np.random.default_rng(world.rank)
    batch = random_batch(rng, cfg.batch_size, cfg.seq_len, cfg.vocab_size)
    step_seconds, comm_seconds = time_steps(lambda: train_step(model, optimizer, [batch], 1e-4, 1.0, sync),
                                            steps, warmup, world, model.xp, sync)
    world.barrier()  # every rank has finished before rank 0 reports
    if world.is_root:
        median = float(np.median(step_seconds))
        print(json.dumps({"ranks": world.world_size, "step_s": median,
                          "tokens_per_s": world.world_size * cfg.batch_size * cfg.seq_len / median,
                          "comm_share": float(np.median(comm_seconds)) / median}))


def launch(ranks, args):
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    command = [mpiexec, "-n", str(ranks), sys.executable, __file__, "--worker", "--config", args.config,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads=1", *args.overrides]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # a worker's error line reaches stderr
    if result.returncode != 0:
        raise UserError(f"mpiexec -n {ranks} failed (status {result.returncode}); its error is above")
    return json.loads(result.stdout.strip().splitlines()[-1])


def draw(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    labels = [f"-n {r['ranks']}" for r in rows]
    ax.bar(labels, [r["tokens_per_s"] for r in rows], color=["tab:gray", "tab:blue"])
    for i, r in enumerate(rows):
        ax.text(i, r["tokens_per_s"], f"{r['tokens_per_s']:,.0f} tok/s\ncomm {r['comm_share']:.1%}",
                ha="center", va="bottom")
    ax.set_ylabel("training tokens/s (1 thread per rank)")
    ax.set_title(f"nano2 data parallel: {rows[1]['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x with 2 ranks")
    ax.set_ylim(0, max(r["tokens_per_s"] for r in rows) * 1.25)
    fig.tight_layout()
    fig.savefig(path)


def main():
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(HERE, "..", "configs", "tiny.json"))
    parser.add_argument("--steps", type=positive(int), default=30)
    parser.add_argument("--warmup", type=not_negative(int), default=3)
    parser.add_argument("--repeats", type=positive(int), default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, args.overrides = parser.parse_known_args()
    if args.worker:
        return worker(args.config, args.steps, args.warmup, args.overrides)
    load_config(args.config, args.overrides)  # a bad config or override says so here, once
    runs = {1: [], 2: []}
    for _ in range(args.repeats):
        for ranks in runs:
            runs[ranks].append(launch(ranks, args))
    rows = [sorted(runs[ranks], key=lambda r: r["tokens_per_s"])[len(runs[ranks]) // 2] for ranks in runs]
    print(f"{'ranks':>5} {'step ms':>9} {'tokens/s':>10} {'comm share':>11}")
    for r in rows:
        print(f"{r['ranks']:>5} {r['step_s'] * 1e3:9.1f} {r['tokens_per_s']:10,.0f} {r['comm_share']:11.1%}")
    print(f"speed-up with 2 ranks: {rows[1]['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x")
    draw(rows, os.path.join(HERE, "mpi_scaling.png"))
    print(f"chart: {os.path.join(HERE, 'mpi_scaling.png')}")


if __name__ == "__main__":
    run_main(main, "mpi_scaling")

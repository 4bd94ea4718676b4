"""Data-parallel scaling on this machine: training tokens/s with `mpiexec -n 2` (one thread per
rank) against `-n 1` (one thread), each rank on its own batch_size rows (weak scaling), and
the share of step time that communication did not hide. With --hosts (root), also 2 ranks on
two hosts made of network namespaces (tests/multihost.py: MPI over TCP, a core each), with the
link's raw TCP throughput beside the bus bandwidth the gradient allreduce reached on it.

    .venv/bin/python bench/mpi_scaling.py [--config configs/tiny.json] [--steps 30] [--repeats 3] [--hosts]
                                          [--key=value ...]

The launches alternate --repeats times and each keeps its median, since a shared machine's
speed drifts between runs. Bus bandwidth is NCCL's measure, 2(n-1)/n x the buffer's bytes per
second of one allreduce of the whole flat gradient buffer: what the link carried. A benchmark,
not a test: it prints a table and writes bench/mpi_scaling.png.
"""
import argparse
import contextlib
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
    sync = GradientAllreduce(world, model.store, model.gradient_buckets(), cfg.comm, cfg.zero)
    optimizer = AdamW(model.store, cfg.beta1, cfg.beta2, cfg.adam_eps, cfg.weight_decay, sync.shard)
    rng = np.random.default_rng(world.rank)
    batch = random_batch(rng, cfg.batch_size, cfg.seq_len, cfg.vocab_size)
    step_seconds, comm_seconds = time_steps(lambda: train_step(model, optimizer, [batch], 1e-4, 1.0, sync),
                                            steps, warmup, world, model.xp, sync)
    grad = model.store.grad
    allreduce_seconds, _ = time_steps(lambda: world.comm.Allreduce(world.mpi.IN_PLACE, grad) if world.mpi else None,
                                      10, 2, world, model.xp)
    world.barrier()  # every rank has finished before rank 0 reports
    if world.is_root:
        median = float(np.median(step_seconds))
        ranks = world.world_size
        print(json.dumps({"ranks": ranks, "hosts": len(set(getattr(world, "hosts", ["here"]))), "step_s": median,
                          "tokens_per_s": ranks * cfg.batch_size * cfg.seq_len / median,
                          "comm_share": float(np.median(comm_seconds)) / median,
                          "bus_gb_per_s": 2 * (ranks - 1) / ranks * grad.nbytes / min(allreduce_seconds) / 1e9}))


def launch(ranks, args, hosts=None):
    """One worker run: `ranks` ranks on this host, or one on each of `hosts` (a multihost.Hosts)."""
    worker_command = [sys.executable, __file__, "--worker", "--config", args.config, "--steps", str(args.steps),
                      "--warmup", str(args.warmup), "--threads=1", *args.overrides]
    if hosts is None:
        mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        command, env = [mpiexec, "-n", str(ranks), *worker_command], None
    else:
        command, env = hosts.command(worker_command), hosts.environment()
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)  # errors reach stderr
    if result.returncode != 0:
        where = f"{ranks} hosts" if hosts else f"mpiexec -n {ranks}"
        raise UserError(f"{where} failed (status {result.returncode}); its error is above")
    return json.loads(result.stdout.strip().splitlines()[-1])


RECEIVE = """import socket
server = socket.create_server(("192.0.2.2", 5001))
print("ready", flush=True)
connection, _ = server.accept()
while connection.recv(1 << 20):
    pass
"""
SEND = """import socket, time
connection = socket.create_connection(("192.0.2.2", 5001))
chunk, started = bytes(1 << 20), time.perf_counter()
for _ in range(2000):
    connection.sendall(chunk)
connection.close()
print(2000 * len(chunk) / (time.perf_counter() - started) / 1e9)
"""


def raw_tcp_gb_per_s(hosts):
    """One TCP stream's throughput from host1 to host2, each on its core, as the ranks run."""
    def on(host, core, code):
        return ["ip", "netns", "exec", hosts.namespace(host), "taskset", "-c", str(core), sys.executable, "-c", code]
    receiver = subprocess.Popen(on("host2", 1, RECEIVE), stdout=subprocess.PIPE, text=True)
    receiver.stdout.readline()
    sent = subprocess.run(on("host1", 0, SEND), capture_output=True, text=True, check=True)
    receiver.wait(timeout=60)
    return float(sent.stdout)


def label(r):
    return f"{r['hosts']} hosts x 1" if r["hosts"] > 1 else f"-n {r['ranks']}"


def draw(rows, tcp, path):
    import matplotlib.pyplot as plt  # train.plot chose the Agg backend

    from train.plot import save_figure
    panels = 2 if tcp else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), dpi=100, squeeze=False)
    ax = axes[0][0]
    ax.bar([label(r) for r in rows], [r["tokens_per_s"] for r in rows], color=["tab:gray", "tab:blue", "tab:green"])
    for i, r in enumerate(rows):
        ax.text(i, r["tokens_per_s"], f"{r['tokens_per_s']:,.0f} tok/s\ncomm {r['comm_share']:.1%}",
                ha="center", va="bottom")
    ax.set_ylabel("training tokens/s (1 thread per rank)")
    ax.set_title("nano2 data parallel: " + ", ".join(f"{r['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x "
                                                    f"{label(r)}" for r in rows[1:]), fontsize=10)
    ax.set_ylim(0, max(r["tokens_per_s"] for r in rows) * 1.25)
    if tcp:
        ax = axes[0][1]
        hosts = rows[-1]
        bars = {"raw TCP, one stream": tcp, "allreduce bus bandwidth": hosts["bus_gb_per_s"]}
        ax.bar(list(bars), list(bars.values()), color=["tab:gray", "tab:green"])
        for i, value in enumerate(bars.values()):
            ax.text(i, value, f"{value:.2f} GB/s", ha="center", va="bottom")
        ax.set_ylabel("GB/s between the two hosts")
        ax.set_title("the link, and what the gradient allreduce got of it", fontsize=10)
        ax.set_ylim(0, max(bars.values()) * 1.25)
    fig.tight_layout()
    save_figure(fig, path)


def main():
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(HERE, "..", "configs", "tiny.json"))
    parser.add_argument("--steps", type=positive(int), default=30)
    parser.add_argument("--warmup", type=not_negative(int), default=3)
    parser.add_argument("--repeats", type=positive(int), default=3)
    parser.add_argument("--hosts", action="store_true", help="also across two network-namespace hosts (root)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, args.overrides = parser.parse_known_args()
    if args.worker:
        return worker(args.config, args.steps, args.warmup, args.overrides)
    load_config(args.config, args.overrides)  # a bad config or override says so here, once
    with two_hosts(args.hosts) as hosts:
        runs = {"1": [], "2": []} | ({"2 hosts": []} if hosts else {})
        for _ in range(args.repeats):
            for name in runs:
                runs[name].append(launch(2 if name != "1" else 1, args, hosts if name == "2 hosts" else None))
        tcp = raw_tcp_gb_per_s(hosts) if hosts else None
    rows = [sorted(found, key=lambda r: r["tokens_per_s"])[len(found) // 2] for found in runs.values()]
    print(f"{'run':>12} {'step ms':>9} {'tokens/s':>10} {'comm share':>11} {'speed-up':>9} {'bus GB/s':>9}")
    for r in rows:
        print(f"{label(r):>12} {r['step_s'] * 1e3:9.1f} {r['tokens_per_s']:10,.0f} {r['comm_share']:11.1%} "
              f"{r['tokens_per_s'] / rows[0]['tokens_per_s']:8.2f}x {r['bus_gb_per_s']:9.2f}")
    if tcp:
        print(f"raw TCP between the hosts, one stream: {tcp:.2f} GB/s; the gradient allreduce's bus bandwidth "
              f"there: {rows[-1]['bus_gb_per_s']:.2f} GB/s")
    draw(rows, tcp, os.path.join(HERE, "mpi_scaling.png"))
    print(f"chart: {os.path.join(HERE, 'mpi_scaling.png')}")


@contextlib.contextmanager
def two_hosts(wanted):
    """tests/multihost.py's two namespace hosts when `wanted` (removed afterwards), else None."""
    if not wanted:
        yield None
        return
    if os.geteuid() != 0:
        raise UserError("--hosts makes network namespaces, which needs root")
    import pytest
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from multihost import Hosts
    try:
        hosts = Hosts(2).__enter__()
    except pytest.skip.Exception as e:  # the harness skips a test where namespaces cannot be made
        raise UserError(f"--hosts: {e}") from None
    try:
        yield hosts
    finally:
        hosts.__exit__()


if __name__ == "__main__":
    run_main(main, "mpi_scaling")

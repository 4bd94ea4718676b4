"""nano2_cpu_fw / nano2_cpu_fwandbw (CPU) and nano2_fw / nano2_fwbw (GPU): the seed's timing
commands, timing the model's forward or forward+backward on random tokens.

fw times `model.forward(idx, targets)`, the loss included. fwbw times one training step
without the optimizer: zero_grad, forward, backward and, under MPI, the gradient allreduce (with
zero=1 its reduce-scatter; the parameters' all-gather belongs to the optimizer step).
Every rank's per-iteration times are gathered to rank 0, which prints the median, min and max,
tokens/s, the achieved GFLOP/s and the MFU against a matrix-product peak measured on the spot.
--profile then times every layer, on iterations of their own since the timers cost time.
"""
import dataclasses
import json
import resource
import statistics
import sys

import numpy as np

from engine import comm
from engine.backend import import_cupy
from engine.comm import GradientAllreduce
from engine.flops import forward_flops_per_token, measure_matmul_flops, training_flops_per_token
from engine.optim import state_bytes
from train.cli import ArgumentParser, add_checkpoint_argument, not_negative, parse_with_config, positive, run_main
from train.config import cover_seq_len
from train.data import random_batch
from train.model_setup import set_up_rank
from train.profiler import run_profile, time_steps

# prog: (device, what it times)
COMMANDS = {"nano2_fw": ("gpu", "fw"), "nano2_fwbw": ("gpu", "fwbw"),
            "nano2_cpu_fw": ("cpu", "fw"), "nano2_cpu_fwandbw": ("cpu", "fwbw")}
# A forward+backward costs about three forwards, so fewer iterations take about as long.
DEFAULT_ITERS = {"fw": 10, "fwbw": 5}
MODE_TITLES = {"fw": "forward", "fwbw": "forward+backward"}


def host_memory(before, after, iters):
    """Minor page faults and system CPU time per iteration between two getrusage readings, and
    the process's peak resident size. A fault in a steady-state step is memory the allocator
    gave back to the kernel and had to ask for again."""
    return {"page_faults_per_iter": (after.ru_minflt - before.ru_minflt) / iters,
            "system_ms_per_iter": (after.ru_stime - before.ru_stime) * 1e3 / iters,
            "peak_rss_mib": after.ru_maxrss / 1024}  # Linux gives ru_maxrss in KiB


def gather(world, values):
    """Every rank's list of floats, concatenated on rank 0 (None on the other ranks)."""
    lists = world.gather(list(values))
    return None if lists is None else [v for rank_values in lists for v in rank_values]


def summarise(seconds, tokens, flops_per_token, peak_flops):
    """Median, min and max ms per iteration, tokens/s, GFLOP/s and MFU of a list of seconds."""
    median = statistics.median(seconds)
    flops = flops_per_token * tokens / median
    return {"iters": len(seconds), "median_ms": median * 1e3, "min_ms": min(seconds) * 1e3,
            "max_ms": max(seconds) * 1e3, "tokens_per_s": tokens / median, "gflops": flops / 1e9,
            "mfu": flops / peak_flops}


def make_parser(prog, device, mode):
    what = MODE_TITLES[mode]
    parser = ArgumentParser(prog=prog, description=f"Time nano2's {what} on the {device.upper()} "
                                                   f"on random tokens (no optimizer step).")
    parser.add_argument("--config", help="JSON config file (default: the built-in defaults)")
    add_checkpoint_argument(parser)
    if mode == "fw":
        parser.add_argument("--fw-iters", type=positive(int), default=DEFAULT_ITERS["fw"],
                            help=f"timed forward iterations per rank (default {DEFAULT_ITERS['fw']})")
    else:
        # The seed spelled this --fwbw-iters on the GPU and --fw-bw-iters on the CPU: both work.
        parser.add_argument("--fwbw-iters", "--fw-bw-iters", dest="fwbw_iters", type=positive(int),
                            default=DEFAULT_ITERS["fwbw"],
                            help=f"timed forward+backward iterations per rank (default {DEFAULT_ITERS['fwbw']})")
        parser.add_argument("--fw-iters", type=positive(int), default=DEFAULT_ITERS["fw"],
                            help=f"with --profile, forward-only iterations timed for the fwbw/fw ratio "
                                 f"(default {DEFAULT_ITERS['fw']})")
    parser.add_argument("--batch-size", type=positive(int), help="sequences per rank (default: the config's batch_size)")
    parser.add_argument("--seq-len", type=positive(int), help="tokens per sequence (default: the config's seq_len)")
    parser.add_argument("--warmup", type=not_negative(int), default=2, help="untimed iterations first (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--profile", action="store_true",
                        help="also time every layer, on as many further iterations (a table of each kind "
                             "of layer's share of the step)")
    parser.add_argument("--peak-gflops", type=positive(float),
                        help="one rank's peak GFLOP/s for the MFU (default: a 1024x1024 matrix product "
                             "measured on the spot)")
    return parser


def time_model(args, cfg, prog, mode):
    """The results dict on rank 0, None on the other ranks."""
    world = comm.world()
    batch_size = args.batch_size or cfg.batch_size
    seq_len = args.seq_len or cfg.seq_len
    cfg.batch_size = batch_size
    cover_seq_len(cfg, seq_len)
    model, threads = set_up_rank(cfg, ckpt=args.ckpt)
    xp = model.xp
    rng = np.random.default_rng([cfg.seed, world.rank])
    idx, targets = (xp.asarray(a) for a in random_batch(rng, batch_size, seq_len, cfg.vocab_size))
    sync = GradientAllreduce(world, model.store, model.gradient_buckets(), cfg.comm, cfg.zero) if mode == "fwbw" else None
    shard = world.shard(model.store.numel) if cfg.zero else slice(0, model.store.numel)  # what AdamW would hold

    def forward():
        model.forward(idx, targets)

    def forward_backward():
        model.store.zero_grad()
        model.forward(idx, targets)
        model.backward(1.0, sync.ready)
        sync.finish()

    def measure_peak():
        # Each rank measures its peak at the same time, sharing the machine as it will when timed.
        world.barrier()
        return measure_matmul_flops(xp, model.store.dtype)

    peak_per_rank = args.peak_gflops * 1e9 if args.peak_gflops else measure_peak()
    tokens = world.world_size * batch_size * seq_len
    flops_per_token = {"fw": forward_flops_per_token, "fwbw": training_flops_per_token}[mode](
        model.store.numel, cfg.n_layer, cfg.d_model, seq_len)
    step = {"fw": forward, "fwbw": forward_backward}[mode]

    time_steps(step, 0, args.warmup, world, xp, sync)  # warm-up, kept out of the memory figures
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds, comm_seconds = time_steps(step, args.iters, 0, world, xp, sync)
    memories = world.gather(host_memory(before, resource.getrusage(resource.RUSAGE_SELF), args.iters))
    seconds, comm_seconds = gather(world, seconds), gather(world, comm_seconds)
    if not args.peak_gflops:
        # Once more after the timing, keeping the better: a single 0.3 s reading can land on a
        # slow moment of a shared machine, and the MFU against it then reads too high.
        peak_per_rank = max(peak_per_rank, measure_peak())
    peak_flops = world.sum_floats([peak_per_rank])[0]
    profile = fw_seconds = None
    if args.profile:
        if mode == "fwbw":
            # The forward alone, each iteration right after a forward+backward, so that the
            # machine's speed drifting between two separate runs does not show in their ratio.
            fw_seconds, paired_seconds = [], []
            for _ in range(args.fw_iters):
                paired_seconds += time_steps(step, 1, 0, world, xp, sync)[0]
                fw_seconds += time_steps(forward, 1, 0, world, xp)[0]
            fw_seconds, paired_seconds = gather(world, fw_seconds), gather(world, paired_seconds)
        profile = run_profile(model, step, args.iters, world, sync, mode)
    if not world.is_root:
        return None

    result = {"command": prog, "mode": mode, "device": cfg.device, "config": args.config or "(defaults)",
              "ckpt": args.ckpt,
              **dataclasses.asdict(model.config), "parameters": model.store.numel, "dtype": cfg.dtype,
              "batch_size": batch_size, "seq_len": seq_len, "ranks": world.world_size, "threads_per_rank": threads,
              "warmup": args.warmup, "peak_gflops": peak_flops / 1e9, "peak_measured": not args.peak_gflops,
              "zero": cfg.zero, "optimizer_state_bytes": state_bytes(shard.stop - shard.start, model.store.dtype)}
    result.update(summarise(seconds, tokens, flops_per_token, peak_flops))
    result.update({key: max(m[key] for m in memories) for key in memories[0]})  # the worst rank's
    if mode == "fwbw":
        result["comm_ms"] = statistics.median(comm_seconds) * 1e3
        result["comm_share"] = result["comm_ms"] / result["median_ms"]
    if profile is not None:
        result["profile"] = profile
        profile["timed_overhead"] = profile["step_ms"] / result["median_ms"] - 1
        if fw_seconds is not None:
            profile["fw_median_ms"] = statistics.median(fw_seconds) * 1e3
            profile["fw_iters"] = args.fw_iters
            profile["fwbw_over_fw"] = statistics.median(paired_seconds) / statistics.median(fw_seconds)
    return result


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def print_table(r):
    print(f"{r['command']}: {MODE_TITLES[r['mode']]}, config {r['config']}")
    print(f"  model    d_model {r['d_model']}, n_layer {r['n_layer']}, n_head {r['n_head']}, d_ff {r['d_ff']}, "
          f"vocab {r['vocab_size']}: {r['parameters'] / 1e6:.2f}M parameters, {r['dtype']} on {r['device']}")
    print(f"  batch    B {r['batch_size']} x T {r['seq_len']} = {r['batch_size'] * r['seq_len']:,} tokens per rank; "
          f"{plural(r['ranks'], 'rank')} x {plural(r['threads_per_rank'], 'thread')}")
    print(f"  timed    {plural(r['iters'] // r['ranks'], 'iteration')} on each rank after {r['warmup']} warm-up; "
          f"statistics over all ranks")
    print(f"  per iteration  median {r['median_ms']:.2f} ms  (min {r['min_ms']:.2f}, max {r['max_ms']:.2f})")
    print(f"  tokens/s       {r['tokens_per_s']:,.0f}")
    peak_source = ("measured: best 1024x1024 matrix product in the model's dtype on each rank, before and after "
                   "the timing, summed"
                   if r["peak_measured"] else "--peak-gflops x ranks")
    print(f"  achieved       {r['gflops']:,.1f} GFLOP/s, MFU {r['mfu']:.1%} of {r['peak_gflops']:,.1f} GFLOP/s "
          f"({peak_source})")
    print(f"  AdamW state    {r['optimizer_state_bytes'] / 2**20:,.1f} MiB per rank"
          + (" (ZeRO-1: moments sharded over the ranks)" if r["zero"] and r["ranks"] > 1 else ""))
    print(f"  host memory    {r['page_faults_per_iter']:,.0f} minor page faults and {r['system_ms_per_iter']:.1f} ms "
          f"of system time per iteration, peak resident {r['peak_rss_mib']:,.0f} MiB"
          + (" (the worst rank)" if r["ranks"] > 1 else ""))
    if r["mode"] == "fwbw" and r["ranks"] > 1:
        print(f"  communication  median {r['comm_ms']:.2f} ms per iteration, {r['comm_share']:.1%} of the step "
              f"(allreduce time backward did not hide)")
    p = r.get("profile")
    if p is None:
        return
    backward = r["mode"] == "fwbw"
    print(f"\nprofile: rank 0, {p['iters']} more iterations with a timer around every layer "
          f"(step {p['step_ms']:.2f} ms, {p['timed_overhead']:+.1%} against the timed median); self times, "
          f"summed over blocks")
    print(f"  {'layer':<20} {'forward ms':>11}" + (f" {'backward ms':>12}" if backward else "") + f" {'share':>7}")
    for row in p["rows"]:
        print(f"  {row['layer']:<20} {row['fw_ms']:11.3f}" + (f" {row['bw_ms']:12.3f}" if backward else "")
              + f" {row['share']:7.1%}")
    products_ms = p["matmul_share"] * p["step_ms"]
    print(f"  matrix products of the linear layers and the head: {products_ms:.2f} ms ({p['matmul_share']:.1%} of "
          f"the step); everything else {p['step_ms'] - products_ms:.2f} ms ({1 - p['matmul_share']:.1%})")
    if "fwbw_over_fw" in p:
        print(f"  fwbw/fw: {p['fwbw_over_fw']:.2f}x (forward alone: median {p['fw_median_ms']:.2f} ms; "
              f"{p['fw_iters']} of each, alternating)")


def main(argv=None, prog="nano2_cpu_fw"):
    device, mode = COMMANDS[prog]
    parser = make_parser(prog, device, mode)
    args, cfg = parse_with_config(parser, argv, "ckpt")
    args.iters = args.fw_iters if mode == "fw" else args.fwbw_iters
    if device == "gpu":
        import_cupy("nano2_cpu_fw / nano2_cpu_fwandbw time the CPU")
    cfg.device = device  # a GPU config (gpt2-small.json) still times on the CPU with the CPU commands
    result = time_model(args, cfg, prog, mode)
    if result is not None:
        if args.json:
            print(json.dumps(result))
        else:
            print_table(result)
    return 0


def entry(prog):
    sys.exit(run_main(lambda: main(prog=prog), prog))


def gpu_fw_entry():
    entry("nano2_fw")


def gpu_fwbw_entry():
    entry("nano2_fwbw")


def cpu_fw_entry():
    entry("nano2_cpu_fw")


def cpu_fwandbw_entry():
    entry("nano2_cpu_fwandbw")

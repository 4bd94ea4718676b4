"""nano2 against PyTorch eager on this machine's CPU: forward and forward+backward time, their
ratios, each side's measured sgemm peak and MFU, each side's peak memory, and the step time of
two processes at once with twice the threads the cores can hold (oversubscribed).

    .venv/bin/python bench/vs_torch.py [--config configs/nano2.json] [--batch-size 8] [--seq-len 256]
                                       [--threads N] [--repeats 3] [--iters 5] [--warmup 2]

The same work on both sides: the PyTorch model is the independent one written from DESIGN.md
in tests/torch_reference.py (autograd, scaled_dot_product_attention), its parameters leaf
tensors holding nano2's initial weights; the same batch of tokens; float32; the same number of
threads (torch.set_num_threads and engine.threads.set_threads; default os.cpu_count()). Both
forwards are training forwards: nano2 keeps what its backward needs, PyTorch records its
autograd graph. A forward+backward is zero the gradients, forward, backward, each library's
own way (nano2 fills its flat gradient buffer with zeros, PyTorch sets .grad to None). The two
losses on the batch are compared first, so a mismatch stops the benchmark.

Timing: every measurement runs in a fresh subprocess of its own, with the library's default
settings (PyTorch's OpenMP threads spin as they do for its users), and nothing else runs while
it measures: no other worker exists, so neither side's idle threads can take the other's
cores. In every repeat: nano2 forward, PyTorch forward, nano2 forward+backward, PyTorch
forward+backward, --iters iterations each, so a drift in the machine's speed hits both sides;
a side's median is over all its iterations.

Oversubscribed: two fresh workers of one side at once, each timing forward+backward on the same
batch with --threads threads (so twice as many busy threads as cores when --threads is the
core count), against two workers with half as many threads each: the ratio of the two medians
says how a step degrades when a second job (or a second rank that sees every core) shares the
machine. Plain processes, no MPI, so both sides do the same work and nothing else.

Memory: each subprocess imports its library and runs a tiny model's forward and backward (which
loads Numba's compiled kernels or initialises PyTorch's lazily loaded ones), then takes its
resident set size (VmRSS) as the baseline and resets the kernel's high-water mark (writing 5
to /proc/self/clear_refs); a side's peak memory is the high-water mark (VmHWM) at the end of
the timing minus that baseline: what the parameters, gradients, activations and temporaries of
this model and batch held at their highest. (ru_maxrss would include the import-time peak and,
after fork and exec, can report the parent's size, so it cannot be reset this way.)

BLAS: nano2's matrix products run in NumPy's OpenBLAS, whose kernel the table names. A
machine that sets OPENBLAS_CORETYPE (and OPENBLAS_L2_SIZE) for older OpenBLAS builds gets an
older kernel (Haswell's AVX2 where SkylakeX's AVX-512 would run); to time the kernel NumPy
would pick, unset both for this command alone:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/vs_torch.py

A benchmark, not a test: it prints a table and writes bench/vs_torch_<config>.png.
"""
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# Taken before nano2 is imported, which sets GOMP_SPINCOUNT for its own pool: each worker runs
# in the environment the user gave this command, so PyTorch's OpenMP keeps its defaults.
USER_ENVIRONMENT = dict(os.environ)
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MIB = 2 ** 20


# ---- inside a worker subprocess -------------------------------------------------------------

def memory_status():
    """(VmRSS, VmHWM) of this process in bytes."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return tuple(int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM"))


def read_model_file(path):
    """(spec, {name: array}, idx, targets) from a file the parent wrote with write_model_file."""
    data = np.load(path)
    spec = json.loads(str(data["spec"]))
    return spec, {name: data[name] for name in spec["names"]}, data["idx"], data["targets"]


class Nano2Side:
    def __init__(self, threads):
        from engine.threads import set_threads
        set_threads(threads)

    def load(self, path):
        from layers.model import Decoder, ModelConfig
        spec, params, self.idx, self.targets = read_model_file(path)
        self.model = None  # free the previous model before the next one is built
        self.model = Decoder(ModelConfig(**spec["model"]), dtype=np.float32)
        self.model.store.load_tensors(params, path)
        return float(self.model.forward(self.idx, self.targets)[1])

    def forward(self):
        self.model.forward(self.idx, self.targets)

    def forward_backward(self):
        self.model.store.zero_grad()
        self.model.forward(self.idx, self.targets)
        self.model.backward(1.0)

    def peak_flops(self):
        from engine.flops import measure_matmul_flops
        return measure_matmul_flops(np, np.float32)

    def matmul_share(self, iters):
        """The share of a forward+backward spent in the linear layers' and the head's matrix
        products, from nano2_cpu_fwandbw --profile's timers."""
        from engine import comm
        from train.profiler import run_profile
        return run_profile(self.model, self.forward_backward, iters, comm.world(), None, "fwbw")["matmul_share"]


class TorchSide:
    def __init__(self, threads):
        import torch
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from torch_reference import torch_loss
        torch.set_num_threads(threads)
        self.torch, self.torch_loss = torch, torch_loss

    def load(self, path):
        spec, params, idx, targets = read_model_file(path)
        self.params = None
        # from_numpy shares the arrays, so the parameters are counted once, in this process.
        self.params = {name: self.torch.from_numpy(value).requires_grad_() for name, value in params.items()}
        self.idx, self.targets = self.torch.from_numpy(idx), self.torch.from_numpy(targets)
        self.n_layer, self.n_head = spec["model"]["n_layer"], spec["model"]["n_head"]
        return self.loss().item()

    def loss(self):
        return self.torch_loss(self.params, self.idx, self.targets, self.n_layer, self.n_head)

    def forward(self):
        self.loss()

    def forward_backward(self):
        for p in self.params.values():
            p.grad = None
        self.loss().backward()

    def matmul_share(self, iters):
        """The share of a forward+backward spent in the matrix products (aten::mm and aten::addmm
        self time in torch.profiler) over the profiled iterations' wall time."""
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            for _ in range(iters):
                self.forward_backward()
            seconds = time.perf_counter() - started
        products = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm"))
        return products * 1e-6 / seconds

    def peak_flops(self, n=1024, seconds=0.3):
        """engine.flops.measure_matmul_flops, with torch.matmul."""
        from engine.flops import best_seconds
        a = self.torch.ones(n, n)
        b = self.torch.ones(n, n)
        out = a @ b
        return 2 * n ** 3 / best_seconds(lambda: self.torch.matmul(a, b, out=out), seconds)


def seconds_of(step, iters):
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def worker(side_name, threads):
    """Answer the parent's commands, one JSON line each, until stdin closes."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the replies
    side = {"nano2": Nano2Side, "torch": TorchSide}[side_name](threads)
    baseline = None
    for line in sys.stdin:
        command, argument = line.split()
        if command == "load":
            reply = {"loss": side.load(argument)}
        elif command in ("fw", "fwbw"):
            step = side.forward if command == "fw" else side.forward_backward
            reply = {"seconds": seconds_of(step, int(argument))}
        elif command == "baseline":
            baseline = memory_status()[0]
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            reply = {"rss": baseline}
        elif command == "memory":
            reply = {"peak": memory_status()[1] - baseline}
        elif command == "peak":
            reply = {"flops": side.peak_flops()}
        elif command == "matmul_share":
            reply = {"share": side.matmul_share(int(argument))}
        replies.write(json.dumps(reply) + "\n")


# ---- the parent --------------------------------------------------------------------------------

class Worker:
    def __init__(self, side, threads):
        self.side = side
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", side, str(threads)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=USER_ENVIRONMENT)

    def send(self, command, argument="-"):
        self.process.stdin.write(f"{command} {argument}\n")
        self.process.stdin.flush()

    def reply(self, command):
        line = self.process.stdout.readline()
        if not line:
            sys.exit(f"vs_torch: the {self.side} worker ended during {command!r} (its error is above)")
        return json.loads(line)

    def ask(self, command, argument="-"):
        self.send(command, argument)
        return self.reply(command)

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def write_model_file(path, cfg, batch_size, seq_len):
    """nano2's initial parameters for cfg, a batch of random tokens, and the sizes, for both sides."""
    from train.data import random_batch
    from train.model_setup import build_model
    model = build_model(cfg)
    idx, targets = random_batch(np.random.default_rng(cfg.seed), batch_size, seq_len, cfg.vocab_size)
    spec = {"model": dataclasses.asdict(model.config), "names": list(model.store.params)}
    np.savez(path, spec=json.dumps(spec), idx=idx, targets=targets, **model.store.params)
    return model.store.numel


def set_up(worker, tiny_path, model_path, warmup):
    """Warm the side up on the tiny model, take its memory baseline, then load the real model
    and run its warm-up iterations. Returns the real model's loss on the batch."""
    worker.ask("load", tiny_path)
    worker.ask("fwbw", 1)
    worker.ask("baseline")
    loss = worker.ask("load", model_path)["loss"]
    worker.ask("fw", warmup)
    worker.ask("fwbw", warmup)
    return loss


def two_at_once(side, threads, tiny_path, model_path, args):
    """The forward+backward seconds of two fresh workers of `side` timed at the same time."""
    workers = [Worker(side, threads) for _ in range(2)]
    for worker in workers:
        set_up(worker, tiny_path, model_path, args.warmup)
    for worker in workers:
        worker.send("fwbw", args.iters)
    seconds = [t for worker in workers for t in worker.reply("fwbw")["seconds"]]
    for worker in workers:
        worker.close()
    return seconds


def draw(rows, path, title):
    import matplotlib.pyplot as plt  # train.plot chose the Agg backend

    from train.plot import save_figure
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    labels = list(rows)
    ratios = [rows[label] for label in labels]
    bars = ax.bar(labels, ratios, color=["tab:blue", "tab:orange", "tab:green", "tab:red"])
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="PyTorch")
    ax.legend(loc="upper right")
    for bar, ratio in zip(bars, ratios):
        ax.text(bar.get_x() + bar.get_width() / 2, ratio, f"{ratio:.2f}x", ha="center", va="bottom")
    ax.set_ylabel("nano2 / PyTorch (lower is better for nano2)")
    ax.set_ylim(0, max(ratios + [1.0]) * 1.2)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def blas_description():
    """Which OpenBLAS kernel NumPy runs: OPENBLAS_CORETYPE, where a machine sets it, picks an
    older one (Haswell's AVX2 instead of SkylakeX's AVX-512: a 1024 sgemm at ~205 instead of
    ~380 GFLOP/s here)."""
    from threadpoolctl import threadpool_info
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    return ", ".join(f"{i['internal_api']} {i.get('version')} ({i.get('architecture')} kernels)" for i in blas)


def main():
    from importlib.metadata import version

    from engine.flops import forward_flops_per_token, training_flops_per_token
    from train.cli import ArgumentParser, not_negative, positive
    from train.config import load_config
    parser = ArgumentParser(description=__doc__.splitlines()[0], epilog=None)
    parser.add_argument("--config", default=os.path.join("configs", "nano2.json"))
    parser.add_argument("--batch-size", type=positive(int), default=8)
    parser.add_argument("--seq-len", type=positive(int), default=256)
    parser.add_argument("--threads", type=positive(int), default=os.cpu_count(), help="threads on each side")
    parser.add_argument("--repeats", type=positive(int), default=3, help="rounds of alternation")
    parser.add_argument("--iters", type=positive(int), default=5, help="iterations per side, mode and repeat")
    parser.add_argument("--warmup", type=not_negative(int), default=2, help="untimed iterations of each mode first")
    args = parser.parse_args()
    cfg = load_config(args.config)
    cfg.seq_len = max(cfg.seq_len, args.seq_len)
    tiny = load_config(None, ["--n_layer=1", "--d_model=32", "--n_head=2", "--d_ff=64", "--seq_len=16",
                              f"--vocab_size={cfg.vocab_size}"])
    sides = {"nano2": "nano2", "torch": f"PyTorch {version('torch')}"}
    with tempfile.TemporaryDirectory() as tmp:
        tiny_path, model_path = os.path.join(tmp, "tiny.npz"), os.path.join(tmp, "model.npz")
        write_model_file(tiny_path, tiny, 2, 16)
        n_params = write_model_file(model_path, cfg, args.batch_size, args.seq_len)
        half = max(1, args.threads // 2)
        seconds = {(side, mode): [] for side in sides for mode in ("fw", "fwbw", "crowded", "shared")}
        losses, peaks, memory = {}, {side: 0.0 for side in sides}, {side: 0 for side in sides}
        for repeat in range(args.repeats):
            for mode in ("fw", "fwbw"):
                for side in sides:
                    runner = Worker(side, args.threads)
                    losses[side] = set_up(runner, tiny_path, model_path, args.warmup)
                    seconds[side, mode] += runner.ask(mode, args.iters)["seconds"]
                    memory[side] = max(memory[side], runner.ask("memory")["peak"])
                    # Each worker measures it once more, keeping the best: a single 0.3 s measurement
                    # read as little as 55% of the machine's sgemm speed when it hit a slow moment.
                    peaks[side] = max(peaks[side], runner.ask("peak")["flops"])
                    runner.close()
                if repeat == 0 and abs(losses["nano2"] - losses["torch"]) > 1e-4 * abs(losses["torch"]):
                    sys.exit(f"vs_torch: the losses differ (nano2 {losses['nano2']:.6f}, PyTorch "
                             f"{losses['torch']:.6f}); the two models do not compute the same thing")
            for mode, threads in (("crowded", args.threads), ("shared", half)):
                for side in sides:
                    seconds[side, mode] += two_at_once(side, threads, tiny_path, model_path, args)
        matmul_share = {}
        for side in sides:
            runner = Worker(side, args.threads)
            set_up(runner, tiny_path, model_path, args.warmup)
            matmul_share[side] = runner.ask("matmul_share", args.iters)["share"]
            runner.close()

    median = {key: float(np.median(values)) for key, values in seconds.items()}
    tokens = args.batch_size * args.seq_len
    flops_per_token = {"fw": forward_flops_per_token(n_params, cfg.n_layer, cfg.d_model, args.seq_len),
                       "fwbw": training_flops_per_token(n_params, cfg.n_layer, cfg.d_model, args.seq_len)}
    mfu = {(side, mode): flops_per_token[mode] * tokens / median[side, mode] / peaks[side]
           for side in sides for mode in flops_per_token}
    config_name = os.path.splitext(os.path.basename(args.config))[0]

    print(f"nano2 vs {sides['torch']} eager on the CPU: {args.config} (d_model {cfg.d_model}, n_layer {cfg.n_layer}, "
          f"n_head {cfg.n_head}, d_ff {cfg.d_ff}, vocab {cfg.vocab_size}; {n_params / 1e6:.2f}M parameters)")
    print(f"batch {args.batch_size} x {args.seq_len} tokens, float32, {args.threads} threads each; "
          f"{args.repeats} alternating repeats x {args.iters} iterations; loss nano2 {losses['nano2']:.5f}, "
          f"PyTorch {losses['torch']:.5f}")
    print(f"nano2's BLAS: {blas_description()}")
    print(f"{'':<28} {'nano2':>10} {'PyTorch':>10} {'nano2/PyTorch':>14}")

    def row(label, ours, theirs, fmt):
        print(f"{label:<28} {fmt.format(ours):>10} {fmt.format(theirs):>10} {ours / theirs:13.2f}x")

    row("forward ms (median)", median["nano2", "fw"] * 1e3, median["torch", "fw"] * 1e3, "{:.2f}")
    row("forward+backward ms (median)", median["nano2", "fwbw"] * 1e3, median["torch", "fwbw"] * 1e3, "{:.2f}")
    row("fwbw tokens/s", tokens / median["nano2", "fwbw"], tokens / median["torch", "fwbw"], "{:,.0f}")
    row("sgemm 1024 peak GFLOP/s", peaks["nano2"] / 1e9, peaks["torch"] / 1e9, "{:.1f}")
    row("forward MFU", mfu["nano2", "fw"] * 100, mfu["torch", "fw"] * 100, "{:.1f}%")
    row("forward+backward MFU", mfu["nano2", "fwbw"] * 100, mfu["torch", "fwbw"] * 100, "{:.1f}%")
    row("peak memory MiB", memory["nano2"] / MIB, memory["torch"] / MIB, "{:.1f}")
    row(f"2 procs x {args.threads} threads fwbw ms", median["nano2", "crowded"] * 1e3, median["torch", "crowded"] * 1e3,
        "{:.2f}")
    row(f"2 procs x {half} threads fwbw ms", median["nano2", "shared"] * 1e3, median["torch", "shared"] * 1e3, "{:.2f}")
    slowdown = {side: median[side, "crowded"] / median[side, "shared"] for side in sides}
    row("oversubscribed slowdown", slowdown["nano2"], slowdown["torch"], "{:.2f}x")
    outside = {side: (1 - matmul_share[side]) * median[side, "fwbw"] * 1e3 for side in sides}
    row("fwbw ms outside products", outside["nano2"], outside["torch"], "{:.2f}")
    print("outside products: the step less the linear layers' and the head's matrix products (nano2's "
          "--profile timers; PyTorch's aten::mm/addmm self time in torch.profiler), as a share of each median")

    chart = os.path.join(HERE, f"vs_torch_{config_name}.png")
    draw({"forward time": median["nano2", "fw"] / median["torch", "fw"],
          "forward+backward time": median["nano2", "fwbw"] / median["torch", "fwbw"],
          "peak memory": memory["nano2"] / memory["torch"],
          "oversubscribed fwbw": median["nano2", "crowded"] / median["torch", "crowded"]}, chart,
         f"nano2 / {sides['torch']}, CPU, {config_name}, B {args.batch_size} x T {args.seq_len}, "
         f"{args.threads} threads\nnano2 on {blas_description()}")
    print(f"chart: {chart}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        # Worker.__init__'s own command line. Nothing of nano2 is imported before the side
        # loads its library, so a PyTorch worker's OpenMP starts with the user's settings.
        worker(side_name=sys.argv[2], threads=int(sys.argv[3]))
    else:
        from train.cli import run_main
        run_main(main, "vs_torch")

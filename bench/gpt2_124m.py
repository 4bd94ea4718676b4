"""GPT-2 124M's shape imported into nano2 and timed beside PyTorch on the same transformers model:
forward+backward milliseconds per step and peak memory, float32, one process a side with the same threads.

    .venv/bin/python bench/gpt2_124m.py [--batch-size 4] [--seq-len 1024] [--iters 3] [--warmup 1] [--threads N]

Needs torch and transformers (the test extra) and downloads nothing: the model is transformers'
GPT2LMHeadModel(GPT2Config()), GPT-2 small's shape at its random init (seed 0, dropout 0), saved with
save_pretrained in a temporary folder and read by nano2_import. nano2's side is
`nano2_cpu_fwandbw --ckpt` (zero the gradients, forward with the loss, backward); PyTorch's is the
transformers model itself in eval mode (no dropout, as nano2), the same three steps with F.cross_entropy on
its logits, torch.set_num_threads at nano2's thread count (default: the cores this process may use).

Each side runs in a process of its own, started from this one, which imports neither library, so each
side's peak resident size (ru_maxrss, as nano2's timing reports it) is its own: parameters, gradients,
activations, temporaries and the library itself. A benchmark, not a test: it prints a table.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

BIN = os.path.dirname(sys.executable)  # nano2's commands, installed beside this Python


# ---- inside a worker subprocess -------------------------------------------------------------

def make_model(folder):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    model.save_pretrained(folder)
    print(f"transformers made GPT2LMHeadModel(GPT2Config()): {model.num_parameters():,} parameters")


def time_torch(folder, batch_size, seq_len, iters, warmup, threads):
    """PyTorch's forward+backward of the saved model: a JSON line with the median ms and peak memory."""
    import torch
    import transformers
    torch.set_num_threads(threads)
    model = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    idx, targets = (torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=generator)
                    for _ in range(2))

    def step():
        model.zero_grad()
        logits = model(idx, use_cache=False).logits
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()

    seconds = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        step()
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    print(json.dumps({"median_ms": statistics.median(seconds) * 1e3, "threads": torch.get_num_threads(),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
                      "version": f"PyTorch {torch.__version__}, transformers {transformers.__version__}"}))


# ---- the parent -------------------------------------------------------------------------------

def run(command):
    """The last line a subprocess printed; its stderr goes to ours, and a failure ends the benchmark."""
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}")
    return result.stdout.strip().splitlines()[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=3, help="timed steps a side (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--make", metavar="DIR", help=argparse.SUPPRESS)   # worker modes
    parser.add_argument("--torch", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        return make_model(args.make)
    if args.torch:
        return time_torch(args.torch, args.batch_size, args.seq_len, args.iters, args.warmup, args.threads)

    shape = ["--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
    with tempfile.TemporaryDirectory() as tmp:
        folder, ckpt = os.path.join(tmp, "gpt2"), os.path.join(tmp, "gpt2.safetensors")
        start = time.perf_counter()
        print(run([sys.executable, __file__, "--make", folder]))
        print(run([os.path.join(BIN, "nano2_import"), "--hf", folder, "--out", ckpt]))
        print(f"made and imported in {time.perf_counter() - start:.0f} s; timing nano2", flush=True)
        nano2 = json.loads(run([os.path.join(BIN, "nano2_cpu_fwandbw"), "--ckpt", ckpt, *shape,
                                "--fw-bw-iters", str(args.iters), "--warmup", str(args.warmup), "--json",
                                f"--threads={args.threads}"]))
        print("timing PyTorch", flush=True)
        torch = json.loads(run([sys.executable, __file__, "--torch", folder, *shape, "--iters", str(args.iters),
                                "--warmup", str(args.warmup), "--threads", str(nano2["threads_per_rank"])]))

    print(f"\nGPT-2 124M's shape ({nano2['parameters']:,} parameters), B {args.batch_size} x T {args.seq_len}, "
          f"float32, one process a side, {nano2['threads_per_rank']} threads; forward+backward, median of "
          f"{args.iters} after {args.warmup} warm-up")
    print(f"  {'':<40} {'ms/step':>10} {'peak RSS MiB':>13}")
    print(f"  {'nano2 (nano2_cpu_fwandbw --ckpt)':<40} {nano2['median_ms']:10.0f} {nano2['peak_rss_mib']:13,.0f}")
    print(f"  {torch['version']:<40} {torch['median_ms']:10.0f} {torch['peak_rss_mib']:13,.0f}")
    print(f"  {'nano2 / PyTorch':<40} {nano2['median_ms'] / torch['median_ms']:9.2f}x "
          f"{nano2['peak_rss_mib'] / torch['peak_rss_mib']:12.2f}x")
    print(f"  nano2's MFU {nano2['mfu']:.1%} of a measured {nano2['peak_gflops']:,.0f} GFLOP/s")


if __name__ == "__main__":
    main()

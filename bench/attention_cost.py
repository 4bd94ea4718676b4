"""The static cost of the CUDA attention kernels, before and after FlashAttention-2's tiles: warp instructions
and shuffles per query-key pair in each kernel's key loop, and what they predict for gpt2-small on an H100.

    .venv/bin/python bench/attention_cost.py      (needs git and cuda-bindings' NVRTC; no GPU)

How it counts. The old kernels (engine/kernels/cuda/attention.cu at git revision f440ed0: a warp per query or
key row) and the new ones are compiled as the backend compiles them (NVRTC, -std=c++17 -ftz=true) to PTX for
sm_90, float and HD = 64. In each kernel the key loop is its only innermost loop: the instructions from the
loop's label to its backward branch, each counted once, so both sides of a branch inside it count (for the new
kernels that is the diagonal tile's mask and the rescale taken when a row's max grows: an upper bound for the
other iterations). `mov` is not counted: PTX spells register copies and constants that way, which SASS folds
into operands. Shuffles are the `shfl.sync` among them. Per pair: an iteration of an old loop is one query-key
pair for the warp of its row (the old source gets `#pragma unroll 1` on its key loops: nvcc otherwise unrolls
the forward's by 2, at 101 instructions for two pairs); an iteration of a new loop is one tile, own x stream
pairs shared by the block's warps, so a warp's share is own * stream / warps.

The estimate is issue-bound: the warp instructions of every iteration the kernels run (the new kernels' diagonal
tiles included, masked pairs and all) over an H100 SXM's issue rate, 132 SMs x 4 schedulers x 1 warp
instruction per clock at 1.98 GHz (the boost clock of its 67 TFLOPS FP32 figure). Memory stalls, occupancy,
the code outside the loops and the D = rowsum(dO * O) kernel are left out, so both figures are lower bounds; the
old kernels, which load K and V from global memory for every pair, are the further from theirs.
"""
import os
import re
import subprocess

from cuda.bindings import nvrtc

from engine.kernels import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_REVISION = "f440ed0"
KERNELS = ("forward", "backward_dq", "backward_dkdv")
HEAD_SIZE, ITEMSIZE = 64, 4  # float
GPT2_SMALL = {"batch": 8, "heads": 12, "seq": 1024}
H100 = {"sms": 132, "issue_per_clock": 4, "clock_hz": 1.98e9}
OLD_KEY_LOOPS = ("    for (int j = 0; j <= i; ++j) {", "    for (int i = j; i < seq; ++i) {")


def compile_ptx(source, names):
    """(ptx, {name: lowered name}) of `source` compiled by NVRTC for sm_90 with the backend's options."""
    _, program = nvrtc.nvrtcCreateProgram(source.encode(), b"attention.cu", 0, [], [])
    for name in names:
        nvrtc.nvrtcAddNameExpression(program, name.encode())
    options = [o.encode() for o in (*launch.NVRTC_OPTIONS, "-ftz=true", "--gpu-architecture=compute_90")]
    (result,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
    if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, size = nvrtc.nvrtcGetProgramLogSize(program)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(program, log)
        raise RuntimeError(log.decode(errors="replace"))
    _, size = nvrtc.nvrtcGetPTXSize(program)
    ptx = b" " * size
    nvrtc.nvrtcGetPTX(program, ptx)
    lowered = {name: nvrtc.nvrtcGetLoweredName(program, name.encode())[1].decode() for name in names}
    nvrtc.nvrtcDestroyProgram(program)
    return ptx.decode().rstrip("\0"), lowered


def key_loop(ptx, entry):
    """The instructions of the one innermost loop of kernel `entry`."""
    body = re.search(rf"\.entry {re.escape(entry)}\(.*?\n\}}\n", ptx, re.DOTALL).group(0).split("\n")
    labels = {m.group(1): n for n, line in enumerate(body) if (m := re.match(r"(\$\w+):", line))}
    loops = [(labels[m.group(1)], n) for n, line in enumerate(body)
             if (m := re.search(r"\bbra(?:\.uni)?\s+(\$\w+);", line)) and labels[m.group(1)] < n]
    innermost = [(a, b) for a, b in loops if not any(a < c and d <= b and (c, d) != (a, b) for c, d in loops)]
    if len(innermost) != 1:
        raise RuntimeError(f"{entry}: {len(innermost)} innermost loops, expected one")
    first, last = innermost[0]
    return [line.strip() for line in body[first:last + 1]
            if line.strip() and not line.strip().startswith(("$", "//", ".", "{", "}"))]


def loop_cost(lines):
    """(instructions, shuffles) of a loop body, without PTX's `mov`s."""
    opcodes = [line.split()[1] if line.startswith("@") else line.split()[0] for line in lines]
    opcodes = [op for op in opcodes if not op.startswith("mov.")]
    return len(opcodes), sum(op.startswith("shfl.sync") for op in opcodes)


def old_source():
    source = subprocess.run(["git", "-C", ROOT, "show", f"{OLD_REVISION}:engine/kernels/cuda/attention.cu"],
                            capture_output=True, text=True, check=True).stdout
    for loop in OLD_KEY_LOOPS:
        assert loop in source, f"the old source has no key loop {loop.strip()!r}"
        source = source.replace(loop, "#pragma unroll 1\n" + loop)
    return source


def new_tiles(kernel):
    """(own, stream, warps per block) of a new tiled kernel, from launch.py's geometry."""
    own, stream = launch.attention_tiles(kernel, ITEMSIZE, HEAD_SIZE)
    _, block = launch.attention_geometry(kernel, 1, 1, ITEMSIZE, HEAD_SIZE)
    return own, stream, block[0] // launch.WARP


def new_iterations(kernel, seq):
    """Key-loop iterations of all one head's blocks of a new kernel, as attention.cu's loop bounds run them."""
    own, stream, _ = new_tiles(kernel)
    total = 0
    for first in range(0, seq, own):
        if kernel == "backward_dkdv":  # query tiles from the one holding key `first` to the end
            total += -(-seq // stream) - first // stream
        else:  # key tiles up to the last owned query row
            total += -(-min(first + own, seq) // stream)
    return total


def main():
    names = [f"attention_{kernel}<float, {HEAD_SIZE}>" for kernel in KERNELS]
    old_ptx, old_names = compile_ptx(old_source(), names)
    with open(os.path.join(ROOT, "engine", "kernels", "cuda", "attention.cu")) as f:
        new_ptx, new_names = compile_ptx(f.read(), names)
    batch, heads, seq = GPT2_SMALL["batch"], GPT2_SMALL["heads"], GPT2_SMALL["seq"]
    rate = H100["sms"] * H100["issue_per_clock"] * H100["clock_hz"]
    causal_pairs = seq * (seq + 1) // 2  # per head: each old kernel's iterations, one warp each

    print(f"Warp instructions per query-key pair in the key loop (PTX for sm_90, float, HD = {HEAD_SIZE}):\n")
    print("| kernel | old instr/pair | new instr/pair | fewer | old shuffles/pair | new shuffles/pair | new tile |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    times = {}
    for kernel, name in zip(KERNELS, names):
        old_instructions, old_shuffles = loop_cost(key_loop(old_ptx, old_names[name]))
        new_instructions, new_shuffles = loop_cost(key_loop(new_ptx, new_names[name]))
        own, stream, warps = new_tiles(kernel)
        pairs = own * stream / warps  # per warp and iteration
        print(f"| {kernel} | {old_instructions} | {new_instructions / pairs:.2f} | "
              f"{old_instructions * pairs / new_instructions:.1f}x | {old_shuffles} | {new_shuffles / pairs:.3f} | "
              f"{own}x{stream}, {warps} warps, {new_instructions} instr/iteration |")
        old_total = batch * heads * causal_pairs * old_instructions
        new_total = batch * heads * new_iterations(kernel, seq) * warps * new_instructions
        times[kernel] = (old_total / rate, new_total / rate)

    print(f"\nIssue-bound estimate for gpt2-small attention (B={batch}, H={heads}, T={seq}, HD={HEAD_SIZE}) "
          f"per layer on an H100 SXM ({H100['sms']} SMs x {H100['issue_per_clock']} warp instructions/clock "
          f"at {H100['clock_hz'] / 1e9:.2f} GHz), key loops only:\n")
    print("| pass | old ms | new ms | faster |")
    print("| --- | ---: | ---: | ---: |")
    passes = {"forward": ("forward",), "backward (dq + dkdv)": ("backward_dq", "backward_dkdv"),
              "forward + backward": KERNELS}
    for label, kernels in passes.items():
        old, new = (sum(times[k][n] for k in kernels) for n in (0, 1))
        print(f"| {label} | {old * 1e3:.2f} | {new * 1e3:.3f} | {old / new:.0f}x |")


if __name__ == "__main__":
    main()

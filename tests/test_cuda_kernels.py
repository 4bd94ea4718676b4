"""The CUDA sources, proven without a GPU: every .cu compiles through NVRTC with CuPy's options
for sm_80 and sm_90, nvcc reports no register spills, and the unchanged sources run on the CPU
emulator (tests/cuda_emu) against engine/kernels/reference.py on ragged shapes, including a
finite-difference check of the emulated backward and a planted error the tests must catch."""
import glob
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from cuda_emu import emulator
from helpers import KERNEL_TOLERANCE, assert_grad_close, kernel_error

from engine.kernels import launch, reference

SOURCES = sorted(glob.glob(os.path.join(emulator.KERNELS, "*.cu")))
CUPY_OPTIONS = [*launch.NVRTC_OPTIONS, "-ftz=true"]  # the backend's, with what CuPy adds (but the architecture)


def test_every_source_is_checked():
    names = [os.path.basename(s) for s in SOURCES]
    assert names == sorted(launch.NAME_EXPRESSIONS)
    for name in names:  # each kernel file has an emulator harness and a ThreadSanitizer run
        stem = name[:-len(".cu")]
        assert os.path.exists(os.path.join(emulator.HERE, f"{stem}_harness.cpp"))
        assert os.path.exists(os.path.join(emulator.HERE, f"{stem}_tsan.cpp"))


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_nvrtc_compiles(source, arch):
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="needs cuda-bindings (the test extra)")
    with open(source, "rb") as f:
        err, program = nvrtc.nvrtcCreateProgram(f.read(), os.path.basename(source).encode(), 0, [], [])
    names = launch.NAME_EXPRESSIONS[os.path.basename(source)]
    for name in names:
        nvrtc.nvrtcAddNameExpression(program, name.encode())
    options = [o.encode() for o in CUPY_OPTIONS + [f"--gpu-architecture={arch}"]]
    (result,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
    _, size = nvrtc.nvrtcGetProgramLogSize(program)
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(program, log)
    assert result == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")
    for name in names:
        err, lowered = nvrtc.nvrtcGetLoweredName(program, name.encode())
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS and lowered, f"{name} was not instantiated"
    nvrtc.nvrtcDestroyProgram(program)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on this machine")
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_nvcc_reports_no_spills(source, tmp_path):
    result = subprocess.run(["nvcc", "--cubin", "-arch=sm_90", "--resource-usage", "-std=c++17", "-ftz=true",
                             "-o", str(tmp_path / "out.cubin"), source], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", result.stdout + result.stderr)
    assert spills, "nvcc printed no resource usage"
    assert all(stores == "0" and loads == "0" for stores, loads in spills), result.stdout + result.stderr


# ---- softmax + cross-entropy on the emulator -------------------------------------------------

HARNESS = os.path.join(emulator.HERE, "softmax_xent_harness.cpp")
SOFTMAX_XENT = os.path.join(emulator.KERNELS, "softmax_xent.cu")
SUFFIX = {np.float32: "f32", np.float64: "f64"}


def emulated_xent(library, logits, targets, dlosses=None):
    """(losses, lse) and, given dlosses, the logits' gradient, as the GPU backend launches them."""
    dtype = logits.dtype.type
    n, v = logits.shape
    grid, block = launch.softmax_xent_geometry(n, v)
    losses, lse = np.empty(n, dtype), np.empty(n, dtype)
    emulator.call(getattr(library, f"forward_{SUFFIX[dtype]}"), grid, block, logits, targets, losses, lse, n, v)
    if dlosses is None:
        return losses, lse
    dlogits = np.empty_like(logits)
    emulator.call(getattr(library, f"backward_{SUFFIX[dtype]}"), grid, block, logits, lse, targets, dlosses,
                  dlogits, n, v)
    return losses, lse, dlogits


@pytest.fixture(scope="module")
def xent_library():
    return emulator.build(SOFTMAX_XENT, HARNESS)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, vocab", [(1, 1), (2, 31), (3, 33), (2, 257), (1, 1000)])
def test_softmax_xent_matches_reference(xent_library, dtype, rows, vocab):
    rng = np.random.default_rng(rows * vocab)
    logits = (rng.standard_normal((rows, vocab)) * 3).astype(dtype)
    targets = rng.integers(0, vocab, size=rows).astype(np.int64)
    dlosses = rng.standard_normal(rows).astype(dtype)
    losses, lse, dlogits = emulated_xent(xent_library, logits, targets, dlosses)
    expected_losses, expected_lse = reference.softmax_xent_forward(logits, targets)
    expected_dlogits = reference.softmax_xent_backward(dlosses, logits, expected_lse, targets)
    assert kernel_error(lse, expected_lse) <= KERNEL_TOLERANCE[dtype]
    assert kernel_error(losses, expected_losses, np.abs(expected_lse).max()) <= KERNEL_TOLERANCE[dtype]
    assert kernel_error(dlogits, expected_dlogits, np.linalg.norm(dlosses)) <= KERNEL_TOLERANCE[dtype]


def test_emulated_backward_passes_finite_differences(xent_library):
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((2, 7))
    targets = np.array([3, 6], dtype=np.int64)
    dlosses = rng.standard_normal(2)
    _, _, dlogits = emulated_xent(xent_library, logits, targets, dlosses)
    loss = lambda: float((emulated_xent(xent_library, logits, targets)[0] * dlosses).sum())  # noqa: E731
    assert_grad_close(dlogits, loss, logits, "dlogits")


def test_a_planted_error_is_caught(tmp_path):
    """The reduction's first shuffle round dropped: lanes 16 apart are never merged."""
    source = open(SOFTMAX_XENT).read()
    broken = source.replace("for (int offset = WARP / 2; offset > 0; offset /= 2)",
                            "for (int offset = WARP / 4; offset > 0; offset /= 2)", 1)
    assert broken != source
    planted = tmp_path / "softmax_xent.cu"
    planted.write_text(broken)
    library = emulator.build(str(planted), HARNESS)
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 300))
    targets = np.array([1, 2], dtype=np.int64)
    _, lse = emulated_xent(library, logits, targets)
    assert kernel_error(lse, reference.softmax_xent_forward(logits, targets)[1]) > 1e-3


def run_under_thread_sanitizer(source, harness, tmp_path):
    binary = tmp_path / "tsan"
    subprocess.run(["g++", "-std=c++20", "-O1", "-g", "-pthread", "-fsanitize=thread", f"-I{emulator.HERE}",
                    f"-DKERNEL_SOURCE=\"{source}\"", os.path.join(emulator.HERE, harness), "-o", str(binary)],
                   check=True, capture_output=True)
    return subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("source, harness", [("softmax_xent.cu", "softmax_xent_tsan.cpp"),
                                             ("attention.cu", "attention_tsan.cpp")])
def test_thread_sanitizer_finds_no_race(source, harness, tmp_path):
    result = run_under_thread_sanitizer(os.path.join(emulator.KERNELS, source), harness, tmp_path)
    assert result.returncode == 0 and "ThreadSanitizer" not in result.stderr, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def test_thread_sanitizer_catches_a_missing_syncthreads(tmp_path):
    source = open(SOFTMAX_XENT).read()
    planted = tmp_path / "softmax_xent.cu"
    planted.write_text(source.replace("    __syncthreads();\n", "", 1))
    assert planted.read_text() != source
    result = run_under_thread_sanitizer(str(planted), "softmax_xent_tsan.cpp", tmp_path)
    assert "WARNING: ThreadSanitizer: data race" in result.stderr


# ---- causal attention on the emulator ----------------------------------------------------------

ATTENTION = os.path.join(emulator.KERNELS, "attention.cu")
ATTENTION_HARNESS = os.path.join(emulator.HERE, "attention_harness.cpp")


@pytest.fixture(scope="module")
def attention_library():
    return emulator.build(ATTENTION, ATTENTION_HARNESS)


def emulated_attention(library, q, k, v, dout=None):
    """(out, lse) and, given dout, (dq, dk, dv), launched as the GPU backend launches them."""
    B, H, T, hd = q.shape
    suffix = SUFFIX[q.dtype.type]
    grid, block = launch.attention_geometry(B * H, T)
    out, lse = np.empty_like(q), np.empty((B, H, T), q.dtype)
    emulator.call(getattr(library, f"forward_{suffix}"), grid, block, q, k, v, out, lse, B * H, T, hd)
    if dout is None:
        return out, lse
    row_dot, grads = np.empty_like(lse), [np.empty_like(q) for _ in range(3)]
    emulator.call(getattr(library, f"backward_{suffix}"), grid, block, q, k, v, out, dout, lse, row_dot, *grads,
                  B * H, T, hd)
    return out, lse, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 32), (1, 3, 5, 64), (1, 1, 33, 32), (1, 1, 6, 128)])
def test_attention_matches_reference(attention_library, dtype, shape):
    rng = np.random.default_rng(sum(shape))
    q, k, v, dout = (rng.standard_normal(shape).astype(dtype) for _ in range(4))
    out, lse, grads = emulated_attention(attention_library, q, k, v, dout)
    expected_out, expected_lse = reference.attention_forward(q, k, v)
    expected = reference.attention_backward(dout, q, k, v, expected_out, expected_lse)
    assert kernel_error(out, expected_out) <= KERNEL_TOLERANCE[dtype]
    assert kernel_error(lse, expected_lse) <= KERNEL_TOLERANCE[dtype]
    scale = np.linalg.norm(dout.astype(np.float64))  # dq of a one-position sequence is exactly 0
    for name, got, want in zip(("dq", "dk", "dv"), grads, expected):
        assert kernel_error(got, want, scale) <= KERNEL_TOLERANCE[dtype], name


def test_emulated_attention_backward_passes_finite_differences(attention_library):
    rng = np.random.default_rng(5)
    q, k, v, dout = (rng.standard_normal((1, 1, 3, 32)) for _ in range(4))
    _, _, (dq, dk, dv) = emulated_attention(attention_library, q, k, v, dout)
    loss = lambda: float((emulated_attention(attention_library, q, k, v)[0] * dout).sum())  # noqa: E731
    for name, grad, x in (("dq", dq, q), ("dk", dk, k), ("dv", dv, v)):
        assert_grad_close(grad, loss, x, name)


def test_a_deadlock_becomes_a_failure(tmp_path, capfd):
    planted = tmp_path / "deadlock.cu"
    planted.write_text(
        "__global__ void planted_deadlock(float* x) {\n"
        "    if (threadIdx.x == 0) __syncthreads();  // lane 0 waits for the block...\n"
        "    float v = __shfl_xor_sync(0xffffffff, x[threadIdx.x], 1);  // ...which waits here for lane 0\n"
        "    x[threadIdx.x] = v;\n"
        "}\n")
    library = emulator.build(str(planted), os.path.join(emulator.HERE, "deadlock_harness.cpp"))
    x = np.arange(32, dtype=np.float32)
    assert library.run(emulator.pointer(x)) == 1
    assert "timed out" in capfd.readouterr().err

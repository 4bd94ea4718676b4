"""The CUDA sources, proven without a GPU: every .cu compiles through NVRTC with CuPy's options
for sm_80 and sm_90, nvcc reports no register spills, and the unchanged sources run on the CPU
emulator (tests/cuda_emu) against engine/kernels/reference.py on ragged shapes, including a
finite-difference check of the emulated backward and a planted error the tests must catch."""
import ctypes
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
from train.finite_differences import EPS, central_differences, relative_error, sample_entries
from train.finite_differences import TOLERANCE as FD_TOLERANCE

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
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="needs cuda-bindings (the nvrtc extra)")
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


def thread_sanitizer_arguments(harness):
    """A harness's command line: attention_tsan.cpp's is the launch geometry (grid, block) of its four kernels,
    from launch.py, for its case (one head, T = 70, HD = 32, double)."""
    if harness != "attention_tsan.cpp":
        return []
    geometries = (launch.attention_geometry(kernel, 1, 70, 8, 32) for kernel in ATTENTION_KERNELS)
    return [str(n) for grid, block in geometries for n in (grid[0], block[0])]


def run_under_thread_sanitizer(source, harness, tmp_path):
    binary = tmp_path / "tsan"
    subprocess.run(["g++", "-std=c++20", "-O1", "-g", "-pthread", "-fsanitize=thread", f"-I{emulator.HERE}",
                    f"-DKERNEL_SOURCE=\"{source}\"", os.path.join(emulator.HERE, harness), "-o", str(binary)],
                   check=True, capture_output=True)
    return subprocess.run([str(binary), *thread_sanitizer_arguments(harness)], capture_output=True, text=True,
                          timeout=120)


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
ATTENTION_KERNELS = ("forward", "row_dot", "backward_dq", "backward_dkdv")
TILED_KERNELS = ("forward", "backward_dq", "backward_dkdv")


@pytest.fixture(scope="module")
def attention_library():
    return emulator.build(ATTENTION, ATTENTION_HARNESS)


def emulated_attention(library, q, k, v, dout=None):
    """(out, lse) and, given dout, (dq, dk, dv), each kernel launched with launch.py's geometry as the GPU backend
    launches it; outputs start as NaN, so an entry that no block writes fails the comparison."""
    B, H, T, hd = q.shape

    def run(kernel, *args):
        grid, block = launch.attention_geometry(kernel, B * H, T, q.dtype.itemsize, hd)
        emulator.call(getattr(library, f"{kernel}_{SUFFIX[q.dtype.type]}"), grid, block, *args, B * H, T, hd)

    out, lse = np.full_like(q, np.nan), np.full((B, H, T), np.nan, q.dtype)
    run("forward", q, k, v, out, lse)
    if dout is None:
        return out, lse
    row_dot, (dq, dk, dv) = np.full_like(lse, np.nan), (np.full_like(q, np.nan) for _ in range(3))
    run("row_dot", dout, out, row_dot)
    run("backward_dq", q, k, v, dout, lse, row_dot, dq)
    run("backward_dkdv", q, k, v, dout, lse, row_dot, dk, dv)
    return out, lse, (dq, dk, dv)


def attention_errors(library, dtype, shape, seed=0):
    """Relative errors of the emulated out, lse, dq, dk, dv against reference.py, on random inputs."""
    rng = np.random.default_rng(seed)
    q, k, v, dout = (rng.standard_normal(shape).astype(dtype) for _ in range(4))
    out, lse, grads = emulated_attention(library, q, k, v, dout)
    expected_out, expected_lse = reference.attention_forward(q, k, v)
    expected = reference.attention_backward(dout, q, k, v, expected_out, expected_lse)
    scale = np.linalg.norm(dout.astype(np.float64))  # dq of a one-position sequence is exactly 0
    return {"out": kernel_error(out, expected_out), "lse": kernel_error(lse, expected_lse),
            **{name: kernel_error(got, want, scale) for name, got, want in zip(("dq", "dk", "dv"), grads, expected)}}


@pytest.mark.parametrize("dtype, itemsize", [(np.float32, 4), (np.float64, 8)])
@pytest.mark.parametrize("head_size", launch.ATTENTION_HEAD_SIZES)
def test_attention_launch_geometry_matches_the_kernels_tiles(attention_library, dtype, itemsize, head_size):
    """launch.py computes the tiles that attention.cu picks at compile time; the two must agree."""
    for n, kernel in enumerate(TILED_KERNELS):
        shape = (ctypes.c_int * 3)()
        assert getattr(attention_library, f"tiling_{SUFFIX[dtype]}")(n, head_size, shape) == 0
        own, stream, threads = shape
        assert (own, stream) == launch.attention_tiles(kernel, itemsize, head_size), kernel
        assert launch.attention_geometry(kernel, 3, 2 * own + 1, itemsize, head_size) == ((9, 1, 1), (threads, 1, 1))


# T = 1; T inside one tile; T not a multiple of any tile; T spanning several query and key tiles of every kernel
# (the tiles are 8 to 64 rows); every head size; B * H > 1.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 32), (1, 3, 5, 64), (2, 1, 33, 32), (1, 2, 70, 64), (1, 1, 130, 128)])
def test_attention_matches_reference(attention_library, dtype, shape):
    errors = attention_errors(attention_library, dtype, shape, seed=sum(shape))
    assert all(error <= KERNEL_TOLERANCE[dtype] for error in errors.values()), errors


def test_emulated_attention_backward_passes_finite_differences(attention_library):
    """T = 40 (float64, HD = 32) spans two key tiles of the forward, two query tiles of dq, and two key tiles of
    dkdv over three query tiles; the entries checked are sample_entries' (the largest gradients, and random ones)."""
    rng = np.random.default_rng(5)
    q, k, v, dout = (rng.standard_normal((1, 1, 40, 32)) for _ in range(4))
    _, _, grads = emulated_attention(attention_library, q, k, v, dout)
    loss = lambda: float((emulated_attention(attention_library, q, k, v)[0] * dout).sum())  # noqa: E731
    for name, grad, x in zip(("dq", "dk", "dv"), grads, (q, k, v)):
        entries = sample_entries(grad, 10, rng)
        numeric = central_differences(loss, x.reshape(-1), entries, EPS)
        error = relative_error(grad.reshape(-1)[entries], numeric)
        assert error <= FD_TOLERANCE["float64"], f"{name}: relative error {error:.2e}"


# Tile bounds off by one tile, each caught by the comparison with reference.py on a case that spans several tiles.
PLANTED_TILE_BOUNDS = {
    "forward's causal loop stops a key tile early": ("k0 < key_end; k0 += BN", "k0 + BN < key_end; k0 += BN"),
    "dkdv skips the diagonal query tile": ("q0 = k0 / BM * BM;", "q0 = k0 / BM * BM + BM;"),
    "the ragged last tile's last row is not stored": ("if (row >= seq) continue;", "if (row >= seq - 1) continue;"),
}


@pytest.mark.parametrize("planted", PLANTED_TILE_BOUNDS)
def test_a_planted_attention_tile_bound_is_caught(planted, tmp_path):
    original, replacement = PLANTED_TILE_BOUNDS[planted]
    source = open(ATTENTION).read()
    broken = source.replace(original, replacement, 1)
    assert broken != source
    (tmp_path / "attention.cu").write_text(broken)
    library = emulator.build(str(tmp_path / "attention.cu"), ATTENTION_HARNESS)
    errors = attention_errors(library, np.float64, (1, 2, 70, 32))
    assert not all(error <= 1e-3 for error in errors.values()), errors  # NaN, where nothing was written, too


def test_thread_sanitizer_catches_a_missing_syncthreads_between_attention_tiles(tmp_path):
    """The forward's barrier between a tile's keys and its values dropped: fast threads overwrite the keys with
    the values while others still read them."""
    source = open(ATTENTION).read()
    planted = tmp_path / "attention.cu"
    planted.write_text(source.replace("        __syncthreads();  // every thread is done with the keys\n", ""))
    assert planted.read_text() != source
    result = run_under_thread_sanitizer(str(planted), "attention_tsan.cpp", tmp_path)
    assert "WARNING: ThreadSanitizer: data race" in result.stderr


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

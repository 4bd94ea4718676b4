"""LayerNorm and GELU's CUDA sources (layernorm.cu, gelu.cu) proven without a GPU: each kernel runs
unchanged on the CPU emulator (tests/cuda_emu) against engine/kernels/reference.py on ragged shapes
and grids, the emulated backwards pass finite differences, ThreadSanitizer watches each source, and
a planted error per kernel must be caught. The reference runs in float64 on the kernels' own inputs,
so a float32 kernel is measured against the exact answer, not against a second float32 rounding.
Compiling (NVRTC) and nvcc's register report are test_cuda_kernels.py's, which take every .cu; on a
real GPU, tests/test_gpu.py runs the same kernels through engine/kernels/gpu.py."""
import os

import numpy as np
import pytest
from cuda_emu import emulator
from helpers import KERNEL_TOLERANCE, assert_grad_close, kernel_error
from test_cuda_kernels import run_under_thread_sanitizer

from engine.kernels import launch, reference

LAYERNORM = os.path.join(emulator.KERNELS, "layernorm.cu")
LAYERNORM_HARNESS = os.path.join(emulator.HERE, "layernorm_harness.cpp")
GELU = os.path.join(emulator.KERNELS, "gelu.cu")
GELU_HARNESS = os.path.join(emulator.HERE, "gelu_harness.cpp")
SUFFIX = {np.float32: "f32", np.float64: "f64"}
EPS = 1e-5


def float64(*arrays):
    return [a.astype(np.float64) for a in arrays]


def planted(tmp_path, source, old, new, count=-1):
    """A copy of `source` with `old` replaced by `new`, asserted to differ from it."""
    text = open(source).read()
    broken = text.replace(old, new, count)
    assert broken != text
    path = tmp_path / os.path.basename(source)
    path.write_text(broken)
    return str(path)


# ---- LayerNorm -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def layernorm_library():
    return emulator.build(LAYERNORM, LAYERNORM_HARNESS)


def emulated_layernorm(library, x, w, b, dy=None, max_blocks=launch.LAYERNORM_MAX_BLOCKS):
    """(y, mean, rstd) and, given dy, also (dx, dw, db), launched and reduced as engine/kernels/gpu.py does."""
    suffix = SUFFIX[x.dtype.type]
    n, d = x.shape
    grid, block = launch.layernorm_geometry(n, max_blocks)
    y, mean, rstd = np.empty_like(x), np.empty(n, x.dtype), np.empty(n, x.dtype)
    emulator.call(getattr(library, f"forward_{suffix}"), grid, block, x, w, b, y, mean, rstd, n, d, EPS)
    if dy is None:
        return y, mean, rstd
    dx, partials = np.empty_like(x), np.empty((2, grid[0], d), x.dtype)
    emulator.call(getattr(library, f"backward_{suffix}"), grid, block, dy, x, mean, rstd, w, dx, partials[0],
                  partials[1], n, d)
    return (y, mean, rstd), (dx, *partials.sum(axis=1))


def layernorm_inputs(rng, rows, d, dtype):
    x = (rng.standard_normal((rows, d)) * 3 + 1).astype(dtype)
    w, b = (rng.standard_normal(d).astype(dtype) for _ in range(2))
    return x, w, b, rng.standard_normal((rows, d)).astype(dtype)


def test_layernorm_geometry():
    for rows in (1, 7, 8, 9, 8192, 10**6):
        (blocks, _, _), (threads, _, _) = launch.layernorm_geometry(rows)
        assert threads == launch.LAYERNORM_WARPS_PER_BLOCK * launch.WARP
        assert blocks == min(launch.LAYERNORM_MAX_BLOCKS, -(-rows // launch.LAYERNORM_WARPS_PER_BLOCK))
    assert launch.layernorm_geometry(17, max_blocks=2)[0] == (2, 1, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, d, max_blocks", [
    (1, 1, launch.LAYERNORM_MAX_BLOCKS), (1, 31, launch.LAYERNORM_MAX_BLOCKS), (3, 33, launch.LAYERNORM_MAX_BLOCKS),
    (9, 768, launch.LAYERNORM_MAX_BLOCKS),  # two blocks, the second with one row
    (17, 100, 2),  # three rounds of 8 rows over two blocks: block 0 takes rows 0-7 and 16
    (2, 4096, launch.LAYERNORM_MAX_BLOCKS)])
def test_layernorm_matches_reference(layernorm_library, dtype, rows, d, max_blocks):
    rng = np.random.default_rng(rows * d)
    x, w, b, dy = layernorm_inputs(rng, rows, d, dtype)
    forward, backward = emulated_layernorm(layernorm_library, x, w, b, dy, max_blocks)
    expected = reference.layernorm_forward(*float64(x, w, b), EPS)
    for name, got, want in zip(("y", "mean", "rstd"), forward, expected):
        assert got.dtype == dtype and got.shape == want.shape, name
        assert kernel_error(got, want) <= KERNEL_TOLERANCE[dtype], name
    _, mean, rstd = forward
    for name, got, want in zip(("dx", "dw", "db"), backward,
                               reference.layernorm_backward(*float64(dy, x, mean, rstd, w))):
        assert got.dtype == dtype and got.shape == want.shape, name
        assert kernel_error(got, want) <= KERNEL_TOLERANCE[dtype], name


def test_emulated_layernorm_backward_passes_finite_differences(layernorm_library):
    rng = np.random.default_rng(7)
    x, w, b, g = layernorm_inputs(rng, 9, 3, np.float64)  # two blocks: dw and db sum two partial rows
    _, grads = emulated_layernorm(layernorm_library, x, w, b, g)
    loss = lambda: float((emulated_layernorm(layernorm_library, x, w, b)[0] * g).sum())  # noqa: E731
    for name, grad, param in zip(("dx", "dw", "db"), grads, (x, w, b)):
        assert_grad_close(grad, loss, param, name)


def test_a_planted_layernorm_forward_error_is_caught(tmp_path):
    """The mean's loop stops at the last whole warp's worth of columns, skipping a ragged row's tail."""
    source = planted(tmp_path, LAYERNORM, "for (int j = lane; j < d; j += WARP) sum += x_row[j];",
                     "for (int j = lane; j < d / WARP * WARP; j += WARP) sum += x_row[j];")
    library = emulator.build(source, LAYERNORM_HARNESS)
    x, w, b, _ = layernorm_inputs(np.random.default_rng(3), 3, 33, np.float64)
    _, mean, _ = emulated_layernorm(library, x, w, b)
    assert kernel_error(mean, reference.layernorm_forward(x, w, b, EPS)[1]) > 1e-3


# ---- GELU ----------------------------------------------------------------------------------------

CANARY = 12345.0  # past each output's end: a kernel that writes there has overrun its bound


@pytest.fixture(scope="module")
def gelu_library():
    return emulator.build(GELU, GELU_HARNESS)


def emulated_gelu(library, x, dy=None, max_blocks=launch.GELU_MAX_BLOCKS):
    """y and, given dy, also dx, launched as engine/kernels/gpu.py does; each buffer is one longer
    than n, so an overrun reads defined memory and shows in the output's canary."""
    suffix, n = SUFFIX[x.dtype.type], x.size
    grid, block = launch.gelu_geometry(n, max_blocks)
    padded_x = np.append(x.ravel(), x.dtype.type(0))
    y = np.full(n + 1, CANARY, x.dtype)
    emulator.call(getattr(library, f"forward_{suffix}"), grid, block, padded_x, y, n)
    assert y[n] == CANARY, "gelu_forward wrote past the end"
    if dy is None:
        return y[:n].reshape(x.shape)
    dx = np.full(n + 1, CANARY, x.dtype)
    emulator.call(getattr(library, f"backward_{suffix}"), grid, block, np.append(dy.ravel(), dy.dtype.type(0)),
                  padded_x, dx, n)
    assert dx[n] == CANARY, "gelu_backward wrote past the end"
    return y[:n].reshape(x.shape), dx[:n].reshape(x.shape)


def test_gelu_geometry():
    for n in (1, 255, 256, 257, 10**9, 2**33):
        (blocks, _, _), (threads, _, _) = launch.gelu_geometry(n)
        assert threads == launch.GELU_THREADS
        assert blocks == min(launch.GELU_MAX_BLOCKS, -(-n // launch.GELU_THREADS))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, max_blocks", [((1,), launch.GELU_MAX_BLOCKS), ((31,), launch.GELU_MAX_BLOCKS),
                                               ((3, 333), launch.GELU_MAX_BLOCKS),  # 4 blocks, the last ragged
                                               ((3, 333), 2)])  # two blocks, each thread taking 2 or 1 values
def test_gelu_matches_reference(gelu_library, dtype, shape, max_blocks):
    rng = np.random.default_rng(sum(shape))
    x, dy = (rng.standard_normal(shape) * 3).astype(dtype), rng.standard_normal(shape).astype(dtype)
    y, dx = emulated_gelu(gelu_library, x, dy, max_blocks)
    assert y.dtype == dx.dtype == dtype
    assert kernel_error(y, reference.gelu_forward(*float64(x))) <= KERNEL_TOLERANCE[dtype]
    assert kernel_error(dx, reference.gelu_backward(*float64(dy, x))) <= KERNEL_TOLERANCE[dtype]


def test_emulated_gelu_backward_passes_finite_differences(gelu_library):
    rng = np.random.default_rng(8)
    x, g = rng.standard_normal(12) * 2, rng.standard_normal(12)
    _, dx = emulated_gelu(gelu_library, x, g, max_blocks=1)
    assert_grad_close(dx, lambda: float((emulated_gelu(gelu_library, x) * g).sum()), x, "dx")


def test_a_planted_gelu_forward_overrun_is_caught(tmp_path):
    """The forward's grid-stride loop runs one value past the end (<= for <)."""
    source = planted(tmp_path, GELU, "i < n; i += stride", "i <= n; i += stride", count=1)
    library = emulator.build(source, GELU_HARNESS)
    with pytest.raises(AssertionError, match="gelu_forward wrote past the end"):
        emulated_gelu(library, np.linspace(-3, 3, 100))


def test_a_planted_gelu_backward_error_is_caught(tmp_path):
    """du/dx without the 3 that differentiating x³ brings down."""
    source = planted(tmp_path, GELU, "T(3 * GELU_CUBIC)", "T(GELU_CUBIC)")
    library = emulator.build(source, GELU_HARNESS)
    x, dy = np.linspace(-3, 3, 100), np.ones(100)
    _, dx = emulated_gelu(library, x, dy)
    assert kernel_error(dx, reference.gelu_backward(dy, x)) > 1e-3


# ---- ThreadSanitizer -----------------------------------------------------------------------------

@pytest.mark.parametrize("source, harness", [("layernorm.cu", "layernorm_tsan.cpp"), ("gelu.cu", "gelu_tsan.cpp")])
def test_thread_sanitizer_finds_no_race(source, harness, tmp_path):
    result = run_under_thread_sanitizer(os.path.join(emulator.KERNELS, source), harness, tmp_path)
    assert result.returncode == 0 and "ThreadSanitizer" not in result.stderr, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def test_thread_sanitizer_catches_overlapping_columns(tmp_path):
    """The backward's column pass strides by a warp instead of the block: threads t and t + 32 then
    both own column t + 32 of the block's partial row."""
    source = planted(tmp_path, LAYERNORM, "j += blockDim.x", "j += WARP")
    result = run_under_thread_sanitizer(source, "layernorm_tsan.cpp", tmp_path)
    assert "WARNING: ThreadSanitizer: data race" in result.stderr

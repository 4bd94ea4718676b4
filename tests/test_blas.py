"""engine/kernels/blas.py: OpenBLAS's gemm called from inside Numba kernels, against np.matmul,
on the views the kernels hand it (transposed, strided, accumulating), and the one-pool rule
that keeps OpenBLAS's own threads out of the way."""
import ctypes

import numba
import numpy as np
import pytest
import threadpoolctl

from engine.kernels import blas, cpu
from engine.threads import set_threads

TOLERANCE = {np.float32: 1e-6, np.float64: 1e-14}
needs_openblas = pytest.mark.skipif(not blas.FOUND, reason="NumPy's BLAS is not an OpenBLAS with cblas gemm")


def openblas_libraries():
    return [info for info in threadpoolctl.threadpool_info()
            if info["user_api"] == "blas" and info["internal_api"] == "openblas"]


def test_gemm_is_bound_wherever_numpys_openblas_has_it():
    """Without the binding every product falls back to NumPy's own threads, so a lost binding
    must fail here; a NumPy on another BLAS has none."""
    exported = [any(hasattr(ctypes.CDLL(info["filepath"]), name.format("s")) for name in blas.NAMES)
                for info in openblas_libraries()]
    assert bool(blas.FOUND) == any(exported), f"NumPy's BLAS here: {threadpoolctl.threadpool_info()}"


@needs_openblas
def test_openblas_keeps_to_one_thread_and_the_kernels_take_the_rest():
    try:
        set_threads(2)
        assert all(info["num_threads"] == 1 for info in openblas_libraries())
        assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
    finally:
        set_threads(numba.config.NUMBA_NUM_THREADS)


@numba.njit
def gemm_in_a_kernel(a, b, c, beta):
    blas.gemm(a, b, c, beta)


def views(rng, dtype):
    """(a, b, c) of 2-D views: plain, transposed, heads sliced out of wider buffers, one row."""
    q = rng.standard_normal((300, 64)).astype(dtype)
    k = rng.standard_normal((300, 64)).astype(dtype)
    qkv = rng.standard_normal((200, 3 * 64)).astype(dtype)
    scores = rng.standard_normal((64, 300)).astype(dtype)
    return [(q[:64], k.T, scores),
            (q.T[:, :280], k[:280], rng.standard_normal((64, 64)).astype(dtype)),
            (qkv[:, :64], qkv[:, 64:128].T, rng.standard_normal((200, 200)).astype(dtype)),
            (scores[:40, :200], qkv[:, 128:], rng.standard_normal((50, 3 * 64)).astype(dtype)[:40, 64:128]),
            (q[:1], k[:7].T, rng.standard_normal((1, 7)).astype(dtype))]


@needs_openblas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_matches_numpy_on_views(dtype, beta):
    rng = np.random.default_rng(0)
    for a, b, c in views(rng, dtype):
        start = c.copy()
        gemm_in_a_kernel(a, b, c, beta)
        expected = a.astype(np.float64) @ b.astype(np.float64) + beta * start
        assert np.abs(c - expected).max() / np.abs(expected).max() < TOLERANCE[dtype]


@needs_openblas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_shares_rows_and_takes_any_strides(dtype):
    """cpu.matmul splits the rows among the threads (uneven splits included) and copies only a
    view strided both ways."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((301, 5, 70)).astype(dtype)[:, 2]  # rows strided, columns contiguous
    b = rng.standard_normal((70, 90)).astype(dtype)[:, ::2]  # strided both ways: copied
    bias = rng.standard_normal(45).astype(dtype)
    for parts in (1, 2, 3):
        out = np.empty((301, 45), dtype)
        cpu.matmul_rows(a, np.ascontiguousarray(b), bias, out, parts)
        np.testing.assert_allclose(out, a @ b + bias, rtol=TOLERANCE[dtype] * 10, atol=TOLERANCE[dtype] * 10)
    np.testing.assert_allclose(cpu.matmul(a, b), a @ b, rtol=TOLERANCE[dtype] * 10, atol=TOLERANCE[dtype] * 10)
    mixed = cpu.matmul(a.astype(np.float32), b.astype(np.float64))  # converted, never read as the other type
    assert mixed.dtype == np.float64
    np.testing.assert_allclose(mixed, a.astype(np.float32) @ b.astype(np.float64), rtol=1e-12)

"""engine/kernels/blas.py: OpenBLAS's strided-batch GEMM against np.matmul, on the views
attention hands it (transposed, strided, accumulating), and the small products it must
leave to np.matmul."""
import ctypes

import numpy as np
import pytest
import threadpoolctl

from engine.kernels import blas, cpu

TOLERANCE = {np.float32: 1e-6, np.float64: 1e-14}


def test_the_batch_call_is_bound_wherever_numpys_openblas_has_it():
    """Without the binding attention silently runs at np.matmul's speed, so a lost binding must
    fail here; a NumPy on another BLAS (or an older OpenBLAS) has none, and falls back."""
    exported = [hasattr(ctypes.CDLL(info["filepath"]), "cblas_sgemm_batch_strided")
                for info in threadpoolctl.threadpool_info()
                if info["user_api"] == "blas" and info["internal_api"] == "openblas"]
    expected = {np.dtype(np.float32), np.dtype(np.float64)} if any(exported) else set()
    assert set(blas.BATCH_GEMM) == expected, f"NumPy's BLAS here: {threadpoolctl.threadpool_info()}"


def views(rng, dtype):
    """(a, b) pairs of 3-D views: plain, transposed, and heads sliced out of a wider buffer."""
    q = rng.standard_normal((12, 300, 64)).astype(dtype)
    k = rng.standard_normal((12, 300, 64)).astype(dtype)
    qkv = rng.standard_normal((12, 200, 3 * 64)).astype(dtype)
    return [(q[:, :130], k.transpose(0, 2, 1)),                      # q kᵀ, k transposed
            (q.transpose(0, 2, 1)[:, :, :280], k[:, :280]),          # qᵀ k over a ragged prefix
            (qkv[:, :, :64], qkv[:, :, 64:128].transpose(0, 2, 1))]  # one head's columns of a wider buffer


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("accumulate", [False, True])
def test_batched_matmul_matches_numpy(dtype, accumulate):
    rng = np.random.default_rng(0)
    for a, b in views(rng, dtype):
        assert a.shape[1] * a.shape[2] * b.shape[2] > blas.SMALL_MATRIX_LIMIT  # the batch call, not the fallback
        start = rng.standard_normal((a.shape[0], a.shape[1], b.shape[2])).astype(dtype)
        out = start.copy()
        blas.batched_matmul(a, b, out, accumulate=accumulate)
        expected = np.matmul(a.astype(np.float64), b.astype(np.float64)) + (start if accumulate else 0)
        assert np.abs(out - expected).max() / np.abs(expected).max() < TOLERANCE[dtype]


@pytest.mark.parametrize("accumulate", [False, True])
def test_small_products_fall_back_to_numpy(monkeypatch, accumulate):
    """Products at or under OpenBLAS's small-matrix limit never reach the batch call (whose
    small-matrix path crashes in OpenBLAS 0.3.31), and still give the product."""
    calls = []
    monkeypatch.setattr(blas, "BATCH_GEMM", {np.dtype(np.float32): lambda *args: calls.append(args)})
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 64, 64), dtype=np.float32), rng.standard_normal((4, 64, 64), dtype=np.float32)
    out = np.ones((4, 64, 64), np.float32)
    blas.batched_matmul(a, b, out, accumulate=accumulate)
    assert not calls
    np.testing.assert_allclose(out, a @ b + (1 if accumulate else 0), rtol=1e-5, atol=1e-5)


def test_attention_blocks_take_the_batch_call(monkeypatch):
    """At configs/nano2.json's head size the query blocks are sized so every product is batched."""
    assert cpu.query_block(256, 64) == 128
    used = []
    real = blas.BATCH_GEMM[np.dtype(np.float32)]
    monkeypatch.setitem(blas.BATCH_GEMM, np.dtype(np.float32), lambda *args: used.append(args) or real(*args))
    rng = np.random.default_rng(2)
    q, k, v, dout = (rng.standard_normal((2, 3, 256, 64)).astype(np.float32) for _ in range(4))
    out, lse = cpu.attention_forward(q, k, v)
    cpu.attention_backward(dout, q, k, v, out, lse)
    assert len(used) == 2 * 2 + 5 * 2  # two blocks: two products forward, five backward

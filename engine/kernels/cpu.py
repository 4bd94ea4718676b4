"""Numba (and BLAS) versions of the hot kernels for NumPy arrays, each held to reference.py by
the tests. Compiled on first use and cached on disk, so only the first run pays for it.

`FAST` lets LLVM reorder and vectorise sums, but keeps NaN and Inf semantics, so a
non-finite value still reaches the training loop's check. Numba's exp and tanh are scalar
libm calls here (no SVML), ~10x slower than NumPy's SIMD ufuncs, so the kernels leave
transcendentals to np.exp / np.tanh over whole blocks and fuse the arithmetic around them.
"""
import math
import os

import numba
import numpy as np
from numba import prange

from engine.kernels import blas
from engine.kernels.reference import GELU_CUBIC, GELU_SCALE

# Numba's default threading layer (OpenMP) fights OpenBLAS's spinning workers for the same
# cores: a forward+backward of configs/nano2.json took 1.9x PyTorch's time with it and 0.92x
# with Numba's own `workqueue` layer (bench/vs_torch.py, 2 threads). It must be chosen before
# the first parallel kernel runs; a user's NUMBA_THREADING_LAYER still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

FAST = {"reassoc", "contract", "arcp", "nsz"}


# ---- causal attention: BLAS products over query blocks, Numba softmax ----------------------
#
# Query rows are taken `block` at a time; rows i0..i1-1 only see keys 0..i1-1, so each block's
# products stop at i1 and the masked upper triangle is (mostly) never computed. Only the
# diagonal block needs the mask, which the softmax loops apply by their bounds. Each block's
# products run over all B·H heads in one batched BLAS call (engine/kernels/blas.py).

def query_block(T, hd):
    """Rows per block. With OpenBLAS's batched products: the fewest rows (a multiple of 64)
    whose smallest product, block² · hd, is past the batch call's small-matrix limit, if that
    leaves at least two blocks; 128 for head size 64. Otherwise 64, which was fastest here
    with np.matmul at T = 128..1024 (32 wastes less on the mask but makes twice the small
    BLAS calls; 128 wastes more)."""
    if blas.BATCH_GEMM:
        block = 64
        while block * block * hd <= blas.SMALL_MATRIX_LIMIT:
            block += 64
        if 2 * block <= T:
            return block
    return 64


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def shift_causal_rows(scores, first_row, scale, shift, find_max):
    """scores (BH, rows, keys) of query rows first_row.. become scale · scores - shift[row], with
    -inf past each row's own position (so exp makes them 0). shift (BH, rows) is given (the
    backward's lse), or, with find_max, written: each row's max of its visible scaled scores."""
    BH, rows, keys = scores.shape
    for bh in prange(BH):
        for r in range(rows):
            visible = first_row + r + 1
            row = scores[bh, r]
            if find_max:
                top = -np.inf
                for j in range(visible):
                    top = max(top, row[j] * scale)
                shift[bh, r] = top
            offset = shift[bh, r]
            for j in range(visible):
                row[j] = row[j] * scale - offset
            for j in range(visible, keys):
                row[j] = -np.inf


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def normalize_rows(probs, lse):
    """probs = exp(scores - max) per row, normalised in place; lse (holding the max) += log(sum)."""
    BH, rows, keys = probs.shape
    for bh in prange(BH):
        for r in range(rows):
            total = 0.0
            for j in range(keys):
                total += probs[bh, r, j]
            inverse = 1.0 / total
            for j in range(keys):
                probs[bh, r, j] *= inverse
            lse[bh, r] += math.log(total)


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def softmax_grad_rows(probs, dprobs, row_dot, scale):
    """dprobs becomes dS · scale = P ∘ (dP - D) · scale in place."""
    BH, rows, keys = probs.shape
    for bh in prange(BH):
        for r in range(rows):
            for j in range(keys):
                dprobs[bh, r, j] = probs[bh, r, j] * (dprobs[bh, r, j] - row_dot[bh, r]) * scale


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def rowwise_dot(a, b, out):
    BH, T, hd = a.shape
    for bh in prange(BH):
        for t in range(T):
            total = 0.0
            for i in range(hd):
                total += a[bh, t, i] * b[bh, t, i]
            out[bh, t] = total


def attention_forward(q, k, v):
    """reference.attention_forward, block by block (see above)."""
    B, H, T, hd = q.shape
    q3, k3, v3 = (a.reshape(B * H, T, hd) for a in (q, k, v))
    scale = 1.0 / math.sqrt(hd)
    out = np.empty_like(q3)
    lse = np.empty((B * H, T), dtype=q.dtype)
    block = query_block(T, hd)
    workspace = np.empty(B * H * block * T, dtype=q.dtype)
    for i0 in range(0, T, block):
        i1 = min(i0 + block, T)
        scores = workspace[:B * H * (i1 - i0) * i1].reshape(B * H, i1 - i0, i1)
        blas.batched_matmul(q3[:, i0:i1], k3[:, :i1].transpose(0, 2, 1), scores)
        row_lse = lse[:, i0:i1]  # the row max first; normalize_rows adds log Σ exp
        shift_causal_rows(scores, i0, scale, row_lse, True)
        np.exp(scores, out=scores)
        normalize_rows(scores, row_lse)
        blas.batched_matmul(scores, v3[:, :i1], out[:, i0:i1])
    return out.reshape(B, H, T, hd), lse.reshape(B, H, T)


def attention_backward(dout, q, k, v, out, lse):
    """reference.attention_backward, block by block, recomputing P from the stored lse."""
    B, H, T, hd = q.shape
    q3, k3, v3, do3, o3 = (a.reshape(B * H, T, hd) for a in (q, k, v, dout, out))
    lse2 = lse.reshape(B * H, T)
    scale = 1.0 / math.sqrt(hd)
    row_dot = np.empty((B * H, T), dtype=q.dtype)
    rowwise_dot(do3, o3, row_dot)
    dq = np.empty_like(q3)
    dk = np.zeros_like(k3)
    dv = np.zeros_like(v3)
    block = query_block(T, hd)
    probs_space = np.empty(B * H * block * T, dtype=q.dtype)
    dprobs_space = np.empty(B * H * block * T, dtype=q.dtype)
    for i0 in range(0, T, block):
        i1 = min(i0 + block, T)
        shape = (B * H, i1 - i0, i1)
        probs = probs_space[:math.prod(shape)].reshape(shape)
        dprobs = dprobs_space[:math.prod(shape)].reshape(shape)
        blas.batched_matmul(q3[:, i0:i1], k3[:, :i1].transpose(0, 2, 1), probs)
        shift_causal_rows(probs, i0, scale, lse2[:, i0:i1], False)
        np.exp(probs, out=probs)
        blas.batched_matmul(probs.transpose(0, 2, 1), do3[:, i0:i1], dv[:, :i1], accumulate=True)
        blas.batched_matmul(do3[:, i0:i1], v3[:, :i1].transpose(0, 2, 1), dprobs)
        softmax_grad_rows(probs, dprobs, row_dot[:, i0:i1], scale)
        blas.batched_matmul(dprobs, k3[:, :i1], dq[:, i0:i1])
        blas.batched_matmul(dprobs.transpose(0, 2, 1), q3[:, i0:i1], dk[:, :i1], accumulate=True)
    return tuple(a.reshape(B, H, T, hd) for a in (dq, dk, dv))


# ---- LayerNorm, GELU, softmax + cross-entropy ------------------------------------------------
#
# LayerNorm and GELU run on one thread: they follow a matrix product, and as parallel loops they
# ran no faster against OpenBLAS's still-spinning worker thread (measured in the whole model).

@numba.njit(cache=True, fastmath=FAST)
def layernorm_rows(x, w, b, eps, y, mean, rstd):
    N, d = x.shape
    for n in range(N):
        total = 0.0
        for i in range(d):
            total += x[n, i]
        m = total / d
        squares = 0.0
        for i in range(d):
            c = x[n, i] - m
            squares += c * c
        r = 1.0 / math.sqrt(squares / d + eps)
        for i in range(d):
            y[n, i] = (x[n, i] - m) * r * w[i] + b[i]
        mean[n] = m
        rstd[n] = r


def layernorm_forward(x, w, b, eps=1e-5):
    rows = x.reshape(-1, x.shape[-1])
    y = np.empty_like(rows)
    mean = np.empty(rows.shape[0], dtype=x.dtype)
    rstd = np.empty(rows.shape[0], dtype=x.dtype)
    layernorm_rows(rows, w, b, eps, y, mean, rstd)
    return y.reshape(x.shape), mean.reshape(x.shape[:-1]), rstd.reshape(x.shape[:-1])


@numba.njit(cache=True, fastmath=FAST)
def layernorm_backward_rows(dy, x, mean, rstd, w, dx, dw, db):
    """dx per row; dw and db (float64) summed over the rows."""
    N, d = x.shape
    for n in range(N):
        g_mean = 0.0
        gx_mean = 0.0
        for i in range(d):
            xhat = (x[n, i] - mean[n]) * rstd[n]
            g = dy[n, i] * w[i]
            g_mean += g
            gx_mean += g * xhat
            dw[i] += dy[n, i] * xhat
            db[i] += dy[n, i]
        g_mean /= d
        gx_mean /= d
        for i in range(d):
            xhat = (x[n, i] - mean[n]) * rstd[n]
            dx[n, i] = rstd[n] * (dy[n, i] * w[i] - g_mean - xhat * gx_mean)


def layernorm_backward(dy, x, mean, rstd, w):
    d = x.shape[-1]
    rows = x.reshape(-1, d)
    dx = np.empty_like(rows)
    dw, db = np.zeros(d), np.zeros(d)
    layernorm_backward_rows(dy.reshape(-1, d), rows, mean.reshape(-1), rstd.reshape(-1), w, dx, dw, db)
    return dx.reshape(x.shape), dw.astype(x.dtype), db.astype(x.dtype)


@numba.njit(cache=True, fastmath=FAST)
def gelu_inner(x, u):
    N, F = x.shape
    for n in range(N):
        for i in range(F):
            a = x[n, i]
            u[n, i] = GELU_SCALE * (a + GELU_CUBIC * a * a * a)


@numba.njit(cache=True, fastmath=FAST)
def gelu_outer(x, tanh_u):
    """tanh_u becomes ½ x (1 + tanh u) in place."""
    N, F = x.shape
    for n in range(N):
        for i in range(F):
            tanh_u[n, i] = 0.5 * x[n, i] * (1.0 + tanh_u[n, i])


@numba.njit(cache=True, fastmath=FAST)
def gelu_grad(dy, x, tanh_u):
    """tanh_u becomes dy · d gelu / dx in place."""
    N, F = x.shape
    for n in range(N):
        for i in range(F):
            a = x[n, i]
            t = tanh_u[n, i]
            du = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * a * a)
            tanh_u[n, i] = dy[n, i] * (0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * du)


def gelu_tanh(x):
    """tanh(√(2/π) (x + 0.044715 x³)), as a new (N, F) array: arithmetic in Numba, tanh in NumPy."""
    rows = x.reshape(-1, x.shape[-1])
    tanh_u = np.empty_like(rows)
    gelu_inner(rows, tanh_u)
    np.tanh(tanh_u, out=tanh_u)
    return rows, tanh_u


def gelu_forward(x):
    rows, y = gelu_tanh(x)
    gelu_outer(rows, y)
    return y.reshape(x.shape)


def gelu_backward(dy, x):
    rows, dx = gelu_tanh(x)
    gelu_grad(dy.reshape(rows.shape), rows, dx)
    return dx.reshape(x.shape)


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def softmax_xent_rows(logits, targets, losses, lse):
    N, V = logits.shape
    for n in prange(N):
        top = -np.inf
        for j in range(V):
            top = max(top, logits[n, j])
        total = 0.0
        for j in range(V):
            total += math.exp(logits[n, j] - top)
        lse[n] = top + math.log(total)
        losses[n] = lse[n] - logits[n, targets[n]]


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def softmax_xent_backward_rows(dlosses, logits, lse, targets, dlogits):
    N, V = logits.shape
    for n in prange(N):
        for j in range(V):
            dlogits[n, j] = math.exp(logits[n, j] - lse[n]) * dlosses[n]
        dlogits[n, targets[n]] -= dlosses[n]


def softmax_xent_forward(logits, targets):
    losses = np.empty(logits.shape[0], dtype=logits.dtype)
    lse = np.empty(logits.shape[0], dtype=logits.dtype)
    softmax_xent_rows(logits, targets, losses, lse)
    return losses, lse


def softmax_xent_backward(dlosses, logits, lse, targets):
    dlogits = np.empty_like(logits)
    softmax_xent_backward_rows(dlosses, logits, lse, targets, dlogits)
    return dlogits


@numba.njit(cache=True)
def scatter_add_rows(dw, idx, dy, scale):
    """dw[idx[n]] += scale · dy[n]: a token seen twice receives both rows."""
    for n in range(idx.size):
        row = dw[idx[n]]
        for i in range(dy.shape[1]):
            row[i] += scale * dy[n, i]


def embedding_backward(dy, idx, vocab_size, scale):
    dw = np.zeros((vocab_size, dy.shape[-1]), dtype=dy.dtype)
    scatter_add_rows(dw, idx.reshape(-1), dy.reshape(-1, dy.shape[-1]), scale)
    return dw


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def sum_of_squares(x):
    """reference.sum_of_squares in one pass, with no float64 copy of the buffer."""
    total = 0.0
    for i in prange(x.size):
        total += np.float64(x[i]) * np.float64(x[i])
    return total


# ---- AdamW -----------------------------------------------------------------------------------

@numba.njit(parallel=True, cache=True)
def adamw_step(param, grad, m, v, decay, lr, beta1, beta2, eps, weight_decay, step):
    """reference.adamw_step in one pass over the flat buffers, instead of eight."""
    bias1 = 1.0 - beta1 ** step
    bias2_sqrt = math.sqrt(1.0 - beta2 ** step)
    shrink = 1.0 - lr * weight_decay
    for i in prange(param.size):
        g = grad[i]
        m[i] = beta1 * m[i] + (1.0 - beta1) * g
        v[i] = beta2 * v[i] + (1.0 - beta2) * g * g
        p = param[i] * shrink if decay[i] else param[i]
        param[i] = p - (lr / bias1) * m[i] / (math.sqrt(v[i]) / bias2_sqrt + eps)

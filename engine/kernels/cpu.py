"""Numba (and BLAS) versions of the hot kernels for NumPy arrays, each held to reference.py by
the tests. Compiled on first use and cached on disk, so only the first run pays for it.

Every parallel loop here is a Numba `prange`, and the matrix products run inside them
(engine/kernels/blas.py): one thread pool for the whole step, whose idle threads spin briefly
and then sleep, so a step with more threads than cores slows in proportion instead of
collapsing (README, "Threads on the CPU", has the measurements that chose this).

`FAST` lets LLVM reorder and vectorise sums, but keeps NaN and Inf semantics, so a
non-finite value still reaches the training loop's check. Numba's exp is a scalar libm call
(~1.8 ns here, against 0.13 ns for `fast_exp`'s vectorised polynomial), so float32 kernels
take their exponentials from `fast_exp`, whose argument must stay float32: constants are
made in the data's own type (`x.dtype.type(c)`), since a Python float would promote it.
"""
import math
import os

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

from engine.kernels import blas, reference
from engine.kernels.reference import GELU_CUBIC, GELU_SCALE

# The pool: Numba's OpenMP layer, its threads spinning 1000 rounds (GNU OpenMP's GOMP_SPINCOUNT,
# read when libgomp loads, at the first parallel loop) before they sleep. A step runs ~100
# short loops: woken from sleep, each start cost ~100 us here (Numba's `workqueue` layer,
# OMP_WAIT_POLICY=PASSIVE), 1.5 us while the threads still spin; libgomp's default spin,
# 300,000 rounds, kept the cores from a second job. A user's settings still win, and where
# OpenMP cannot load Numba falls back to `workqueue` (TBB, whose threads spin, comes last).
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]

FAST = {"reassoc", "contract", "arcp", "nsz"}


# ---- exp: Cody-Waite reduction and a degree-6 polynomial, for float32 ------------------------
#
# exp(x) = 2ⁿ · exp(r) with n = round(x / ln 2) and r = x - n ln 2 (ln 2 in two parts, so r is
# exact), |r| <= ln 2 / 2; exp(r) by Cephes' expf polynomial (relative error ~1e-7), times 2ⁿ
# by adding n to its exponent bits (in integers, which no fast-math reordering can overflow).
# Below -87.33 (a subnormal result) it gives 0, above 88.72 inf, and a NaN passes through.

@intrinsic
def float32_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def bits_of_float32(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


def fast_exp(x):
    return math.exp(x)


@overload(fast_exp, fastmath=FAST)
def fast_exp_for(x):
    if x != types.float32:
        return lambda x: math.exp(x)

    def exp_float32(x):
        c = x if x > np.float32(-87.33) else np.float32(-87.33)
        c = c if c < np.float32(88.72) else np.float32(88.72)
        n = np.floor(c * np.float32(1.4426950408889634) + np.float32(0.5))
        r = c - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        p = p * r * r + r + np.float32(1.0)
        e = float32_from_bits(bits_of_float32(p) + (np.int32(n) << np.int32(23)))
        e = e if x > np.float32(-87.33) else np.float32(0.0)  # flushed to 0 where it would be subnormal
        e = e if x < np.float32(88.72) else np.float32(np.inf)
        return e if x == x else x
    return exp_float32


# ---- matrix products: rows shared among the threads, each calling BLAS on its own --------

@numba.njit(inline="always")
def row_span(n, part, parts):
    """Rows [r0, r1) of n that thread `part` of `parts` takes."""
    return n * part // parts, n * (part + 1) // parts


@numba.njit(parallel=True, cache=True)
def matmul_rows(a, b, bias, out, parts):
    for part in prange(parts):
        r0, r1 = row_span(a.shape[0], part, parts)
        blas.gemm(a[r0:r1], b, out[r0:r1], 0.0)
        if bias is not None:
            for r in range(r0, r1):
                for j in range(out.shape[1]):
                    out[r, j] += bias[j]


@numba.njit(parallel=True, cache=True)
def linear_backward_rows(dy, x, w, dx, dw, db_parts):
    """Each thread: its rows of dx = dy Wᵀ, its rows of dW = xᵀ dy, and dy's column sums over
    its rows of dx (summed over the threads afterwards)."""
    parts = db_parts.shape[0]
    for part in prange(parts):
        r0, r1 = row_span(dy.shape[0], part, parts)
        blas.gemm(dy[r0:r1], w.T, dx[r0:r1], 0.0)
        c0, c1 = row_span(x.shape[1], part, parts)
        blas.gemm(x[:, c0:c1].T, dy, dw[c0:c1], 0.0)
        for r in range(r0, r1):
            for j in range(dy.shape[1]):
                db_parts[part, j] += dy[r, j]


def blas_view(x, dtype):
    """x itself where BLAS can read it as it is (blas.layout), else a contiguous copy in dtype."""
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"matrix products take float32 or float64 arrays, not {dtype}")
    if x.dtype == dtype and blas.layout(x)[0]:
        return x
    return np.ascontiguousarray(x, dtype=dtype)


def matmul(a, b, bias=None):
    """reference.matmul."""
    dtype = np.result_type(a, b)
    out = np.empty((a.shape[0], b.shape[1]), dtype=dtype)
    matmul_rows(blas_view(a, dtype), blas_view(b, dtype), bias, out, numba.get_num_threads())
    return out


def linear_backward(dy, x, w):
    """reference.linear_backward."""
    dy, x, w = (blas_view(a, dy.dtype) for a in (dy, x, w))
    dx = np.empty((dy.shape[0], w.shape[0]), dtype=dy.dtype)
    dw = np.empty(w.shape, dtype=dy.dtype)
    db_parts = np.zeros((numba.get_num_threads(), dy.shape[1]))
    linear_backward_rows(dy, x, w, dx, dw, db_parts)
    return dx, dw, db_parts.sum(axis=0).astype(dy.dtype)


# ---- causal attention: one (batch, head) at a time per thread, its scores kept in cache -----
#
# Query rows are taken BLOCK at a time; rows i0..i1-1 only see keys 0..i1-1, so a block's
# products stop at i1 and the masked upper triangle is (mostly) never computed. A head's
# scores for one block, BLOCK x T floats, stay in the thread's cache from the product that
# writes them through the softmax to the product that reads them.

BLOCK = 64


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def attention_forward_heads(q, k, v, out, lse):
    B, H, T, hd = q.shape
    scale = q.dtype.type(1.0 / math.sqrt(hd))
    for task in prange(B * H):
        b, h = task // H, task % H
        scores = np.empty((BLOCK, T), dtype=q.dtype)
        for i0 in range(0, T, BLOCK):
            i1 = min(i0 + BLOCK, T)
            s = scores[:i1 - i0, :i1]
            blas.gemm(q[b, h, i0:i1], k[b, h, :i1].T, s, 0.0)
            for r in range(i1 - i0):
                visible = i0 + r + 1
                row = s[r]
                top = row[0]
                for j in range(1, visible):
                    top = max(top, row[j])
                shift = top * scale
                total = 0.0
                for j in range(visible):
                    e = fast_exp(row[j] * scale - shift)
                    row[j] = e
                    total += e
                inverse = q.dtype.type(1.0 / total)
                for j in range(visible):
                    row[j] *= inverse
                row[visible:] = 0.0
                lse[b, h, i0 + r] = shift + math.log(total)
            blas.gemm(s, v[b, h, :i1], out[b, h, i0:i1], 0.0)


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def attention_backward_heads(dout, q, k, v, out, lse, dq, dk, dv):
    """dk and dv must start at zero: each block adds its share."""
    B, H, T, hd = q.shape
    scale = q.dtype.type(1.0 / math.sqrt(hd))
    for task in prange(B * H):
        b, h = task // H, task % H
        probs = np.empty((BLOCK, T), dtype=q.dtype)
        dprobs = np.empty((BLOCK, T), dtype=q.dtype)
        for i0 in range(0, T, BLOCK):
            i1 = min(i0 + BLOCK, T)
            p, dp = probs[:i1 - i0, :i1], dprobs[:i1 - i0, :i1]
            blas.gemm(q[b, h, i0:i1], k[b, h, :i1].T, p, 0.0)
            for r in range(i1 - i0):
                visible = i0 + r + 1
                shift = lse[b, h, i0 + r]
                for j in range(visible):
                    p[r, j] = fast_exp(p[r, j] * scale - shift)
                p[r, visible:] = 0.0
            blas.gemm(p.T, dout[b, h, i0:i1], dv[b, h, :i1], 1.0)
            blas.gemm(dout[b, h, i0:i1], v[b, h, :i1].T, dp, 0.0)
            for r in range(i1 - i0):
                total = 0.0
                for i in range(hd):
                    total += dout[b, h, i0 + r, i] * out[b, h, i0 + r, i]
                row_dot = q.dtype.type(total)
                for j in range(i1):
                    dp[r, j] = p[r, j] * (dp[r, j] - row_dot) * scale
            blas.gemm(dp, k[b, h, :i1], dq[b, h, i0:i1], 0.0)
            blas.gemm(dp.T, q[b, h, i0:i1], dk[b, h, :i1], 1.0)


def head_views(x):
    """x, or a copy, such that each (T, hd) head has contiguous rows."""
    return x if x.strides[-1] == x.itemsize else np.ascontiguousarray(x)


def per_head_output(B, H, T, hd, dtype, zeros=False):
    """A (B, H, T, hd) view of a (B, T, H, hd) buffer, so merging the heads back costs no copy."""
    return (np.zeros if zeros else np.empty)((B, T, H, hd), dtype=dtype).transpose(0, 2, 1, 3)


def attention_forward(q, k, v):
    """reference.attention_forward, block by block (see above)."""
    q, k, v = (head_views(a) for a in (q, k, v))
    B, H, T, hd = q.shape
    out = per_head_output(B, H, T, hd, q.dtype)
    lse = np.empty((B, H, T), dtype=q.dtype)
    attention_forward_heads(q, k, v, out, lse)
    return out, lse


def attention_backward(dout, q, k, v, out, lse):
    """reference.attention_backward, block by block, recomputing P from the stored lse."""
    dout, q, k, v, out = (head_views(a) for a in (dout, q, k, v, out))
    dq = per_head_output(*q.shape, q.dtype)
    dk, dv = (per_head_output(*q.shape, q.dtype, zeros=True) for _ in range(2))
    attention_backward_heads(dout, q, k, v, out, lse, dq, dk, dv)
    return dq, dk, dv


# ---- LayerNorm, GELU, softmax + cross-entropy ------------------------------------------------

@numba.njit(parallel=True, cache=True, fastmath=FAST)
def layernorm_rows(x, w, b, eps, y, mean, rstd):
    N, d = x.shape
    zero, inverse_d = x.dtype.type(0.0), x.dtype.type(1.0 / d)
    for n in prange(N):
        total = zero
        for i in range(d):
            total += x[n, i]
        m = total * inverse_d
        squares = zero
        for i in range(d):
            c = x[n, i] - m
            squares += c * c
        r = x.dtype.type(1.0 / math.sqrt(squares * inverse_d + eps))
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


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def layernorm_backward_rows(dy, x, mean, rstd, w, dx, dw_parts, db_parts):
    """dx per row; each thread sums dw and db over its rows into its own float64 row."""
    N, d = x.shape
    parts = dw_parts.shape[0]
    zero, inverse_d = x.dtype.type(0.0), x.dtype.type(1.0 / d)
    for part in prange(parts):
        n0, n1 = row_span(N, part, parts)
        dw, db = dw_parts[part], db_parts[part]
        for n in range(n0, n1):
            m, r = mean[n], rstd[n]
            g_mean = zero
            gx_mean = zero
            for i in range(d):
                g = dy[n, i] * w[i]
                g_mean += g
                gx_mean += g * (x[n, i] - m) * r
            g_mean *= inverse_d
            gx_mean *= inverse_d
            for i in range(d):
                xhat = (x[n, i] - m) * r
                dx[n, i] = r * (dy[n, i] * w[i] - g_mean - xhat * gx_mean)
                dw[i] += dy[n, i] * xhat
                db[i] += dy[n, i]


def layernorm_backward(dy, x, mean, rstd, w):
    d = x.shape[-1]
    rows = x.reshape(-1, d)
    dx = np.empty_like(rows)
    dw_parts, db_parts = (np.zeros((numba.get_num_threads(), d)) for _ in range(2))
    layernorm_backward_rows(dy.reshape(-1, d), rows, mean.reshape(-1), rstd.reshape(-1), w, dx, dw_parts, db_parts)
    return dx.reshape(x.shape), dw_parts.sum(axis=0).astype(x.dtype), db_parts.sum(axis=0).astype(x.dtype)


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def rmsnorm_rows(x, eps, y, rstd):
    N, d = x.shape
    zero, inverse_d = x.dtype.type(0.0), x.dtype.type(1.0 / d)
    for n in prange(N):
        squares = zero
        for i in range(d):
            squares += x[n, i] * x[n, i]
        r = x.dtype.type(1.0 / math.sqrt(squares * inverse_d + eps))
        for i in range(d):
            y[n, i] = x[n, i] * r
        rstd[n] = r


def rmsnorm_forward(x):
    rows = x.reshape(-1, x.shape[-1])
    y = np.empty_like(rows)
    rstd = np.empty(rows.shape[0], dtype=x.dtype)
    rmsnorm_rows(rows, x.dtype.type(np.finfo(x.dtype).eps), y, rstd)
    return y.reshape(x.shape), rstd.reshape(x.shape[:-1])


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def rmsnorm_backward_rows(dy, x, rstd, dx):
    N, d = x.shape
    zero, inverse_d = x.dtype.type(0.0), x.dtype.type(1.0 / d)
    for n in prange(N):
        r = rstd[n]
        dot = zero
        for i in range(d):
            dot += dy[n, i] * x[n, i]
        mean_dy_xhat = dot * r * inverse_d
        for i in range(d):
            dx[n, i] = r * (dy[n, i] - x[n, i] * r * mean_dy_xhat)


def rmsnorm_backward(dy, x, rstd):
    d = x.shape[-1]
    rows = x.reshape(-1, d)
    dx = np.empty_like(rows)
    rmsnorm_backward_rows(dy.reshape(-1, d), rows, rstd.reshape(-1), dx)
    return dx.reshape(x.shape)


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def relu2_rows(x, y):
    N, F = x.shape
    zero = x.dtype.type(0.0)
    for n in prange(N):
        for i in range(F):
            r = max(x[n, i], zero)
            y[n, i] = r * r


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def relu2_backward_rows(dy, x, dx):
    N, F = x.shape
    zero, two = x.dtype.type(0.0), x.dtype.type(2.0)
    for n in prange(N):
        for i in range(F):
            dx[n, i] = two * max(x[n, i], zero) * dy[n, i]


def relu2_forward(x):
    rows = x.reshape(-1, x.shape[-1])
    y = np.empty_like(rows)
    relu2_rows(rows, y)
    return y.reshape(x.shape)


def relu2_backward(dy, x):
    rows = x.reshape(-1, x.shape[-1])
    dx = np.empty_like(rows)
    relu2_backward_rows(dy.reshape(rows.shape), rows, dx)
    return dx.reshape(x.shape)


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def rotary_heads(x, cos, sin, y):
    """Every (batch, head) of x (B, H, T, hd), any strides, into y, one per thread at a time."""
    B, H, T, hd = x.shape
    half = hd // 2
    for bh in prange(B * H):
        b, h = bh // H, bh % H
        for t in range(T):
            for i in range(half):
                x1, x2, c, s = x[b, h, t, i], x[b, h, t, i + half], cos[t, i], sin[t, i]
                y[b, h, t, i] = x1 * c + x2 * s
                y[b, h, t, i + half] = x2 * c - x1 * s


def rotary_forward(x, cos, sin):
    """reference.rotary_forward, for x (B, H, T, hd)."""
    y = np.empty(x.shape, x.dtype)
    rotary_heads(x, cos, sin, y)
    return y


# GELU as x · σ(2u) = x / (1 + exp(-2u)), since ½ (1 + tanh u) = σ(2u): one exponential, and no
# 1 + tanh u to lose its digits where tanh u is near -1. The gradient, σ + 2x σ (1 - σ) du/dx,
# is the reference's ½ (1 + tanh u) + ½ x (1 - tanh² u) du/dx with 1 - tanh² u = 4σ (1 - σ).

@numba.njit(parallel=True, cache=True, fastmath=FAST)
def gelu_rows(x, y):
    N, F = x.shape
    one, minus_2scale, cubic = x.dtype.type(1.0), x.dtype.type(-2.0 * GELU_SCALE), x.dtype.type(GELU_CUBIC)
    for n in prange(N):
        for i in range(F):
            a = x[n, i]
            y[n, i] = a / (one + fast_exp(minus_2scale * (a + cubic * a * a * a)))


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def gelu_backward_rows(dy, x, dx):
    N, F = x.shape
    one, two, minus_2scale, cubic = x.dtype.type(1.0), x.dtype.type(2.0), x.dtype.type(-2.0 * GELU_SCALE), \
        x.dtype.type(GELU_CUBIC)
    du_0, du_2 = x.dtype.type(GELU_SCALE), x.dtype.type(3.0 * GELU_SCALE * GELU_CUBIC)
    for n in prange(N):
        for i in range(F):
            a = x[n, i]
            s = one / (one + fast_exp(minus_2scale * (a + cubic * a * a * a)))
            du = du_0 + du_2 * a * a
            dx[n, i] = dy[n, i] * (s + two * a * s * (one - s) * du)


def gelu_forward(x):
    rows = x.reshape(-1, x.shape[-1])
    y = np.empty_like(rows)
    gelu_rows(rows, y)
    return y.reshape(x.shape)


def gelu_backward(dy, x):
    rows = x.reshape(-1, x.shape[-1])
    dx = np.empty_like(rows)
    gelu_backward_rows(dy.reshape(rows.shape), rows, dx)
    return dx.reshape(x.shape)


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def softmax_xent_rows(logits, targets, losses, lse):
    N, V = logits.shape
    for n in prange(N):
        top = logits[n, 0]
        for j in range(1, V):
            top = max(top, logits[n, j])
        total = 0.0
        for j in range(V):
            total += fast_exp(logits[n, j] - top)
        lse[n] = top + math.log(total)
        losses[n] = lse[n] - logits[n, targets[n]]


@numba.njit(parallel=True, cache=True, fastmath=FAST)
def softmax_xent_backward_rows(dlosses, logits, lse, targets, dlogits):
    N, V = logits.shape
    for n in prange(N):
        for j in range(V):
            dlogits[n, j] = fast_exp(logits[n, j] - lse[n]) * dlosses[n]
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


def embedding_backward(dy, idx, scale, dw):
    scatter_add_rows(dw, idx.reshape(-1), dy.reshape(-1, dy.shape[-1]), scale)


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


if not blas.FOUND:  # no OpenBLAS to call from inside the kernels: NumPy's BLAS, on its own threads
    matmul, linear_backward = reference.matmul, reference.linear_backward
    attention_forward, attention_backward = reference.attention_forward, reference.attention_backward

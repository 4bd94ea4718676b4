"""The GPU backend's kernels, for CuPy arrays: attention and softmax cross-entropy are the CUDA
sources in engine/kernels/cuda/ (compiled by CuPy's NVRTC on first use), launched with the
geometry of engine/kernels/launch.py, and so are LayerNorm and GELU (one fused kernel each way
in place of reference.py's chains of CuPy calls); the embedding's scatter-add is cupyx's; AdamW
is one fused elementwise kernel.
Every function here mirrors the one of the same name in cpu.py."""
import functools
import math
import os

import cupy as cp
import cupyx
import numpy as np

from engine.kernels import launch, reference

CUDA_SOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda")
TYPE_NAMES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


@functools.cache
def cuda_module(source):
    """A .cu file compiled once, with every instantiation the backend uses."""
    with open(os.path.join(CUDA_SOURCES, source)) as f:
        return cp.RawModule(code=f.read(), options=launch.NVRTC_OPTIONS,
                            name_expressions=launch.NAME_EXPRESSIONS[source])


@functools.cache
def cuda_function(source, name):
    """A kernel (a template instantiation such as `attention_forward<float, 64>`) from a .cu file."""
    return cuda_module(source).get_function(name)


def attention_kernel(kind, q):
    """attention.cu's `kind` kernel for q's dtype and head size, launched over q's (B, H, T, hd) with
    launch.py's geometry for that kernel: call it with the kernel's arguments."""
    B, H, T, hd = q.shape
    if hd not in launch.ATTENTION_HEAD_SIZES:
        raise ValueError(f"the GPU attention kernels take head sizes {launch.ATTENTION_HEAD_SIZES}, not {hd}")
    kernel = cuda_function("attention.cu", f"attention_{kind}<{TYPE_NAMES[q.dtype]}, {hd}>")
    grid, block = launch.attention_geometry(kind, B * H, T, q.dtype.itemsize, hd)
    return lambda *args: kernel(grid, block, args)


def attention_forward(q, k, v):
    B, H, T, hd = q.shape
    q, k, v = (cp.ascontiguousarray(a) for a in (q, k, v))
    out, lse = cp.empty_like(q), cp.empty((B, H, T), dtype=q.dtype)
    attention_kernel("forward", q)(q, k, v, out, lse, np.int32(B * H), np.int32(T), q.dtype.type(1.0 / math.sqrt(hd)))
    return out, lse


def attention_backward(dout, q, k, v, out, lse):
    B, H, T, hd = q.shape
    dout, q, k, v, out, lse = (cp.ascontiguousarray(a) for a in (dout, q, k, v, out, lse))
    scale = q.dtype.type(1.0 / math.sqrt(hd))
    rows, seq = np.int32(B * H), np.int32(T)
    row_dot = cp.empty_like(lse)
    dq, dk, dv = cp.empty_like(q), cp.empty_like(k), cp.empty_like(v)
    attention_kernel("row_dot", q)(dout, out, row_dot, rows, seq)
    attention_kernel("backward_dq", q)(q, k, v, dout, lse, row_dot, dq, rows, seq, scale)
    attention_kernel("backward_dkdv", q)(q, k, v, dout, lse, row_dot, dk, dv, rows, seq, scale)
    return dq, dk, dv


def softmax_xent_forward(logits, targets):
    n, vocab = logits.shape
    logits, targets = cp.ascontiguousarray(logits), cp.ascontiguousarray(targets, dtype=cp.int64)
    losses, lse = cp.empty(n, logits.dtype), cp.empty(n, logits.dtype)
    grid, block = launch.softmax_xent_geometry(n, vocab)
    kernel = cuda_function("softmax_xent.cu", f"softmax_xent_forward<{TYPE_NAMES[logits.dtype]}>")
    kernel(grid, block, (logits, targets, losses, lse, np.int32(n), np.int32(vocab)))
    return losses, lse


def softmax_xent_backward(dlosses, logits, lse, targets):
    n, vocab = logits.shape
    logits, targets = cp.ascontiguousarray(logits), cp.ascontiguousarray(targets, dtype=cp.int64)
    dlogits = cp.empty_like(logits)
    grid, block = launch.softmax_xent_geometry(n, vocab)
    kernel = cuda_function("softmax_xent.cu", f"softmax_xent_backward<{TYPE_NAMES[logits.dtype]}>")
    kernel(grid, block, (logits, lse, targets, cp.ascontiguousarray(dlosses), dlogits, np.int32(n), np.int32(vocab)))
    return dlogits


matmul = reference.matmul
linear_backward = reference.linear_backward
# modded-nanogpt's pieces have no CUDA kernel yet: composed CuPy calls
rmsnorm_forward = reference.rmsnorm_forward
rmsnorm_backward = reference.rmsnorm_backward
relu2_forward = reference.relu2_forward
relu2_backward = reference.relu2_backward
rotary_forward = reference.rotary_forward


def typed_kernel(source, name, dtype):
    """The instantiation of a kernel templated on its float type alone, such as `gelu_forward<float>`."""
    return cuda_function(source, f"{name}<{TYPE_NAMES[np.dtype(dtype)]}>")


def layernorm_forward(x, w, b, eps=1e-5):
    d = x.shape[-1]
    rows = cp.ascontiguousarray(x).reshape(-1, d)
    n = rows.shape[0]
    y, mean, rstd = cp.empty_like(rows), cp.empty(n, x.dtype), cp.empty(n, x.dtype)
    grid, block = launch.layernorm_geometry(n)
    w, b = (cp.ascontiguousarray(a, dtype=x.dtype) for a in (w, b))
    typed_kernel("layernorm.cu", "layernorm_forward", x.dtype)(
        grid, block, (rows, w, b, y, mean, rstd, np.int32(n), np.int32(d), x.dtype.type(eps)))
    return y.reshape(x.shape), mean.reshape(x.shape[:-1]), rstd.reshape(x.shape[:-1])


def layernorm_backward(dy, x, mean, rstd, w):
    """dx from the kernel; dw and db as the sum of its per-block partial rows (layernorm.cu says why)."""
    d = x.shape[-1]
    rows = cp.ascontiguousarray(x).reshape(-1, d)
    n = rows.shape[0]
    dy, mean, rstd, w = (cp.ascontiguousarray(a, dtype=x.dtype) for a in (dy, mean, rstd, w))
    grid, block = launch.layernorm_geometry(n)
    dx, partials = cp.empty_like(rows), cp.empty((2, grid[0], d), x.dtype)
    typed_kernel("layernorm.cu", "layernorm_backward", x.dtype)(
        grid, block, (dy, rows, mean, rstd, w, dx, partials[0], partials[1], np.int32(n), np.int32(d)))
    dw, db = partials.sum(axis=1)
    return dx.reshape(x.shape), dw, db


def gelu_forward(x):
    x = cp.ascontiguousarray(x)
    y = cp.empty_like(x)
    grid, block = launch.gelu_geometry(x.size)
    typed_kernel("gelu.cu", "gelu_forward", x.dtype)(grid, block, (x, y, np.int64(x.size)))
    return y


def gelu_backward(dy, x):
    x = cp.ascontiguousarray(x)
    dx = cp.empty_like(x)
    grid, block = launch.gelu_geometry(x.size)
    typed_kernel("gelu.cu", "gelu_backward", x.dtype)(
        grid, block, (cp.ascontiguousarray(dy, dtype=x.dtype), x, dx, np.int64(x.size)))
    return dx


def embedding_backward(dy, idx, scale, dw):
    """reference.embedding_backward: atomic adds straight into the gradient, which at gpt2-small
    size spares a zero-filled (V, d) buffer (154 MB) and a pass adding it in."""
    cupyx.scatter_add(dw, idx.reshape(-1), scale * dy.reshape(-1, dy.shape[-1]))


_sum_of_squares = cp.ReductionKernel("T x", "float64 total", "(double)x * (double)x", "a + b", "total = a", "0",
                                      "nano2_sum_of_squares")


def sum_of_squares(x):
    """reference.sum_of_squares, reduced on the device in float64 without a float64 copy; a 0-d
    device array, so the caller decides when to wait for it."""
    return _sum_of_squares(x)


_adamw = cp.ElementwiseKernel(
    "T grad, uint8 decay, float64 lr, float64 beta1, float64 beta2, float64 eps, float64 weight_decay, "
    "float64 bias1, float64 bias2_sqrt",
    "T param, T m, T v",
    """
    m = beta1 * m + (1.0 - beta1) * grad;
    v = beta2 * v + (1.0 - beta2) * grad * grad;
    T p = decay ? (T)(param * (1.0 - lr * weight_decay)) : param;
    param = p - (lr / bias1) * m / (sqrt((double)v) / bias2_sqrt + eps);
    """,
    "nano2_adamw")


def adamw_step(param, grad, m, v, decay, lr, beta1, beta2, eps, weight_decay, step):
    """reference.adamw_step in one fused pass over the four flat buffers."""
    _adamw(grad, decay, lr, beta1, beta2, eps, weight_decay, 1.0 - beta1 ** step,
           math.sqrt(1.0 - beta2 ** step), param, m, v)

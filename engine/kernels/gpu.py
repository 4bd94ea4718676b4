"""The GPU backend's kernels, for CuPy arrays: attention and softmax cross-entropy are the CUDA
sources in engine/kernels/cuda/ (compiled by CuPy's NVRTC on first use), launched with the
geometry of engine/kernels/launch.py; LayerNorm and GELU are reference.py's composed CuPy calls;
the embedding's scatter-add is cupyx's; AdamW is one fused elementwise kernel.
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


def attention_kernel(kind, dtype, head_size):
    if head_size not in launch.ATTENTION_HEAD_SIZES:
        raise ValueError(f"the GPU attention kernels take head sizes {launch.ATTENTION_HEAD_SIZES}, not {head_size}")
    return cuda_function("attention.cu", f"attention_{kind}<{TYPE_NAMES[np.dtype(dtype)]}, {head_size}>")


def attention_forward(q, k, v):
    B, H, T, hd = q.shape
    q, k, v = (cp.ascontiguousarray(a) for a in (q, k, v))
    out, lse = cp.empty_like(q), cp.empty((B, H, T), dtype=q.dtype)
    grid, block = launch.attention_geometry(B * H, T)
    attention_kernel("forward", q.dtype, hd)(grid, block, (q, k, v, out, lse, np.int32(B * H), np.int32(T),
                                                           q.dtype.type(1.0 / math.sqrt(hd))))
    return out, lse


def attention_backward(dout, q, k, v, out, lse):
    B, H, T, hd = q.shape
    dout, q, k, v, out, lse = (cp.ascontiguousarray(a) for a in (dout, q, k, v, out, lse))
    scale = q.dtype.type(1.0 / math.sqrt(hd))
    grid, block = launch.attention_geometry(B * H, T)
    rows, seq = np.int32(B * H), np.int32(T)
    row_dot = cp.empty_like(lse)
    dq, dk, dv = cp.empty_like(q), cp.empty_like(k), cp.empty_like(v)
    attention_kernel("row_dot", q.dtype, hd)(grid, block, (dout, out, row_dot, rows, seq))
    attention_kernel("backward_dq", q.dtype, hd)(grid, block, (q, k, v, dout, lse, row_dot, dq, rows, seq, scale))
    attention_kernel("backward_dkdv", q.dtype, hd)(grid, block,
                                                   (q, k, v, dout, lse, row_dot, dk, dv, rows, seq, scale))
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
layernorm_forward = reference.layernorm_forward
layernorm_backward = reference.layernorm_backward
gelu_forward = reference.gelu_forward
gelu_backward = reference.gelu_backward


def embedding_backward(dy, idx, vocab_size, scale):
    dw = cp.zeros((vocab_size, dy.shape[-1]), dtype=dy.dtype)
    cupyx.scatter_add(dw, idx.reshape(-1), scale * dy.reshape(-1, dy.shape[-1]))
    return dw


_sum_of_squares = cp.ReductionKernel("T x", "float64 total", "(double)x * (double)x", "a + b", "total = a", "0",
                                      "nano2_sum_of_squares")


def sum_of_squares(x):
    """reference.sum_of_squares, reduced on the device in float64 without a float64 copy."""
    return float(_sum_of_squares(x))


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

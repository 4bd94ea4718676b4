"""The fused hot ops the layers and the optimizer call, dispatched by array type: NumPy arrays
go to the Numba/BLAS versions in `cpu.py`, CuPy arrays to `gpu.py` (CUDA kernels). Each has
its spec in `reference.py`, which both are tested against."""
import numpy as np

from engine.kernels import cpu


def backend(x):
    if isinstance(x, np.ndarray):
        return cpu
    from engine.kernels import gpu  # imports CuPy: only when a CuPy array arrives
    return gpu


def matmul(a, b, bias=None):
    return backend(a).matmul(a, b, bias)


def linear_backward(dy, x, w):
    return backend(dy).linear_backward(dy, x, w)


def attention_forward(q, k, v):
    return backend(q).attention_forward(q, k, v)


def attention_backward(dout, q, k, v, out, lse):
    return backend(q).attention_backward(dout, q, k, v, out, lse)


def softmax_xent_forward(logits, targets):
    return backend(logits).softmax_xent_forward(logits, targets)


def softmax_xent_backward(dlosses, logits, lse, targets):
    return backend(logits).softmax_xent_backward(dlosses, logits, lse, targets)


def layernorm_forward(x, w, b, eps=1e-5):
    return backend(x).layernorm_forward(x, w, b, eps)


def layernorm_backward(dy, x, mean, rstd, w):
    return backend(x).layernorm_backward(dy, x, mean, rstd, w)


def gelu_forward(x):
    return backend(x).gelu_forward(x)


def gelu_backward(dy, x):
    return backend(x).gelu_backward(dy, x)


def embedding_backward(dy, idx, vocab_size, scale):
    return backend(dy).embedding_backward(dy, idx, vocab_size, scale)


def sum_of_squares(x):
    return float(backend(x).sum_of_squares(x))


def adamw_step(param, grad, m, v, decay, lr, beta1, beta2, eps, weight_decay, step):
    backend(param).adamw_step(param, grad, m, v, decay, lr, beta1, beta2, eps, weight_decay, step)

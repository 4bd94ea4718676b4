"""The readable spec of nano2's fused kernels, in plain NumPy (any float dtype, float64 included).

Every faster implementation (Numba on the CPU, CUDA RawKernels on the GPU) is tested against
these functions; they favour clarity over speed and materialise everything they need.
LayerNorm and GELU take their array module from the data, so the GPU backend runs them as
composed CuPy calls.
"""
import math

import numpy as np

from engine.backend import array_module


def matmul(a, b, bias=None):
    """a @ b for 2-D a and b, plus bias on every row when given (a linear layer's forward)."""
    y = a @ b
    if bias is not None:
        y += bias  # in place: the GPU runs this, and a second output would cost a pass and an array
    return y


def linear_backward(dy, x, w):
    """For y = x W + b over rows: dx = dy Wᵀ, dW = xᵀ dy, db = Σ_n dy[n]."""
    return dy @ w.T, x.T @ dy, dy.sum(axis=0)


def causal_scores(q, k, start=0):
    """q kᵀ / √hd with every future position (key after query) set to -inf; the queries are
    positions start.. (a KV-cached step), the keys positions 0.."""
    xp = array_module(q)
    scores = (q @ xp.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    future = xp.arange(k.shape[-2])[None, :] > start + xp.arange(q.shape[-2])[:, None]
    return xp.where(future, -xp.inf, scores)


def attention_forward(q, k, v):
    """Causal softmax(q kᵀ / √hd) v for q, k, v of shape (B, H, T, hd).

    Returns the output (B, H, T, hd) and each row's log-sum-exp (B, H, T) of the scaled,
    masked scores, which is all backward needs to rebuild the probabilities.
    """
    scores = causal_scores(q, k)
    row_max = scores.max(axis=-1, keepdims=True)
    lse = row_max + np.log(np.exp(scores - row_max).sum(axis=-1, keepdims=True))
    probs = np.exp(scores - lse)
    return probs @ v, lse[..., 0]


def attention_backward(dout, q, k, v, out, lse):
    """Gradients (dq, dk, dv) of causal attention, recomputing P = exp(S - lse).

    With S = q kᵀ/√hd, P = softmax(S), O = P v:
      dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP - D) with D = rowsum(dO ∘ O) = rowsum(P ∘ dP),
      dQ = dS K / √hd,  dK = dSᵀ Q / √hd.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    probs = np.exp(causal_scores(q, k) - lse[..., None])
    dv = np.swapaxes(probs, -1, -2) @ dout
    dprobs = dout @ np.swapaxes(v, -1, -2)
    row_dot = (dout * out).sum(axis=-1, keepdims=True)
    dscores = probs * (dprobs - row_dot)
    dq = (dscores @ k) * scale
    dk = (np.swapaxes(dscores, -1, -2) @ q) * scale
    return dq, dk, dv


def layernorm_forward(x, w, b, eps=1e-5):
    """y = (x - mean) · rstd · w + b over the last axis, rstd = 1/√(var + eps).
    Returns y and each row's mean and rstd, from which backward rebuilds x̂."""
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    rstd = 1.0 / array_module(x).sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)
    return centered * rstd * w + b, mean[..., 0], rstd[..., 0]


def layernorm_backward(dy, x, mean, rstd, w):
    """dx = rstd · (g - mean(g) - x̂ · mean(g · x̂)) with g = dy · w;  dw = Σ dy · x̂;  db = Σ dy."""
    xhat = (x - mean[..., None]) * rstd[..., None]
    g = dy * w
    dx = rstd[..., None] * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    d = x.shape[-1]
    return dx, (dy * xhat).reshape(-1, d).sum(axis=0), dy.reshape(-1, d).sum(axis=0)


def rmsnorm_forward(x):
    """y = x · rstd over the last axis, no parameters, rstd = 1/√(mean(x²) + eps) with eps the
    dtype's machine epsilon (torch's F.rms_norm default). Returns y and each row's rstd."""
    rstd = 1.0 / array_module(x).sqrt((x * x).mean(axis=-1, keepdims=True) + np.finfo(x.dtype).eps)
    return x * rstd, rstd[..., 0]


def rmsnorm_backward(dy, x, rstd):
    """dx = rstd · (dy - x̂ · mean(dy · x̂)), x̂ = x · rstd."""
    xhat = x * rstd[..., None]
    return rstd[..., None] * (dy - xhat * (dy * xhat).mean(axis=-1, keepdims=True))


def relu2_forward(x):
    """max(x, 0)²."""
    r = array_module(x).maximum(x, 0)
    return r * r


def relu2_backward(dy, x):
    """dy · 2 max(x, 0)."""
    return 2 * array_module(x).maximum(x, 0) * dy


def rotary_forward(x, cos, sin):
    """x (..., T, hd) with each pair (i, i + hd/2) turned by its position's angle, whose cos and
    sin are (T, hd/2): y1 = x1 cos + x2 sin, y2 = x2 cos - x1 sin. The backward is this with sin
    negated (the turn back)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return array_module(x).concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)


GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


def gelu_forward(x):
    """GPT-2's tanh approximation: ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))."""
    return 0.5 * x * (1.0 + array_module(x).tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x)))


def gelu_backward(dy, x):
    """dy · (½ (1 + tanh u) + ½ x (1 - tanh² u) √(2/π) (1 + 3 · 0.044715 x²)), recomputing tanh u."""
    tanh_u = array_module(x).tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x))
    du_dx = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x)
    return dy * (0.5 * (1.0 + tanh_u) + 0.5 * x * (1.0 - tanh_u * tanh_u) * du_dx)


def embedding_backward(dy, idx, scale, dw):
    """d E for y = scale · E[idx], added into the gradient dw (V, d) in place: each row of dy,
    scaled, into its token's row (a token seen twice receives both)."""
    np.add.at(dw, idx.reshape(-1), scale * dy.reshape(-1, dy.shape[-1]))


def softmax_xent_forward(logits, targets):
    """Per-row cross-entropy of softmax(logits) (N, V) against integer targets (N,).

    Returns the losses (N,) and each row's log-sum-exp (N,), from which backward rebuilds
    the probabilities without a stored (N, V) softmax.
    """
    row_max = logits.max(axis=-1, keepdims=True)
    lse = (row_max + np.log(np.exp(logits - row_max).sum(axis=-1, keepdims=True)))[:, 0]
    losses = lse - logits[np.arange(len(targets)), targets]
    return losses, lse


def softmax_xent_backward(dlosses, logits, lse, targets):
    """d logits = (softmax(logits) - onehot(targets)) * dloss, row by row."""
    dlogits = np.exp(logits - lse[:, None])
    dlogits[np.arange(len(targets)), targets] -= 1.0
    return dlogits * dlosses[:, None]


def sum_of_squares(x):
    """Σ x², accumulated in float64: the square of the global gradient norm."""
    x = x.astype(np.float64)
    return float(np.dot(x, x))


def adamw_step(param, grad, m, v, decay, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW update in place (Loshchilov & Hutter; PyTorch's order of operations).

    Weight decay is decoupled: it shrinks the parameter itself, only where `decay` is set,
    before the Adam step  p -= lr · m̂ / (√v̂ + eps)  with bias-corrected moments.
    """
    m *= beta1
    m += (1 - beta1) * grad
    v *= beta2
    v += (1 - beta2) * grad * grad
    param *= np.where(decay, 1 - lr * weight_decay, 1.0).astype(param.dtype)
    denom = np.sqrt(v) / math.sqrt(1 - beta2 ** step) + eps
    param -= (lr / (1 - beta1 ** step)) * m / denom

"""The readable spec of nano2's fused kernels, in plain NumPy (any float dtype, float64 included).

Every faster implementation (Numba on the CPU, CUDA RawKernels on the GPU) is tested against
these functions; they favour clarity over speed and materialise everything they need.
"""
import math

import numpy as np


def causal_scores(q, k):
    """q kᵀ / √hd with every future position (key after query) set to -inf."""
    T = q.shape[-2]
    scores = (q @ np.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    return np.where(future, -np.inf, scores)


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

"""Causal multi-head self-attention: qkv = x W_qkv + b_qkv; per head softmax(q kᵀ/√hd) v
over past and present positions only; heads concatenated, then x W_proj + b_proj.

Derivation: splitting qkv into heads and merging them back are reshapes, so their backward is
the inverse reshape; the per-head gradients dq, dk, dv come from the fused kernel (its
derivation is in engine/kernels/reference.py) and the two linears are layers/linear.py's.
"""
from engine import kernels
from engine.backend import array_module
from engine.kernels import reference
from layers.linear import Linear


def split_heads(x, n_head):
    """(B, T, d) -> (B, n_head, T, d / n_head), a view: head h is columns h*hd:(h+1)*hd."""
    B, T, d = x.shape
    return x.reshape(B, T, n_head, d // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, n_head, T, hd) -> (B, T, n_head * hd), the inverse of split_heads."""
    B, H, T, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * hd)


def causal_attention_forward(qkv, n_head):
    d = qkv.shape[-1] // 3
    q, k, v = (split_heads(qkv[..., i * d:(i + 1) * d], n_head) for i in range(3))
    out, lse = kernels.of(q).attention_forward(q, k, v)
    return merge_heads(out), (q, k, v, out, lse)


def causal_attention_backward(dy, cache):
    q, k, v, out, lse = cache
    xp = array_module(dy)
    dout = split_heads(dy, q.shape[1])
    dq, dk, dv = kernels.of(dout).attention_backward(dout, q, k, v, out, lse)
    return xp.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)


def cached_attention_forward(qkv, n_head, kv_cache, start):
    """Inference only: attention for the new positions start.. of qkv, over the keys and values
    of every earlier position kept in kv_cache (arrays of shape (B, H, seq_len, hd)), which
    the new positions' keys and values are written into. The masked scores are the
    reference's, so the result equals a full recomputation."""
    xp = array_module(qkv)
    d = qkv.shape[-1] // 3
    q, k, v = (split_heads(qkv[..., i * d:(i + 1) * d], n_head) for i in range(3))
    end = start + q.shape[2]
    kv_cache["k"][:, :, start:end] = k
    kv_cache["v"][:, :, start:end] = v
    scores = reference.causal_scores(q, kv_cache["k"][:, :, :end], start)
    probs = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return merge_heads(probs @ kv_cache["v"][:, :, :end])


class CausalSelfAttention:
    kind = "attention core"  # the linears have rows of their own

    def __init__(self, store, name, n_head):
        self.name = name
        self.n_head = n_head
        self.qkv = Linear(store, f"{name}.qkv", "linear qkv")
        self.proj = Linear(store, f"{name}.proj", "linear attn.proj")
        self.children = (self.qkv, self.proj)

    def forward(self, x):
        y, self.cache = causal_attention_forward(self.qkv.forward(x), self.n_head)
        return self.proj.forward(y)

    def forward_cached(self, x, kv_cache, start):
        return self.proj.forward(cached_attention_forward(self.qkv.forward(x), self.n_head, kv_cache, start))

    def backward(self, dy):
        dqkv = causal_attention_backward(self.proj.backward(dy), self.cache)
        return self.qkv.backward(dqkv)

"""Causal multi-head self-attention: qkv = x W_qkv + b_qkv; per head softmax(q kᵀ/√hd) v
over past and present positions only; heads concatenated, then x W_proj + b_proj.

Derivation: splitting qkv into heads and merging them back are reshapes, so their backward is
the inverse reshape; the per-head gradients dq, dk, dv come from the fused kernel (its
derivation is in engine/kernels/reference.py) and the two linears are layers/linear.py's.
With qk_norm (modded-nanogpt's record 5) each head's q and k are RMS-normalised first, and with
rotary positions then turned by their position, so dq and dk pass back through
layers/rotary.py's backward, then layers/rmsnorm.py's.
"""
from engine import kernels
from engine.backend import array_module
from engine.kernels import reference
from layers.linear import Linear
from layers.rmsnorm import rmsnorm_backward, rmsnorm_forward
from layers.rotary import rotary_backward, rotary_forward


def split_heads(x, n_head):
    """(B, T, d) -> (B, n_head, T, d / n_head), a view: head h is columns h*hd:(h+1)*hd."""
    B, T, d = x.shape
    return x.reshape(B, T, n_head, d // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, n_head, T, hd) -> (B, T, n_head * hd), the inverse of split_heads."""
    B, H, T, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * hd)


def heads_of(qkv, n_head, qk_norm, rotary=None, start=0):
    """Each head's q, k and v: q and k RMS-normalised under qk_norm, then turned by positions
    start.. where `rotary` (a RotaryPositions) is given; and the norms' caches (or None)."""
    d = qkv.shape[-1] // 3
    q, k, v = (split_heads(qkv[..., i * d:(i + 1) * d], n_head) for i in range(3))
    norms = None
    if qk_norm:
        (q, q_cache), (k, k_cache) = rmsnorm_forward(q), rmsnorm_forward(k)
        norms = (q_cache, k_cache)
    if rotary is not None:
        q, k = (rotary_forward(t, rotary.cos, rotary.sin, start) for t in (q, k))
    return q, k, v, norms


def causal_attention_forward(qkv, n_head, qk_norm=False, rotary=None):
    q, k, v, norms = heads_of(qkv, n_head, qk_norm, rotary)
    out, lse = kernels.of(q).attention_forward(q, k, v)
    return merge_heads(out), (q, k, v, out, lse, norms, rotary)


def causal_attention_backward(dy, cache):
    q, k, v, out, lse, norms, rotary = cache
    xp = array_module(dy)
    dout = split_heads(dy, q.shape[1])
    dq, dk, dv = kernels.of(dout).attention_backward(dout, q, k, v, out, lse)
    if rotary is not None:
        dq, dk = (rotary_backward(t, rotary.cos, rotary.sin) for t in (dq, dk))
    if norms is not None:
        dq, dk = rmsnorm_backward(dq, norms[0]), rmsnorm_backward(dk, norms[1])
    return xp.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)


def cached_attention_forward(qkv, n_head, kv_cache, start, qk_norm=False, rotary=None):
    """Inference only: attention for the new positions start.. of qkv, over the keys and values
    of every earlier position kept in kv_cache (arrays of shape (B, H, seq_len, hd)), which
    the new positions' keys and values are written into. The masked scores are the
    reference's, so the result equals a full recomputation."""
    xp = array_module(qkv)
    q, k, v, _ = heads_of(qkv, n_head, qk_norm, rotary, start)
    end = start + q.shape[2]
    kv_cache["k"][:, :, start:end] = k
    kv_cache["v"][:, :, start:end] = v
    scores = reference.causal_scores(q, kv_cache["k"][:, :, :end], start)
    probs = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return merge_heads(probs @ kv_cache["v"][:, :, :end])


class CausalSelfAttention:
    kind = "attention core"  # the linears have rows of their own

    def __init__(self, store, name, n_head, qk_norm=False, rotary=None):
        self.name = name
        self.n_head = n_head
        self.qk_norm, self.rotary = qk_norm, rotary
        self.qkv = Linear(store, f"{name}.qkv", "linear qkv")
        self.proj = Linear(store, f"{name}.proj", "linear attn.proj")
        self.children = (self.qkv, self.proj)

    def forward(self, x):
        y, self.cache = causal_attention_forward(self.qkv.forward(x), self.n_head, self.qk_norm, self.rotary)
        return self.proj.forward(y)

    def forward_cached(self, x, kv_cache, start):
        return self.proj.forward(cached_attention_forward(self.qkv.forward(x), self.n_head, kv_cache, start,
                                                          self.qk_norm, self.rotary))

    def backward(self, dy):
        dqkv = causal_attention_backward(self.proj.backward(dy), self.cache)
        return self.qkv.backward(dqkv)

"""The pre-LN transformer block: x1 = x + Attn(LN1(x)); y = x1 + FFN(LN2(x1)), LN a LayerNorm or
an RMSNorm.

Derivation: a residual sum passes its gradient unchanged down both paths, so
  dx1 = dy + LN2ᵀ(FFNᵀ(dy)),  dx = dx1 + LN1ᵀ(Attnᵀ(dx1)),
where Fᵀ(g) is layer F's backward applied to g.
"""
from layers.attention import CausalSelfAttention
from layers.ffn import FFN
from layers.layernorm import LayerNorm
from layers.rmsnorm import RMSNorm


NORMS = ("layernorm", "rmsnorm")


def make_norm(store, name, norm):
    """The block's and the model's normalisation: LayerNorm (its weight and bias) or RMSNorm (none)."""
    return LayerNorm(store, name) if norm == "layernorm" else RMSNorm(name)


class Block:
    def __init__(self, store, name, config, rotary=None):
        """A block of the model `config` (a ModelConfig) describes; `rotary`, its RotaryPositions."""
        self.name = name
        self.ln1 = make_norm(store, f"{name}.ln1", config.norm)
        self.attn = CausalSelfAttention(store, f"{name}.attn", config.n_head, config.qk_norm, rotary)
        self.ln2 = make_norm(store, f"{name}.ln2", config.norm)
        self.ffn = FFN(store, f"{name}.ffn", config.activation)
        self.children = (self.ln1, self.attn, self.ln2, self.ffn)

    def forward(self, x):
        x = x + self.attn.forward(self.ln1.forward(x))
        return x + self.ffn.forward(self.ln2.forward(x))

    def forward_cached(self, x, kv_cache, start):
        x = x + self.attn.forward_cached(self.ln1.forward(x), kv_cache, start)
        return x + self.ffn.forward(self.ln2.forward(x))

    def backward(self, dy):
        dx1 = dy + self.ln2.backward(self.ffn.backward(dy))
        return dx1 + self.ln1.backward(self.attn.backward(dx1))

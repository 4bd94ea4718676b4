"""The token embedding, scaled by √d (x = √d · E[idx]; by 1 in GPT-2), and its tied use as the output head
(logits = h Eᵀ). One matrix E (V, d), two uses, so E's gradient is the sum of both.

Derivation: the lookup copies row idx[n] of E, so dE[v] = √d · Σ_{n: idx[n] = v} dy[n]
(a scatter-add: a token seen twice gets both gradients). The head is a linear map with Eᵀ:
dh = dlogits E and dE = dlogitsᵀ h (rows flattened).
"""
import math

from engine import kernels


def embedding_forward(idx, w, scale):
    return scale * w[idx], (idx, scale)


def embedding_backward(dy, cache, dw):
    """Adds E's gradient from the lookup into dw, the gradient buffer itself."""
    idx, scale = cache
    kernels.of(dy).embedding_backward(dy, idx, scale, dw)


def tied_head_forward(h, w):
    rows = h.reshape(-1, h.shape[-1])
    return kernels.of(h).matmul(rows, w.T).reshape(*h.shape[:-1], w.shape[0]), (rows, w)


def tied_head_backward(dlogits, cache):
    rows, w = cache
    dlogits_rows = dlogits.reshape(-1, w.shape[0])
    ops = kernels.of(dlogits)
    dh = ops.matmul(dlogits_rows, w)
    dw = ops.matmul(dlogits_rows.T, rows)
    return dh.reshape(*dlogits.shape[:-1], w.shape[1]), dw


class TokenEmbedding:
    kind = "embedding"

    def __init__(self, store, name, scaled=True):
        self.name = name
        self.weight = store.params[f"{name}.weight"]
        self.weight_grad = store.grads[f"{name}.weight"]
        self.parameter_names = (f"{name}.weight",)
        # "Attention Is All You Need" §3.4: without √d the N(0, 0.02) rows sit far under the
        # unit-size sinusoids added next (DESIGN.md measures what that costs); GPT-2, whose
        # learned positions start as small as the rows, scales by 1.
        self.scale = math.sqrt(self.weight.shape[1]) if scaled else 1.0

    def forward(self, idx):
        y, self.cache = embedding_forward(idx, self.weight, self.scale)
        return y

    def backward(self, dy):
        embedding_backward(dy, self.cache, self.weight_grad)


class TiedHead:
    """The output head, sharing TokenEmbedding's unscaled matrix and its gradient buffer."""
    kind = "head (tied)"

    def __init__(self, embedding, name="head"):
        self.name = name
        self.weight = embedding.weight
        self.weight_grad = embedding.weight_grad
        self.parameter_names = embedding.parameter_names

    def forward(self, h):
        logits, self.cache = tied_head_forward(h, self.weight)
        return logits

    def backward(self, dlogits):
        dh, dw = tied_head_backward(dlogits, self.cache)
        self.weight_grad += dw
        return dh


class UntiedHead(TiedHead):
    """An output head of its own (tie_head=false, modded-nanogpt's lm_head): logits = h Wᵀ with
    W = head.weight (V, d), the same math as the tied head's over another matrix."""
    kind = "head (untied)"

    def __init__(self, store, name="head"):
        self.name = name
        self.weight = store.params[f"{name}.weight"]
        self.weight_grad = store.grads[f"{name}.weight"]
        self.parameter_names = (f"{name}.weight",)

"""Mean softmax cross-entropy over every position: loss = (1/N) Σ_n (lse(z_n) - z_n[t_n]).

Derivation: d lse(z)/dz = softmax(z), so d loss/dz_n = (softmax(z_n) - onehot(t_n)) / N.
The fused kernel does both per row from the logits and the row's lse (its spec:
reference.softmax_xent_forward and softmax_xent_backward).
"""
from engine import kernels
from engine.backend import array_module


def cross_entropy_forward(logits, targets):
    rows = logits.reshape(-1, logits.shape[-1])
    losses, lse = kernels.of(logits).softmax_xent_forward(rows, targets.ravel())
    return losses.mean(), (logits, lse, targets)


def cross_entropy_backward(dloss, cache):
    logits, lse, targets = cache
    xp = array_module(logits)
    rows = logits.reshape(-1, logits.shape[-1])
    dlosses = xp.full(rows.shape[0], dloss / rows.shape[0], dtype=logits.dtype)
    return kernels.of(dlosses).softmax_xent_backward(dlosses, rows, lse, targets.ravel()).reshape(logits.shape)


class CrossEntropy:
    kind = "cross-entropy"

    def __init__(self, name="xent"):
        self.name = name

    def forward(self, logits, targets):
        loss, self.cache = cross_entropy_forward(logits, targets)
        return loss

    def backward(self, dloss=1.0):
        return cross_entropy_backward(dloss, self.cache)

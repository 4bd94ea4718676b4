"""LayerNorm over the last axis: y = x̂ w + b, x̂ = (x - mean) · rstd, rstd = 1/√(var + eps).

Derivation: with g = dy·w, the mean and variance are functions of x too, and give
  dx = rstd · (g - mean(g) - x̂ · mean(g · x̂)),  dw = Σ dy · x̂,  db = Σ dy
(sums over every row, means over the normalised axis). The fused kernels, one pass over the
rows each way, have their spec in reference.layernorm_forward and layernorm_backward.
"""
from engine import kernels

EPS = 1e-5


def layernorm_forward(x, w, b, eps=EPS):
    y, mean, rstd = kernels.of(x).layernorm_forward(x, w, b, eps)
    return y, (x, mean, rstd, w)


def layernorm_backward(dy, cache):
    return kernels.of(dy).layernorm_backward(dy, *cache)


class LayerNorm:
    kind = "layernorm"

    def __init__(self, store, name):
        self.name = name
        self.weight = store.params[f"{name}.weight"]
        self.bias = store.params[f"{name}.bias"]
        self.weight_grad = store.grads[f"{name}.weight"]
        self.bias_grad = store.grads[f"{name}.bias"]
        self.parameter_names = (f"{name}.weight", f"{name}.bias")

    def forward(self, x):
        y, self.cache = layernorm_forward(x, self.weight, self.bias)
        return y

    def backward(self, dy):
        dx, dw, db = layernorm_backward(dy, self.cache)
        self.weight_grad += dw
        self.bias_grad += db
        return dx

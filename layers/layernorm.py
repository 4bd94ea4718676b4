"""LayerNorm over the last axis: y = x̂ w + b, x̂ = (x - mean) · rstd, rstd = 1/√(var + eps).

Derivation: with g = dy·w, the mean and variance are functions of x too, and give
  dx = rstd · (g - mean(g) - x̂ · mean(g · x̂)),  dw = Σ dy · x̂,  db = Σ dy
(sums over every row, means over the normalised axis).
"""
from engine.backend import array_module

EPS = 1e-5


def layernorm_forward(x, w, b, eps=EPS):
    xp = array_module(x)
    centered = x - x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / xp.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)
    xhat = centered * rstd
    return xhat * w + b, (xhat, rstd, w)


def layernorm_backward(dy, cache):
    xhat, rstd, w = cache
    g = dy * w
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dw = (dy * xhat).reshape(-1, w.shape[0]).sum(axis=0)
    db = dy.reshape(-1, w.shape[0]).sum(axis=0)
    return dx, dw, db


class LayerNorm:
    def __init__(self, store, name):
        self.name = name
        self.weight = store.params[f"{name}.weight"]
        self.bias = store.params[f"{name}.bias"]
        self.weight_grad = store.grads[f"{name}.weight"]
        self.bias_grad = store.grads[f"{name}.bias"]

    def forward(self, x):
        y, self.cache = layernorm_forward(x, self.weight, self.bias)
        return y

    def backward(self, dy):
        dx, dw, db = layernorm_backward(dy, self.cache)
        self.weight_grad += dw
        self.bias_grad += db
        return dx

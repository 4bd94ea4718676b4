"""Linear: y = x W + b, with W stored (in, out), or y = x W in a model without biases.

Derivation: each y[n, j] = Σ_i x[n, i] W[i, j] + b[j], so
  dx = dy Wᵀ,  dW = Σ_n x[n]ᵀ dy[n] = xᵀ dy (rows flattened),  db = Σ_n dy[n].
The products run on the rows flattened to 2-D (one product, not one per sequence); the
kernels are reference.matmul and reference.linear_backward.
"""
from engine import kernels


def linear_forward(x, w, b):
    rows = x.reshape(-1, x.shape[-1])
    y = kernels.of(x).matmul(rows, w, b)
    return y.reshape(*x.shape[:-1], w.shape[1]), (rows, w)


def linear_backward(dy, cache):
    rows, w = cache
    dx, dw, db = kernels.of(dy).linear_backward(dy.reshape(-1, w.shape[1]), rows, w)
    return dx.reshape(*dy.shape[:-1], w.shape[0]), dw, db


class Linear:
    def __init__(self, store, name, kind):
        self.name = name
        self.kind = kind  # named by the layer that owns it: "linear qkv"
        self.weight = store.params[f"{name}.weight"]
        self.weight_grad = store.grads[f"{name}.weight"]
        # None in a model without biases (bias=false): then y = x W, and there is no db to keep
        self.bias = store.params.get(f"{name}.bias")
        self.bias_grad = store.grads.get(f"{name}.bias")
        self.parameter_names = (f"{name}.weight",) + ((f"{name}.bias",) if self.bias is not None else ())

    def forward(self, x):
        y, self.cache = linear_forward(x, self.weight, self.bias)
        return y

    def backward(self, dy):
        dx, dw, db = linear_backward(dy, self.cache)
        self.weight_grad += dw
        if self.bias is not None:
            self.bias_grad += db
        return dx

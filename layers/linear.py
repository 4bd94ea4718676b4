"""Linear: y = x W + b, with W stored (in, out).

Derivation: each y[n, j] = Σ_i x[n, i] W[i, j] + b[j], so
  dx = dy Wᵀ,  dW = Σ_n x[n]ᵀ dy[n] = xᵀ dy (rows flattened),  db = Σ_n dy[n].
"""


def linear_forward(x, w, b):
    y = x @ w
    y += b  # in place: one pass over y instead of allocating a second output
    return y, (x, w)


def linear_backward(dy, cache):
    x, w = cache
    dy_rows = dy.reshape(-1, dy.shape[-1])
    dx = dy @ w.T
    dw = x.reshape(-1, x.shape[-1]).T @ dy_rows
    db = dy_rows.sum(axis=0)
    return dx, dw, db


class Linear:
    def __init__(self, store, name):
        self.name = name
        self.weight = store.params[f"{name}.weight"]
        self.bias = store.params[f"{name}.bias"]
        self.weight_grad = store.grads[f"{name}.weight"]
        self.bias_grad = store.grads[f"{name}.bias"]

    def forward(self, x):
        y, self.cache = linear_forward(x, self.weight, self.bias)
        return y

    def backward(self, dy):
        dx, dw, db = linear_backward(dy, self.cache)
        self.weight_grad += dw
        self.bias_grad += db
        return dx

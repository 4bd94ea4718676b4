"""Positions added to the embedding: y = x + P[start:start + T], P either sinusoidal,
P[p, 2i] = sin(p / 10000^(2i/d)), P[p, 2i+1] = cos(p / 10000^(2i/d)), fixed, or learned (GPT-2's
wpe: a parameter `pos_emb.weight` of seq_len rows).

Derivation: y[b, t] = x[b, t] + P[t], so dx = dy, and for learned positions
dP[t] = Σ_b dy[b, t] (every sequence of the batch sees the same row t).
"""
import numpy as np


def sinusoidal_table(n_positions, d):
    """The (n_positions, d) table in float64, computed once on the host."""
    position = np.arange(n_positions, dtype=np.float64)[:, None]
    frequency = 10000.0 ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    table = np.zeros((n_positions, d))
    table[:, 0::2] = np.sin(position * frequency)
    table[:, 1::2] = np.cos(position * frequency)[:, :d // 2]
    return table


def positions_forward(x, table, start=0):
    return x + table[start:start + x.shape[1]]


def positions_backward(dy):
    return dy


def learned_positions_backward(dy, dw):
    """Adds dP = Σ_b dy[b] into the first T rows of the gradient dw; returns dx = dy."""
    dw[:dy.shape[1]] += dy.sum(axis=0)
    return dy


class SinusoidalPositions:
    kind = "positions"

    def __init__(self, n_positions, d, dtype, xp, name="pos"):
        self.name = name
        self.table = xp.asarray(sinusoidal_table(n_positions, d), dtype=dtype)

    def forward(self, x, start=0):
        return positions_forward(x, self.table, start)

    def backward(self, dy):
        return positions_backward(dy)


class LearnedPositions:
    kind = "positions"

    def __init__(self, store, name="pos_emb"):
        self.name = name
        self.weight = store.params[f"{name}.weight"]
        self.weight_grad = store.grads[f"{name}.weight"]
        self.parameter_names = (f"{name}.weight",)

    def forward(self, x, start=0):
        return positions_forward(x, self.weight, start)

    def backward(self, dy):
        return learned_positions_backward(dy, self.weight_grad)

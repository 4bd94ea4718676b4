"""Sinusoidal positions added to the embedding: pe[p, 2i] = sin(p / 10000^(2i/d)),
pe[p, 2i+1] = cos(p / 10000^(2i/d)).

Derivation: y = x + pe[:T] with pe fixed, so dx = dy; there is nothing to learn.
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


class SinusoidalPositions:
    kind = "positions"

    def __init__(self, n_positions, d, dtype, xp, name="pos"):
        self.name = name
        self.table = xp.asarray(sinusoidal_table(n_positions, d), dtype=dtype)

    def forward(self, x, start=0):
        return positions_forward(x, self.table, start)

    def backward(self, dy):
        return positions_backward(dy)

"""Rotary positions (RoFormer, Su et al. 2021; modded-nanogpt's record 2): each head's q and k are
rotated by their position inside attention, and no absolute position is added to the embedding.
modded-nanogpt's Rotary pairs dimension i with i + hd/2 (the halves, not neighbours), turned by the
angle t·θ_i, θ_i = base^(-2i/hd):  y1 = x1 cos + x2 sin,  y2 = -x1 sin + x2 cos.

Derivation: each pair is turned by a rotation R_t, so dx = R_tᵀ dy, the turn back:
  dx1 = dy1 cos - dy2 sin,  dx2 = dy1 sin + dy2 cos  (the forward with sin negated).
The kernels' spec: reference.rotary_forward.
"""
import numpy as np

from engine import kernels


def rotary_table(n_positions, head_size, base):
    """(cos, sin) of the angles t·θ_i, each (n_positions, head_size / 2), in float64 on the host."""
    theta = base ** (-np.arange(0, head_size, 2, dtype=np.float64) / head_size)
    angle = np.arange(n_positions, dtype=np.float64)[:, None] * theta
    return np.cos(angle), np.sin(angle)


def rotary_forward(x, cos, sin, start=0):
    """x (B, H, T, hd) at positions start.., each half-split pair turned by its angle."""
    T = x.shape[-2]
    return kernels.of(x).rotary_forward(x, cos[start:start + T], sin[start:start + T])


def rotary_backward(dy, cos, sin):
    return rotary_forward(dy, cos, -sin)


class RotaryPositions:
    """The model's positions where they are rotary: the tables attention turns q and k by; on the
    embedding's stream, nothing (forward and backward pass it through)."""
    kind = "positions"

    def __init__(self, n_positions, head_size, base, dtype, xp, name="rotary"):
        self.name = name
        self.cos, self.sin = (xp.asarray(t, dtype=dtype) for t in rotary_table(n_positions, head_size, base))

    def forward(self, x, start=0):
        return x

    def backward(self, dy):
        return dy

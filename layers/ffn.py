"""The feed-forward layer: gelu_tanh(x W_fc + b_fc) W_proj + b_proj.

GELU (tanh approximation, GPT-2's): y = ½ x (1 + tanh u),  u = √(2/π) (x + 0.044715 x³).
Derivation: dy/dx = ½ (1 + tanh u) + ½ x (1 - tanh² u) · √(2/π) (1 + 3 · 0.044715 x²);
the two linears are layers/linear.py's.
"""
import math

from engine.backend import array_module
from layers.linear import Linear

GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


def gelu_forward(x):
    xp = array_module(x)
    tanh_u = xp.tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x))
    return 0.5 * x * (1.0 + tanh_u), (x, tanh_u)


def gelu_backward(dy, cache):
    x, tanh_u = cache
    du_dx = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x)
    return dy * (0.5 * (1.0 + tanh_u) + 0.5 * x * (1.0 - tanh_u * tanh_u) * du_dx)


class GELU:
    def __init__(self, name):
        self.name = name

    def forward(self, x):
        y, self.cache = gelu_forward(x)
        return y

    def backward(self, dy):
        return gelu_backward(dy, self.cache)


class FFN:
    def __init__(self, store, name):
        self.name = name
        self.fc = Linear(store, f"{name}.fc")
        self.gelu = GELU(f"{name}.gelu")
        self.proj = Linear(store, f"{name}.proj")
        self.children = (self.fc, self.gelu, self.proj)

    def forward(self, x):
        return self.proj.forward(self.gelu.forward(self.fc.forward(x)))

    def backward(self, dy):
        return self.fc.backward(self.gelu.backward(self.proj.backward(dy)))

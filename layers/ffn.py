"""The feed-forward layer: gelu_tanh(x W_fc + b_fc) W_proj + b_proj.

GELU (tanh approximation, GPT-2's): y = ½ x (1 + tanh u),  u = √(2/π) (x + 0.044715 x³).
Derivation: dy/dx = ½ (1 + tanh u) + ½ x (1 - tanh² u) · √(2/π) (1 + 3 · 0.044715 x²);
the two linears are layers/linear.py's. The kernels' spec: reference.gelu_forward and
gelu_backward.
"""
from engine import kernels
from layers.linear import Linear


def gelu_forward(x):
    return kernels.of(x).gelu_forward(x), x


def gelu_backward(dy, x):
    return kernels.of(dy).gelu_backward(dy, x)


class GELU:
    kind = "gelu"

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
        self.fc = Linear(store, f"{name}.fc", "linear fc")
        self.gelu = GELU(f"{name}.gelu")
        self.proj = Linear(store, f"{name}.proj", "linear ffn.proj")
        self.children = (self.fc, self.gelu, self.proj)

    def forward(self, x):
        return self.proj.forward(self.gelu.forward(self.fc.forward(x)))

    def backward(self, dy):
        return self.fc.backward(self.gelu.backward(self.proj.backward(dy)))

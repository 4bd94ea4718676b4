"""The feed-forward layer: act(x W_fc + b_fc) W_proj + b_proj, act GPT-2's GELU or ReLU².

GELU (tanh approximation, GPT-2's): y = ½ x (1 + tanh u),  u = √(2/π) (x + 0.044715 x³).
Derivation: dy/dx = ½ (1 + tanh u) + ½ x (1 - tanh² u) · √(2/π) (1 + 3 · 0.044715 x²);
the two linears are layers/linear.py's. The kernels' spec: reference.gelu_forward and
gelu_backward.
ReLU² (modded-nanogpt's record 5, from Primer, So et al. 2021): y = max(x, 0)², so
dy/dx = 2 max(x, 0), which is 0 for x < 0 and continuous at 0. The kernels' spec:
reference.relu2_forward and relu2_backward.
"""
from engine import kernels
from layers.linear import Linear

ACTIVATIONS = ("gelu", "relu2")


def gelu_forward(x):
    return kernels.of(x).gelu_forward(x), x


def gelu_backward(dy, x):
    return kernels.of(dy).gelu_backward(dy, x)


def relu2_forward(x):
    return kernels.of(x).relu2_forward(x), x


def relu2_backward(dy, x):
    return kernels.of(dy).relu2_backward(dy, x)


class ReLU2:
    kind = "relu2"

    def __init__(self, name):
        self.name = name

    def forward(self, x):
        y, self.cache = relu2_forward(x)
        return y

    def backward(self, dy):
        return relu2_backward(dy, self.cache)


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
    def __init__(self, store, name, activation="gelu"):
        self.name = name
        self.fc = Linear(store, f"{name}.fc", "linear fc")
        self.act = GELU(f"{name}.gelu") if activation == "gelu" else ReLU2(f"{name}.relu2")
        self.proj = Linear(store, f"{name}.proj", "linear ffn.proj")
        self.children = (self.fc, self.act, self.proj)

    def forward(self, x):
        return self.proj.forward(self.act.forward(self.fc.forward(x)))

    def backward(self, dy):
        return self.fc.backward(self.act.backward(self.proj.backward(dy)))

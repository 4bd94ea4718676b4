"""RMSNorm without learned parameters (modded-nanogpt's F.rms_norm): y = x · rstd over the last
axis, rstd = 1/√(mean(x²) + eps), eps the dtype's machine epsilon, as torch's default.

Derivation: with x̂ = x · rstd and d rstd/dx = -rstd³ x / n, the mean of x² being a function of x,
  dx = rstd · (dy - x̂ · mean(dy · x̂))
(the means over the normalised axis); there is nothing to learn. The kernels' spec:
reference.rmsnorm_forward and rmsnorm_backward.
"""
from engine import kernels


def rmsnorm_forward(x):
    y, rstd = kernels.of(x).rmsnorm_forward(x)
    return y, (x, rstd)


def rmsnorm_backward(dy, cache):
    x, rstd = cache
    return kernels.of(dy).rmsnorm_backward(dy, x, rstd)


class RMSNorm:
    kind = "rmsnorm"
    parameter_names = ()

    def __init__(self, name):
        self.name = name

    def forward(self, x):
        y, self.cache = rmsnorm_forward(x)
        return y

    def backward(self, dy):
        return rmsnorm_backward(dy, self.cache)

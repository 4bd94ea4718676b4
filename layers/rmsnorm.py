"""RMSNorm without learned parameters (modded-nanogpt's F.rms_norm): y = x · rstd over the last
axis, rstd = 1/√(mean(x²) + eps), eps the dtype's machine epsilon, as torch's default.

Derivation: with x̂ = x · rstd and d rstd/dx = -rstd³ x / n, the mean of x² being a function of x,
  dx = rstd · (dy - x̂ · mean(dy · x̂))
(the means over the normalised axis); there is nothing to learn.
"""
import numpy as np

from engine.backend import array_module


def rmsnorm_forward(x):
    xp = array_module(x)
    rstd = 1.0 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + np.finfo(x.dtype).eps)
    return x * rstd, (x, rstd)


def rmsnorm_backward(dy, cache):
    x, rstd = cache
    xhat = x * rstd
    return rstd * (dy - xhat * (dy * xhat).mean(axis=-1, keepdims=True))


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

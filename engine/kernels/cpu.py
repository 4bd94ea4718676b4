"""Numba versions of the hot kernels for NumPy arrays, each held to reference.py by the tests.
Compiled on first use and cached on disk, so only the first run pays for compilation."""
import math

import numba


@numba.njit(cache=True, fastmath=False)
def adamw_step(param, grad, m, v, decay, lr, beta1, beta2, eps, weight_decay, step):
    """reference.adamw_step in one pass over the flat buffers, instead of eight."""
    bias1 = 1.0 - beta1 ** step
    bias2_sqrt = math.sqrt(1.0 - beta2 ** step)
    shrink = 1.0 - lr * weight_decay
    for i in range(param.size):
        g = grad[i]
        m[i] = beta1 * m[i] + (1.0 - beta1) * g
        v[i] = beta2 * v[i] + (1.0 - beta2) * g * g
        p = param[i] * shrink if decay[i] else param[i]
        param[i] = p - (lr / bias1) * m[i] / (math.sqrt(v[i]) / bias2_sqrt + eps)

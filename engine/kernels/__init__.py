"""The fused hot ops. Each backend is one module with the same functions: `cpu.py` (Numba and
OpenBLAS) for NumPy arrays, `gpu.py` (CUDA kernels and CuPy calls) for CuPy arrays, and
`reference.py` is the readable NumPy spec that both are tested against. A caller asks once
for its array's module: `kernels.of(x).layernorm_forward(x, w, b, eps)`."""
import numpy as np

from engine.kernels import cpu


def of(x):
    """The kernel module of x's backend."""
    if isinstance(x, np.ndarray):
        return cpu
    from engine.kernels import gpu  # imports CuPy: only when a CuPy array arrives
    return gpu

"""The fused hot ops the layers and the optimizer call. Each has its spec in `reference.py`;
faster versions (Numba for NumPy arrays, CUDA RawKernels for CuPy arrays) are chosen here
by array type as they land, and are tested against the spec."""
from engine.kernels import cpu
from engine.kernels.reference import (attention_backward, attention_forward,
                                      softmax_xent_backward, softmax_xent_forward)

adamw_step = cpu.adamw_step

__all__ = ["attention_forward", "attention_backward", "softmax_xent_forward", "softmax_xent_backward",
           "adamw_step"]

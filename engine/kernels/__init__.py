"""The fused hot ops the layers and the optimizer call. Each has its spec in `reference.py`;
the Numba/BLAS versions in `cpu.py` serve NumPy arrays and are tested against the spec."""
from engine.kernels.cpu import (adamw_step, attention_backward, attention_forward, embedding_backward,
                                gelu_backward, gelu_forward, layernorm_backward, layernorm_forward,
                                softmax_xent_backward, softmax_xent_forward)

__all__ = ["attention_forward", "attention_backward", "softmax_xent_forward", "softmax_xent_backward",
           "layernorm_forward", "layernorm_backward", "gelu_forward", "gelu_backward", "embedding_backward",
           "adamw_step"]

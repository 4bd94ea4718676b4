"""AdamW over the flat buffers, and clipping by the global gradient norm.

The moments are two more flat buffers beside the parameters, so the update is one pass
over four arrays. Weight decay applies to matrices and the embedding only (every tensor of
two or more dimensions), never to LayerNorm weights or biases, as in nanoGPT and GPT-2.
"""
import math

import numpy as np

from engine import kernels
from engine.errors import UserError


class AdamW:
    def __init__(self, store, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1):
        self.store = store
        self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay
        xp = store.xp
        self.m = xp.zeros_like(store.data)
        self.v = xp.zeros_like(store.data)
        self.decay = xp.zeros(store.numel, dtype=np.uint8)
        for name, shape in store.shapes.items():
            if len(shape) >= 2:
                self.decay[store.span(name)] = 1
        self.step_count = 0

    def step(self, lr):
        self.step_count += 1
        kernels.of(self.m).adamw_step(self.store.data, self.store.grad, self.m, self.v, self.decay, lr, self.beta1,
                                      self.beta2, self.eps, self.weight_decay, self.step_count)

    def state_tensors(self):
        """The moments as safetensors entries, under adam_m.<name> / adam_v.<name>."""
        tensors = {}
        for name in self.store.shapes:
            tensors[f"adam_m.{name}"] = self.store.view(self.m, name)
            tensors[f"adam_v.{name}"] = self.store.view(self.v, name)
        return tensors

    def load_state_tensors(self, tensors, step_count, source):
        """Load the moments from state_tensors()'s entries, or a UserError naming the first
        parameter whose moments `source` lacks or holds in another shape."""
        for name, shape in self.store.shapes.items():
            if any(tuple(getattr(tensors.get(f"{moment}.{name}"), "shape", ())) != tuple(shape)
                   for moment in ("adam_m", "adam_v")):
                raise UserError(f"{source} has no usable AdamW state for {name}; it cannot resume training")
        for name in self.store.shapes:
            self.store.view(self.m, name)[...] = self.store.xp.asarray(tensors[f"adam_m.{name}"])
            self.store.view(self.v, name)[...] = self.store.xp.asarray(tensors[f"adam_v.{name}"])
        self.step_count = step_count


def grad_norm(store):
    """The global L2 norm of every gradient, accumulated in float64."""
    return math.sqrt(kernels.of(store.grad).sum_of_squares(store.grad))


def clip_grad_norm(store, max_norm):
    """Scale all gradients down so their global norm is at most max_norm (PyTorch's rule,
    clip_grad_norm_); returns the norm before clipping."""
    norm = grad_norm(store)
    if max_norm > 0:
        coefficient = max_norm / (norm + 1e-6)
        if coefficient < 1.0:
            store.grad *= store.grad.dtype.type(coefficient)
    return norm

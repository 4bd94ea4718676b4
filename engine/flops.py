"""Floating-point work: what a training step needs, and what the machine can do."""
import time

import numpy as np

from engine import kernels
from engine.backend import synchronize


def training_flops_per_token(n_params, n_layer, d_model, seq_len):
    """Forward + backward FLOPs per token: 6 per parameter (2 forward, 4 backward) plus
    attention's q·k and p·v products, 12 · L · T · d (PaLM, appendix B)."""
    return 6 * n_params + 12 * n_layer * seq_len * d_model


def forward_flops_per_token(n_params, n_layer, d_model, seq_len):
    """The forward third of training_flops_per_token: 2 per parameter plus attention's q·k and
    p·v products, 4 · L · T · d."""
    return 2 * n_params + 4 * n_layer * seq_len * d_model


def best_seconds(run, seconds):
    """The shortest time of one run() over repeated calls for about `seconds`."""
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            return best


def measure_matmul_flops(xp=np, dtype=np.float32, n=1024, seconds=0.3):
    """The best FLOP/s of an n×n matrix product over about `seconds`: the peak MFU is taken
    against, measured on the spot since it depends on the machine and its thread count."""
    a = xp.ones((n, n), dtype=dtype)
    b = xp.ones((n, n), dtype=dtype)

    def product():  # the model's own product: on the CPU, OpenBLAS called on each thread's rows
        kernels.of(a).matmul(a, b)
        synchronize(xp)

    return 2 * n ** 3 / best_seconds(product, seconds)

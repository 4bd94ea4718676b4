"""Timing a step, and the layers inside it: what the timing commands and the benchmarks
measure with.

time_steps times whole iterations of a step. run_profile also times every layer's forward and
backward, with timers wrapped around the layer objects (their code untouched), and sums the
layers into one row per `kind`, which each layer says itself.
"""
import functools
import time
from collections import defaultdict

from engine.backend import synchronize
from layers.embedding import TiedHead
from layers.linear import Linear
from train.tracing import Patches

MODEL = "(model)"  # the profiler's key for the Decoder's own forward and backward
# The row of a layer without a kind (a block's residual adds, the FFN's calls to its children)
# and of the step's time outside the layers.
OTHER = "other"


def time_steps(step, iters, warmup, world, xp, sync=None):
    """(seconds, communication seconds) of each of `iters` calls of step(), after `warmup`
    untimed calls (the first runs compile the Numba kernels and warm the caches)."""
    seconds, comm_seconds = [], []
    for i in range(warmup + iters):
        world.barrier()  # every rank starts the iteration together, as in training
        started = time.perf_counter()
        step()
        synchronize(xp)
        elapsed = time.perf_counter() - started
        communication = sync.take_comm_seconds() if sync is not None else 0.0  # every call's own
        if i >= warmup:
            seconds.append(elapsed)
            comm_seconds.append(communication)
    return seconds, comm_seconds


class LayerProfiler:
    """Times the forward and backward of every layer of `model.named_layers()`, and of the
    model itself, by replacing those methods on each object with a timing wrapper (the layer
    code is untouched); restore() puts the originals back."""

    def __init__(self, model):
        self.xp = model.xp
        self.layers = list(model.named_layers())
        self.totals = defaultdict(float)  # (layer name, "forward" or "backward") -> seconds
        self.patches = Patches()
        for name, obj in self.layers + [(MODEL, model)]:
            for method in ("forward", "backward"):
                self.patches.wrap(obj, method, functools.partial(self.timing, key=(name, method)))

    def timing(self, original, key):
        totals, xp = self.totals, self.xp

        def timed(*args, **kwargs):
            synchronize(xp)
            started = time.perf_counter()
            result = original(*args, **kwargs)
            synchronize(xp)
            totals[key] += time.perf_counter() - started
            return result
        return timed

    def restore(self):
        self.patches.restore()

    def self_seconds(self, method):
        """[(layer, seconds in `method`, its children's excluded)], in forward order."""
        return [(layer, self.totals[name, method]
                 - sum(self.totals[child.name, method] for child in getattr(layer, "children", ())))
                for name, layer in self.layers]


def profile_rows(profiler, step_seconds, comm_seconds, mode):
    """{row: [forward s, backward s]}, summed over the layers of each kind in the order they
    first run, adding up to step_seconds.

    The forward column is model.forward (for fw, the whole step); the backward column is the
    rest of the step: zero_grad, model.backward and the allreduce wait. "communication" is the
    time the allreduce did not hide; "other", last, is what is left."""
    rows = defaultdict(lambda: [0.0, 0.0])
    for column, method in enumerate(("forward", "backward")):
        for layer, seconds in profiler.self_seconds(method):
            rows[getattr(layer, "kind", OTHER)][column] += seconds
    if comm_seconds:
        rows["communication"][1] += comm_seconds
    other = rows.pop(OTHER)
    forward_seconds = profiler.totals[MODEL, "forward"] if mode == "fwbw" else step_seconds
    for column, target in enumerate((forward_seconds, step_seconds - forward_seconds)):
        other[column] = target - sum(row[column] for row in rows.values())
    return {**rows, OTHER: other}


def run_profile(model, step, iters, world, sync, mode):
    """Rank 0's per-layer profile of `iters` more iterations of step(), per iteration, and the
    share of the step in the matrix products of the linear layers and the head."""
    profiler = LayerProfiler(model)
    try:
        seconds, comm_seconds = time_steps(step, iters, 0, world, model.xp, sync)
    finally:
        profiler.restore()
    step_seconds = sum(seconds)
    rows = profile_rows(profiler, step_seconds, sum(comm_seconds), mode)
    product_kinds = {layer.kind for _, layer in profiler.layers if isinstance(layer, (Linear, TiedHead))}
    return {"iters": iters, "step_ms": step_seconds / iters * 1e3,
            "rows": [{"layer": kind, "fw_ms": fw / iters * 1e3, "bw_ms": bw / iters * 1e3,
                      "share": (fw + bw) / step_seconds} for kind, (fw, bw) in rows.items()],
            "matmul_share": sum(sum(rows[kind]) for kind in product_kinds) / step_seconds}

"""Recording every layer's forward and backward, in the order they ran, without touching layer
code: the Tracer replaces the `forward` and `backward` methods of the model's layer objects
(from Decoder.named_layers) with recording wrappers, and `restore()` puts the originals back.
Nothing is wrapped unless a Tracer is made, so a model that is not traced pays nothing."""
import functools
import time
from dataclasses import dataclass, field

import numpy as np

from engine.backend import synchronize, to_numpy


@dataclass
class Event:
    """One call: layer `name`'s forward or backward, its array inputs and outputs (host copies,
    for the forward what it was given and returned, for the backward the upstream gradient
    and what it passed down) and how long it took."""
    index: int
    name: str
    phase: str
    layer: object
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    seconds: float = 0.0


def arrays(values):
    """Host copies of the arrays among `values` (a result may be one array, a tuple, or None)."""
    if values is None:
        return []
    if not isinstance(values, tuple):
        values = (values,)
    return [v.copy() if isinstance(v, np.ndarray) else to_numpy(v) for v in values if hasattr(v, "shape")]


class Patches:
    """Methods of objects replaced by wrappers, and put back by restore(): the instance's own
    attribute if it had one, else the class's method shows through again. The Tracer and the
    timing commands' LayerProfiler both wrap layers this way."""

    def __init__(self):
        self.replaced = []

    def wrap(self, obj, method, make_wrapper):
        """obj.method becomes make_wrapper(the current obj.method)."""
        self.replaced.append((obj, method, vars(obj).get(method)))
        setattr(obj, method, make_wrapper(getattr(obj, method)))

    def restore(self):
        for obj, method, own in reversed(self.replaced):
            if own is None:
                delattr(obj, method)
            else:
                setattr(obj, method, own)
        self.replaced = []


class Tracer:
    def __init__(self, model, on_event=None):
        """Record every call of every layer of `model`; on_event(event), if given, runs after
        each one (a debugger stops there)."""
        self.events = []
        self.on_event = on_event
        self.xp = model.xp
        self.patches = Patches()
        for name, layer in model.named_layers():
            for phase in ("forward", "backward"):
                self.patches.wrap(layer, phase, functools.partial(self.recording, name=name, layer=layer,
                                                                  phase=phase))

    def recording(self, original, name, layer, phase):
        def recorded(*args, **kwargs):
            started = time.perf_counter()
            result = original(*args, **kwargs)
            synchronize(self.xp)
            seconds = time.perf_counter() - started  # before the host copies below
            event = Event(len(self.events), name, phase, layer, arrays(tuple(args)), arrays(result), seconds)
            self.events.append(event)
            if self.on_event is not None:
                self.on_event(event)
            return result
        return recorded

    def restore(self):
        self.patches.restore()


def summary(array):
    """shape, mean, std, min, max, max |x| and the NaN/Inf count of an array, over its finite entries."""
    a = np.asarray(array, dtype=np.float64)
    finite = a[np.isfinite(a)]
    bad = int(a.size - finite.size)
    if finite.size == 0:
        return {"shape": a.shape, "mean": np.nan, "std": np.nan, "min": np.nan, "max": np.nan, "absmax": np.nan,
                "nonfinite": bad}
    return {"shape": a.shape, "mean": float(finite.mean()), "std": float(finite.std()), "min": float(finite.min()),
            "max": float(finite.max()), "absmax": float(np.abs(finite).max()), "nonfinite": bad}

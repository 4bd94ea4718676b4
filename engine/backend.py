"""Backend selection, the array module of an array, and the dtype policy."""
import numpy as np

from engine.errors import UserError

DEVICES = ("cpu", "gpu")

# float32 trains and times; float64 is for gradient checks, where finite differences
# need the extra digits to say anything at all.
DTYPES = {"float32": np.float32, "float64": np.float64}
DEFAULT_DTYPE = "float32"


def get_array_module(device):
    """The array module (numpy or cupy) that holds a model's arrays on `device`."""
    if device == "cpu":
        return np
    if device == "gpu":
        raise UserError("the GPU backend is not available yet in this version of nano2; "
                        "use --device=cpu")
    raise UserError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")


def array_module(x):
    """numpy or cupy, whichever owns `x` (as cupy.get_array_module does, without importing cupy)."""
    if type(x).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def resolve_dtype(name):
    try:
        return DTYPES[name]
    except KeyError:
        raise UserError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}") from None


def to_numpy(x):
    """A host copy of a device array; NumPy arrays pass through."""
    return x.get() if hasattr(x, "get") else np.asarray(x)

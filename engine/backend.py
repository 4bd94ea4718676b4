"""Backend selection, the array module of an array, and the dtype policy."""

import numpy as np

from engine.errors import UserError

DEVICES = ("cpu", "gpu")

# float32 trains and times; float64 is for gradient checks, where finite differences
# need the extra digits to say anything at all.
DTYPES = {"float32": np.float32, "float64": np.float64}
DEFAULT_DTYPE = "float32"


def get_array_module(device, tf32=False, local_rank=0):
    """The array module (numpy or cupy) that holds a model's arrays on `device`. On the GPU,
    a rank takes the device of its local rank on this machine (local_rank % device count), so
    one rank per GPU needs no CUDA_VISIBLE_DEVICES; tf32 lets cuBLAS use TF32 for float32 products."""
    if device == "cpu":
        return np
    if device != "gpu":
        raise UserError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    cupy = import_cupy("use --device=cpu")
    cupy.cuda.Device(local_rank % cupy.cuda.runtime.getDeviceCount()).use()
    set_tf32(cupy, tf32)
    return cupy


def set_tf32(cupy, tf32):
    """Every float32 product in TF32 or in plain FP32, from now on. CuPy reads CUPY_TF32 once, at
    its first float32 product, so the environment variable cannot switch it later; its compute
    type can (CuPy's own tests set it so). Every product nano2 makes is 2-D, (rows, d) @ W with
    W or Wᵀ handed to cuBLAS as it lies, so this reaches all of them, the tied head included."""
    from cupy._core import _routines_linalg as linalg
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if tf32 else linalg.COMPUTE_TYPE_DEFAULT)


def import_cupy(instead):
    """CuPy, where it is installed and sees a GPU; else a UserError saying which is missing,
    then `instead` (what to run instead)."""
    try:
        import cupy
    except ImportError:
        raise UserError("no GPU: CuPy is not installed (pip install -e '.[cuda12]', or '.[cuda13]' for "
                        f"CUDA 13); {instead}") from None
    if not cupy.cuda.is_available():
        raise UserError(f"no GPU: CuPy finds no CUDA device on this machine; {instead}")
    return cupy


def synchronize(xp):
    """Wait until the GPU has done the work queued so far, so a clock or a host-side reader
    sees it done (a no-op on the CPU, where every call returns when its work is done)."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


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


def host_floats(*values):
    """Python floats of device scalars (0-d arrays) in one transfer, so one wait for the device."""
    xp = array_module(values[0])
    if xp is np:
        return [float(v) for v in values]
    return xp.stack([xp.asarray(v, dtype=xp.float64) for v in values]).get().tolist()


def to_numpy(x):
    """A host copy of a device array; NumPy arrays pass through."""
    return x.get() if hasattr(x, "get") else np.asarray(x)

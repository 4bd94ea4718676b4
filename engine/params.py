"""The flat parameter store: every parameter a named view into one buffer, every gradient a
view into another (as llm.c does), so that zeroing, the optimizer, the gradient allreduce and
checkpoint writes are each one pass over one buffer."""
import json
import math
import os
import tempfile

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from engine.backend import to_numpy
from engine.errors import UserError


class ParameterStore:
    def __init__(self, shapes, dtype=np.float32, xp=np):
        """`shapes` is a list of (name, shape) pairs, in checkpoint order."""
        self.shapes = dict(shapes)
        if len(self.shapes) != len(shapes):
            raise ValueError("parameter names must be unique")
        self.dtype = np.dtype(dtype)
        self.xp = xp
        sizes = [math.prod(shape) for _, shape in shapes]
        self.numel = sum(sizes)
        self.data = xp.zeros(self.numel, dtype=dtype)
        self.grad = xp.zeros(self.numel, dtype=dtype)
        self.offsets = dict(zip(self.shapes, np.cumsum([0] + sizes[:-1]).tolist()))
        self.params = {name: self.view(self.data, name) for name in self.shapes}
        self.grads = {name: self.view(self.grad, name) for name in self.shapes}

    def span(self, name):
        """Where parameter `name` lies in the flat buffers."""
        start = self.offsets[name]
        return slice(start, start + math.prod(self.shapes[name]))

    def view(self, flat, name):
        """Parameter `name`'s part of any buffer laid out like the store's (gradients, AdamW
        moments), in the parameter's shape."""
        return flat[self.span(name)].reshape(self.shapes[name])

    def zero_grad(self):
        self.grad.fill(0)

    def state_tensors(self, with_grads=False):
        """Host copies of every parameter (and gradient, as grad.<name>) for a safetensors file."""
        tensors = {name: to_numpy(p) for name, p in self.params.items()}
        if with_grads:
            tensors.update({f"grad.{name}": to_numpy(g) for name, g in self.grads.items()})
        return tensors

    def load_tensors(self, tensors, source):
        """Copy parameters in from a {name: array} dict, refusing any mismatch in names or shapes."""
        for name, shape in self.shapes.items():
            if name not in tensors:
                raise UserError(f"{source} has no tensor {name!r}: it was written for a different model")
            if tuple(tensors[name].shape) != tuple(shape):
                raise UserError(f"{source} holds {name!r} with shape {tuple(tensors[name].shape)}, "
                                f"but this model's is {tuple(shape)}: it was written for a different config")
        for name in self.shapes:
            self.params[name][...] = self.xp.asarray(tensors[name], dtype=self.dtype)


PLAIN_FILE_MODE = 0o666  # what open() asks for; the umask takes its share


def current_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def temporary_file(folder, prefix=".tmp-", suffix=""):
    """(fd, path) of a new file in `folder` for an atomic write (written, then renamed), with
    the mode a plain new file gets under the umask, not mkstemp's 0600."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
    os.fchmod(fd, PLAIN_FILE_MODE & ~current_umask())
    return fd, tmp


def write_safetensors(path, tensors, metadata):
    """Write atomically: a temporary file in the same folder, fsync, then rename over `path`,
    so a crash mid-write never leaves a half-written file where a good one was."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"cannot write {path}: it is a folder")
    try:  # a path the user gave that cannot hold a file is their mistake, said in one line
        os.makedirs(folder, exist_ok=True)
        fd, tmp = temporary_file(folder, suffix=".safetensors")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    try:
        tensors = {name: np.ascontiguousarray(to_numpy(t)) for name, t in tensors.items()}
        text_metadata = {key: value if isinstance(value, str) else json.dumps(value)
                         for key, value in metadata.items()}
        save_file(tensors, tmp, metadata=text_metadata)
        os.chmod(tmp, PLAIN_FILE_MODE & ~current_umask())  # save_file makes the file anew, at 0600
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# The safetensors dtypes NumPy holds (bfloat16 and the float8s it has no type for).
NUMPY_DTYPES = ("BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "F32", "F64")


def read_safetensors(path, tensors=True):
    """(tensors, metadata) from a safetensors file ({} for tensors when not asked for: the header
    alone is read); a missing, truncated or corrupt file, or a tensor of a dtype NumPy has not,
    is a UserError. Metadata values that hold JSON come back decoded."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"no such file: {path}")
    try:
        with safe_open(path, framework="numpy") as f:
            raw_metadata = f.metadata() or {}
            for name in f.keys() if tensors else ():
                dtype = f.get_slice(name).get_dtype()
                if dtype not in NUMPY_DTYPES:
                    raise UserError(f"{path}: tensor {name} is {dtype}, which NumPy cannot hold; save it as float32")
            tensors = {name: f.get_tensor(name) for name in f.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} is not a readable safetensors file ({reason})") from None
    metadata = {}
    for key, value in raw_metadata.items():
        try:
            metadata[key] = json.loads(value)
        except json.JSONDecodeError:
            metadata[key] = value
    return tensors, metadata

"""Builds a .cu file with the CPU emulator (cuda_emu.h) and a harness into a shared library
that ctypes can call; the unchanged kernel source is #included by the harness."""
import ctypes
import hashlib
import os
import subprocess
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KERNELS = os.path.join(ROOT, "engine", "kernels", "cuda")
BUILD = os.path.join(tempfile.gettempdir(), "nano2-cuda-emu")


def build(source, harness):
    """ctypes.CDLL of `harness` compiled with `source` (a .cu path) by g++ -std=c++20."""
    os.makedirs(BUILD, exist_ok=True)
    flags = ["-std=c++20", "-O1", "-g", "-shared", "-fPIC", "-pthread", f"-I{HERE}",
             f"-DKERNEL_SOURCE=\"{os.path.abspath(source)}\"", "-Wno-unknown-pragmas"]
    key = hashlib.sha256()
    for path in (source, harness, os.path.join(HERE, "cuda_emu.h")):
        key.update(open(path, "rb").read())
    key.update(" ".join(flags).encode())
    library = os.path.join(BUILD, f"{os.path.basename(harness)}-{key.hexdigest()[:16]}.so")
    if not os.path.exists(library):
        result = subprocess.run(["g++", *flags, harness, "-o", library + ".tmp"], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"g++ failed on {source}:\n{result.stderr}")
        os.replace(library + ".tmp", library)
    return ctypes.CDLL(library)


def pointer(array):
    return array.ctypes.data_as(ctypes.c_void_p)


def call(function, grid, block, *args):
    """Launch through a harness entry point; arrays pass as pointers, floats as doubles, other
    scalars as ints."""
    converted = [pointer(a) if isinstance(a, np.ndarray) else ctypes.c_double(a) if isinstance(a, float)
                 else ctypes.c_int(a) for a in args]
    status = function(ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]), *converted)
    if status != 0:
        raise RuntimeError("the emulated kernel failed (see stderr)")

"""Batched matrix products through OpenBLAS's strided-batch GEMM, for attention's many small
per-head products.

np.matmul on a stack of matrices makes one GEMM call per matrix, and OpenBLAS splits each of
those small products over all its threads: at attention's sizes (64-256 rows, head size 64)
that ran at 70-100 GFLOP/s here. cblas_sgemm_batch_strided gives each thread whole matrices
of the stack instead, ~150 GFLOP/s on the same products; a whole forward+backward of
configs/nano2.json took 4% less time at T = 256 and 13% less at T = 1024. It is used when
NumPy's BLAS is an OpenBLAS that has it (NumPy's wheels bundle one); anything else falls back
to np.matmul with the same result.

OpenBLAS 0.3.31 (in NumPy 2.4.6's wheels) jumps to a bad address in the batch call's small-matrix
path, taken when m·n·k <= 100³ (its DYNAMIC_ARCH build reads the kernel table as addresses),
so products that small also go to np.matmul.
"""
import ctypes

import numpy as np
import threadpoolctl

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
SMALL_MATRIX_LIMIT = 100 ** 3


def load_batch_gemm():
    """{dtype: the C function} from NumPy's OpenBLAS, or {} where it has none."""
    for info in threadpoolctl.threadpool_info():
        if info["user_api"] != "blas" or info["internal_api"] != "openblas":
            continue
        library = ctypes.CDLL(info["filepath"])
        integer = ctypes.c_int64 if uses_64bit_integers(library) else ctypes.c_int
        functions = {}
        for dtype, name, scalar in ((np.float32, "cblas_sgemm_batch_strided", ctypes.c_float),
                                    (np.float64, "cblas_dgemm_batch_strided", ctypes.c_double)):
            function = getattr(library, name, None)
            if function is None:
                return {}
            p, n = ctypes.c_void_p, integer
            function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, n, n, n, scalar, p, n, n, p, n, n,
                                 scalar, p, n, n, n]
            function.restype = None
            functions[np.dtype(dtype)] = function
        return functions
    return {}


def uses_64bit_integers(library):
    """Whether this OpenBLAS takes 64-bit integers (NumPy's does: its symbols are renamed to
    end in 64_, though the batch functions kept their plain names), from its build string."""
    for name in ("scipy_openblas_get_config64_", "openblas_get_config64_", "openblas_get_config"):
        get_config = getattr(library, name, None)
        if get_config is not None:
            get_config.restype = ctypes.c_char_p
            return b"USE64BITINT" in get_config()
    return False


BATCH_GEMM = load_batch_gemm()


def layout(x):
    """(CBLAS transpose flag, leading dimension, batch stride) of a 3-D view whose matrices
    have contiguous rows or contiguous columns, in elements; None for any other view."""
    s0, s1, s2 = (s // x.itemsize for s in x.strides)
    _, rows, cols = x.shape
    if s2 == 1 and s1 >= cols:
        return NO_TRANS, s1, s0
    if s1 == 1 and s2 >= rows:
        return TRANS, s2, s0
    return None


def batched_matmul(a, b, out, accumulate=False):
    """out[i] = a[i] @ b[i], or out[i] += a[i] @ b[i] when accumulating, for 3-D views (a
    transposed view is fine: it is not copied)."""
    batch, m, k = a.shape
    n = b.shape[2]
    function = BATCH_GEMM.get(out.dtype)
    a_layout, b_layout, out_layout = layout(a), layout(b), layout(out)
    if (function is None or m * n * k <= SMALL_MATRIX_LIMIT or a.dtype != out.dtype or b.dtype != out.dtype
            or None in (a_layout, b_layout, out_layout) or out_layout[0] != NO_TRANS):
        if accumulate:
            out += a @ b
        else:
            np.matmul(a, b, out=out)
        return out
    (a_trans, lda, a_stride), (b_trans, ldb, b_stride), (_, ldc, c_stride) = a_layout, b_layout, out_layout
    function(ROW_MAJOR, a_trans, b_trans, m, n, k, 1.0, a.ctypes.data, lda, a_stride, b.ctypes.data, ldb,
             b_stride, 1.0 if accumulate else 0.0, out.ctypes.data, ldc, c_stride, batch)
    return out

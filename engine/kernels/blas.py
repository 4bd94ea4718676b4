"""NumPy's OpenBLAS matrix product, callable from inside Numba kernels, so every parallel loop
of a step runs in one thread pool (Numba's) and OpenBLAS itself runs single-threaded.

Two pools on the same cores fought: OpenBLAS's workers (and its caller) spin after each
product, yielding to nothing, while Numba's wanted the cores. Two ranks of two threads on two
cores ran a configs/tiny.json step in 5.7 s instead of 67 ms (README, "Threads on the CPU").
With OpenBLAS held to one thread and each Numba worker calling it on its own rows, the
products run as fast as OpenBLAS's own threads and every wait is Numba's passive one.

`gemm(a, b, c, beta)` is that call for 2-D views: c = a @ b + beta · c. The function is
found by name (NumPy renames OpenBLAS's symbols and may use 64-bit integers) and given to
LLVM as a named symbol, so the kernels that call it can still be cached on disk.
"""
import ctypes

import llvmlite.binding as llvm
import numba
import threadpoolctl
from numba import types
from numba.extending import overload

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
NAMES = ("scipy_cblas_{}gemm64_", "cblas_{}gemm64_", "scipy_cblas_{}gemm", "cblas_{}gemm")


def find_openblas_gemm():
    """(sgemm address, dgemm address, 64-bit integers?) of NumPy's OpenBLAS, or None."""
    for info in threadpoolctl.threadpool_info():
        if info["user_api"] != "blas" or info["internal_api"] != "openblas":
            continue
        library = ctypes.CDLL(info["filepath"])
        for name in NAMES:
            functions = [getattr(library, name.format(kind), None) for kind in "sd"]
            if None not in functions:
                addresses = [ctypes.cast(f, ctypes.c_void_p).value for f in functions]
                return addresses[0], addresses[1], uses_64bit_integers(library)
    return None


def uses_64bit_integers(library):
    """Whether this OpenBLAS takes 64-bit integers (NumPy's does), from its build string."""
    for name in ("scipy_openblas_get_config64_", "openblas_get_config64_", "openblas_get_config"):
        get_config = getattr(library, name, None)
        if get_config is not None:
            get_config.restype = ctypes.c_char_p
            return b"USE64BITINT" in get_config()
    return False


def external_gemm(kind, address, integer):
    # The width is in the symbol's name, so a kernel cached for the other width fails to link
    # instead of passing wrong integers.
    name = f"nano2_{kind}gemm_{integer.bitwidth}"
    llvm.add_symbol(name, address)
    scalar = {"s": types.float32, "d": types.float64}[kind]
    p = types.voidptr
    return types.ExternalFunction(name, types.void(types.intc, types.intc, types.intc, integer, integer, integer,
                                                   scalar, p, integer, p, integer, scalar, p, integer))


FOUND = find_openblas_gemm()
if FOUND:
    threadpoolctl.threadpool_limits(limits=1, user_api="blas")  # the threads are Numba's (above)
    integer_type = types.int64 if FOUND[2] else types.intc
    sgemm, dgemm = (external_gemm(kind, address, integer_type) for kind, address in zip("sd", FOUND[:2]))


@numba.njit(inline="always", cache=True)  # cached: the Python side asks it too
def layout(x):
    """(CBLAS transpose flag, leading dimension) of a 2-D view whose rows or columns are
    contiguous and do not overlap; (0, 0) for any other view, which BLAS cannot read."""
    rows, cols = x.shape
    row_stride, col_stride = x.strides[0] // x.itemsize, x.strides[1] // x.itemsize
    if (col_stride == 1 or cols == 1) and (rows == 1 or row_stride >= cols):
        return NO_TRANS, max(row_stride, cols, 1)
    if (row_stride == 1 or rows == 1) and (cols == 1 or col_stride >= rows):
        return TRANS, max(col_stride, rows, 1)
    return 0, 0


def gemm(a, b, c, beta):
    """c = a @ b + beta · c on this thread, inside a Numba kernel (a transposed view is read as
    it is, not copied). c's rows must be contiguous, and no view strided both ways."""
    raise NotImplementedError("gemm is called from Numba kernels only")


@overload(gemm)
def gemm_for(a, b, c, beta):
    function = sgemm if c.dtype == types.float32 else dgemm

    def product(a, b, c, beta):
        a_trans, lda = layout(a)
        b_trans, ldb = layout(b)
        _, ldc = layout(c)
        function(ROW_MAJOR, a_trans, b_trans, c.shape[0], c.shape[1], a.shape[1], 1.0, a.ctypes.data, lda,
                 b.ctypes.data, ldb, beta, c.ctypes.data, ldc)
    return product

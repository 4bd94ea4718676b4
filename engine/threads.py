"""How many threads each rank's parallel kernels may use: the cores this process may run on,
shared among the ranks on this machine, so `mpiexec -n 2` on 2 cores runs 1 thread each
instead of 4 threads fighting over 2 cores."""
import os


def threads_per_rank(local_size, cpu_count=None, affinity=None):
    cpu_count = cpu_count or os.cpu_count() or 1
    affinity = affinity if affinity is not None else len(os.sched_getaffinity(0))
    if affinity < cpu_count:
        return max(1, affinity)  # the launcher bound this rank to its own cores already
    return max(1, cpu_count // local_size)


def set_threads(n):
    """Run the CPU kernels' parallel loops on n threads: Numba's pool, which also runs the
    matrix products on OpenBLAS, held to one thread by engine/kernels/blas.py; without that
    binding, NumPy's BLAS gets the n threads for its own products."""
    import numba
    from threadpoolctl import threadpool_limits

    from engine.kernels import blas
    if not blas.FOUND:
        threadpool_limits(limits=n, user_api="blas")
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))

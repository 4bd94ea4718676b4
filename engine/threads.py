"""How many threads each rank's BLAS and Numba may use: the cores this process may run on,
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
    """Limit BLAS (through threadpoolctl) and Numba's parallel loops to n threads."""
    import numba
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))

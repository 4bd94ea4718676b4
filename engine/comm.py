"""Data parallelism over MPI (mpi4py): rank 0's parameters are broadcast, and gradients are
averaged with one allreduce per bucket of the flat gradient buffer, each started the moment
backward has finished the layer that owns it, so communication overlaps the rest of backward.

One process started without a launcher uses no MPI at all. With CuPy arrays the buffers go
straight to a CUDA-aware MPI, through pinned host memory to one that is not, or through NCCL
(`comm="nccl"`), whose unique id travels over MPI.
"""
import os
import sys
import time

import numpy as np

from engine.backend import array_module, synchronize

# Set by mpiexec/mpirun of MPICH, Intel MPI, Open MPI, and by PMIx/Slurm launchers.
LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
COMM_KINDS = ("mpi", "nccl")

_world = None


def world():
    """The process's Comm, made on first use."""
    global _world
    if _world is None:
        _world = Comm()
    return _world


def launched_by_mpi():
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


class Comm:
    """Rank, size and the few collectives nano2 needs, over COMM_WORLD or over nothing."""

    def __init__(self):
        self.mpi = None
        self.rank, self.world_size, self.local_rank, self.local_size = 0, 1, 0, 1
        if launched_by_mpi():
            from mpi4py import MPI
            self.mpi = MPI
            self.comm = MPI.COMM_WORLD
            self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
            local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
            local.Free()

    @property
    def is_root(self):
        return self.rank == 0

    def barrier(self):
        if self.world_size > 1:
            self.comm.Barrier()

    def broadcast_array(self, array, root=0):
        """Overwrite `array` (host or device) with root's, in place."""
        if self.world_size > 1:
            with host_view(array, self) as buffer:
                self.comm.Bcast(buffer, root=root)

    def broadcast_object(self, value, root=0):
        return self.comm.bcast(value, root=root) if self.world_size > 1 else value

    def gather(self, value):
        """Every rank's `value` as a list on the root, in rank order; None on the other ranks."""
        return self.comm.gather(value, root=0) if self.world_size > 1 else [value]

    def sum_floats(self, values):
        """The elementwise sum over ranks of a short list of Python floats."""
        if self.world_size == 1:
            return list(values)
        total = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self.mpi.IN_PLACE, total, op=self.mpi.SUM)
        return total.tolist()

    def abort(self, status):
        """End every rank of the job now (a rank that raised must not leave the others waiting)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.world_size > 1:
            # The launcher forwards each rank's output through a pipe and drops what is still in
            # it when the job is torn down: give it a moment, or the rank's last words are lost.
            time.sleep(1.0)
            self.comm.Abort(status)
        sys.exit(status)


def mpi_is_cuda_aware(MPI):
    """Whether the MPI library takes device pointers: NANO2_MPI_CUDA_AWARE=1/0 decides if set,
    else the library's own answer (MPI_Query_cuda_support, MPICH and Open MPI >= 5), else no."""
    override = os.environ.get("NANO2_MPI_CUDA_AWARE")
    if override is not None:
        return override.strip().lower() in ("1", "true", "yes")
    query = getattr(MPI, "Query_cuda_support", None)
    return bool(query()) if query is not None else False


class host_view:
    """A buffer MPI can read and write for `array`: the array itself on the host or with a
    CUDA-aware MPI (after the stream has finished writing it), else a pinned host copy that is
    written back to the device on exit."""

    def __init__(self, array, comm):
        self.array, self.comm = array, comm

    def __enter__(self):
        xp = array_module(self.array)
        if xp is np:
            return self.array
        synchronize(xp)
        if mpi_is_cuda_aware(self.comm.mpi):
            return self.array
        self.staged = pinned_empty(self.array.shape, self.array.dtype)
        self.array.get(out=self.staged)
        return self.staged

    def __exit__(self, *exc):
        if hasattr(self, "staged"):
            self.array.set(self.staged)


def pinned_empty(shape, dtype):
    import cupyx
    return cupyx.empty_pinned(shape, dtype=dtype)


class GradientAllreduce:
    """Averages the flat gradient buffer over ranks, bucket by bucket.

    `buckets` ({name: (start, stop)}, from the model) are contiguous slices of the buffer;
    `ready(name)` is called by the model's backward when every gradient in bucket `name` is
    final, and starts a non-blocking allreduce of that slice.
    `finish()` waits for all of them and divides by the number of ranks. `comm_seconds` adds
    up the time spent posting and waiting, the part of the step communication did not hide.
    """

    def __init__(self, comm, store, buckets, kind="mpi"):
        self.comm, self.store, self.buckets, self.kind = comm, store, buckets, kind
        self.pending = []
        self.comm_seconds = 0.0
        self.xp = store.xp
        if comm.world_size > 1 and self.xp is not np:
            self.cuda_aware = mpi_is_cuda_aware(comm.mpi)
            if kind == "nccl":
                self.nccl = nccl_communicator(comm)
            elif not self.cuda_aware:
                self.staged = pinned_empty(store.grad.shape, store.grad.dtype)

    def ready(self, name):
        if self.comm.world_size == 1:
            return
        started = time.perf_counter()
        start, stop = self.buckets[name]
        grad = self.store.grad[start:stop]
        MPI = self.comm.mpi
        if self.xp is np:
            self.pending.append(self.comm.comm.Iallreduce(MPI.IN_PLACE, grad, op=MPI.SUM))
        elif self.kind == "nccl":
            nccl_allreduce_sum(self.nccl, grad)
        elif self.cuda_aware:
            synchronize(self.xp)
            self.pending.append(self.comm.comm.Iallreduce(MPI.IN_PLACE, grad, op=MPI.SUM))
        else:
            host = self.staged[start:stop]
            grad.get(out=host, stream=self.xp.cuda.get_current_stream())
            synchronize(self.xp)
            self.pending.append(self.comm.comm.Iallreduce(MPI.IN_PLACE, host, op=MPI.SUM))
        self.comm_seconds += time.perf_counter() - started

    def finish(self):
        if self.comm.world_size == 1:
            return
        started = time.perf_counter()
        if self.pending:
            self.comm.mpi.Request.Waitall(self.pending)
            self.pending = []
        if self.xp is not np and self.kind != "nccl" and not self.cuda_aware:
            self.store.grad.set(self.staged)
        self.store.grad *= self.store.grad.dtype.type(1.0 / self.comm.world_size)
        synchronize(self.xp)
        self.comm_seconds += time.perf_counter() - started


def nccl_communicator(comm):
    """An NCCL communicator over the MPI ranks; rank 0 makes the unique id and broadcasts it."""
    from cupy.cuda import nccl
    unique_id = nccl.get_unique_id() if comm.is_root else None
    unique_id = comm.broadcast_object(unique_id)
    return nccl.NcclCommunicator(comm.world_size, unique_id, comm.rank)


def nccl_allreduce_sum(communicator, array):
    """In-place sum over ranks on the current stream (asynchronous, like every NCCL call)."""
    import cupy
    from cupy.cuda import nccl
    dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
    communicator.allReduce(array.data.ptr, array.data.ptr, array.size, dtypes[array.dtype],
                           nccl.NCCL_SUM, cupy.cuda.get_current_stream().ptr)

"""Data parallelism over MPI (mpi4py): rank 0's parameters are broadcast, and gradients are
averaged with one allreduce per bucket of the flat gradient buffer, each started the moment
backward has finished the layer that owns it, so communication overlaps the rest of backward.

One process started without a launcher uses no MPI at all. With CuPy arrays the buffers go
straight to a CUDA-aware MPI, through pinned host memory to one that is not, or through NCCL
(`comm="nccl"`), whose unique id travels over MPI.
"""
import atexit
import os
import signal
import sys
import time

import numpy as np

from engine.backend import array_module, synchronize
from engine.errors import CommTimeout

# Set by mpiexec/mpirun of MPICH, Intel MPI, Open MPI, and by PMIx/Slurm launchers.
LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
COMM_KINDS = ("mpi", "nccl")
# Seconds a collective may take before the job ends (the comm_timeout config key): PyTorch's
# NCCL default, long enough for rank 0 to write a large checkpoint while the others wait.
DEFAULT_TIMEOUT = 600.0
PROBE, ANSWER = 1, 2  # tags on the probe communicator

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
    """Rank, size and the few collectives nano2 needs, over COMM_WORLD or over nothing.

    Every collective is bounded: it is started non-blocking and waited for at most `timeout`
    seconds (wait), past which a CommTimeout names it and the ranks that did not answer a
    probe, sent on a communicator of its own. A rank answers probes whenever it waits."""

    def __init__(self):
        self.mpi = None
        self.rank, self.world_size, self.local_rank, self.local_size = 0, 1, 0, 1
        self.timeout = DEFAULT_TIMEOUT
        self.cuda_aware_mpi = "auto"  # the config key of that name, set with the timeout
        if launched_by_mpi():
            from mpi4py import MPI
            self.mpi = MPI
            self.comm = MPI.COMM_WORLD
            self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
            local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
            local.Free()
            self.hosts = self.comm.allgather(MPI.Get_processor_name())
            self.probes = self.comm.Dup()
            self.me = np.array([self.rank], np.int64)  # what probes and answers carry; outlives the sends
            self.inbox = np.zeros(1, np.int64)
            self.probe = self.probes.Irecv(self.inbox, source=MPI.ANY_SOURCE, tag=PROBE)
            self.sent = []  # answers and probes in flight
            self.probe_status = MPI.Status()
            atexit.register(self.stop_answering)  # before mpi4py's MPI_Finalize, registered earlier

    def stop_answering(self):
        self.probe.Cancel()
        self.probe.Wait()

    @property
    def is_root(self):
        return self.rank == 0

    def takes_device_buffers(self):
        return mpi_takes_device_buffers(self.cuda_aware_mpi, self.mpi)

    def wait(self, requests, what):
        """Wait for `requests` (non-blocking MPI calls), answering probes meanwhile; after
        self.timeout seconds, a CommTimeout saying `what` did not complete and who is silent."""
        deadline = time.monotonic() + self.timeout
        while not self.mpi.Request.Testall(requests):
            self.answer_probes()
            if time.monotonic() > deadline:
                raise CommTimeout(f"{what} did not complete in {self.timeout:g} s; {self.silent_ranks()}")

    def answer_probes(self):
        while self.probe.Test(self.probe_status):
            self.sent.append(self.probes.Isend(self.me, dest=self.probe_status.Get_source(), tag=ANSWER))
            self.probe = self.probes.Irecv(self.inbox, source=self.mpi.ANY_SOURCE, tag=PROBE)
        if self.sent:
            self.sent = [request for request in self.sent if not request.Test()]

    def silent_ranks(self):
        """'rank 1 (host2) did not answer', from probes to every other rank and a few seconds
        for their answers (a rank waiting in any collective answers at once)."""
        peers = [r for r in range(self.world_size) if r != self.rank]
        self.sent += [self.probes.Isend(self.me, dest=peer, tag=PROBE) for peer in peers]
        answers = {peer: self.probes.Irecv(np.zeros(1, np.int64), source=peer, tag=ANSWER) for peer in peers}
        deadline = time.monotonic() + min(10.0, self.timeout / 2)
        while time.monotonic() < deadline and not all(request.Test() for request in answers.values()):
            self.answer_probes()
            time.sleep(0.01)
        silent = [peer for peer, request in answers.items() if not request.Test()]
        if not silent:
            return "every rank answered a probe"
        names = ", ".join(f"{peer} ({self.hosts[peer]})" for peer in silent)
        return f"rank{'s' if len(silent) > 1 else ''} {names} did not answer"

    def arrive(self, what):
        """A bounded barrier: after it every rank is here, so a blocking call that follows
        (the object collectives, which have no non-blocking form) cannot wait on a lost rank."""
        self.wait([self.comm.Ibarrier()], what)

    def barrier(self, what="a barrier"):
        if self.world_size > 1:
            self.arrive(what)

    def broadcast_array(self, array, root=0, what="a broadcast"):
        """Overwrite `array` (host or device) with root's, in place."""
        if self.world_size > 1:
            with host_view(array, self) as buffer:
                self.wait([self.comm.Ibcast(buffer, root=root)], what)

    def broadcast_object(self, value, root=0, what="a broadcast"):
        if self.world_size == 1:
            return value
        self.arrive(what)
        return self.comm.bcast(value, root=root)

    def gather(self, value, what="a gather"):
        """Every rank's `value` as a list on the root, in rank order; None on the other ranks."""
        if self.world_size == 1:
            return [value]
        self.arrive(what)
        return self.comm.gather(value, root=0)

    def sum_floats(self, values, what="an allreduce"):
        """The elementwise sum over ranks of a short list of Python floats."""
        if self.world_size == 1:
            return list(values)
        total = np.array(values, dtype=np.float64)
        self.wait([self.comm.Iallreduce(self.mpi.IN_PLACE, total, op=self.mpi.SUM)], what)
        return total.tolist()

    def shard(self, numel):
        """This rank's slice of a flat buffer of numel entries (ZeRO-1): the ranks' slices are
        consecutive and differ in size by one entry at most, so none needs padding."""
        counts, offsets = self.shard_layout(numel)
        return slice(offsets[self.rank], offsets[self.rank] + counts[self.rank])

    def shard_layout(self, numel):
        """(counts, offsets) of every rank's shard, for the v-collectives."""
        offsets = [r * numel // self.world_size for r in range(self.world_size + 1)]
        return [b - a for a, b in zip(offsets, offsets[1:])], offsets[:-1]

    def gather_shards(self, shard, numel, what="the optimizer state's gather"):
        """Every rank's shard (host arrays) put together on rank 0; None on the other ranks."""
        whole = np.empty(numel, shard.dtype) if self.is_root else None
        counts, offsets = self.shard_layout(numel)
        self.wait([self.comm.Igatherv(shard, [whole, (counts, offsets)] if self.is_root else None, root=0)], what)
        return whole

    def scatter_shards(self, whole, size, dtype, what="the optimizer state's scatter"):
        """Rank 0's `whole` (a host array; None elsewhere) handed out: each rank's shard, of
        `size` entries, as a host array."""
        shard = np.empty(size, dtype)
        layout = self.shard_layout(whole.size) if self.is_root else None
        self.wait([self.comm.Iscatterv([whole, layout] if self.is_root else None, shard, root=0)], what)
        return shard

    def allgather_shards(self, whole, what="the parameters' all-gather"):
        """Fill every rank's copy of `whole` with the shards the other ranks hold of it."""
        self.wait([self.comm.Iallgatherv(self.mpi.IN_PLACE, [whole, self.shard_layout(whole.size)])], what)

    def abort(self, status):
        """End every rank of the job now (a rank that raised must not leave the others waiting)."""
        if self.world_size > 1:
            # MPI_Abort asks the process manager to end the job. On a host cut off from it the
            # call may fail, return or block (holding the GIL, so no Python thread could act),
            # and so may a flush into a full pipe: the kernel's alarm ends this process anyway.
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(12)
        sys.stdout.flush()
        sys.stderr.flush()
        if self.world_size > 1:
            # The launcher forwards each rank's output through a pipe and drops what is still in
            # it when the job is torn down: give it a moment, or the rank's last words are lost.
            time.sleep(1.0)
            try:
                self.comm.Abort(status)
            finally:
                os._exit(status)
        sys.exit(status)


def mpi_cuda_support(MPI):
    """The MPI library's own answer to whether it takes device pointers, or None where it has
    no way to say. mpi4py 4.1 does not wrap the query, so it is asked of the library itself:
    MPIX_Query_cuda_support, which MPICH (4.0 on) and Open MPI (4.0 on, mpi-ext.h) export, found
    through mpi4py's extension module, which links the library."""
    query = getattr(MPI, "Query_cuda_support", None)
    if query is not None:
        return bool(query())
    import ctypes
    try:
        return bool(ctypes.CDLL(MPI.__file__).MPIX_Query_cuda_support())
    except (OSError, AttributeError):
        return None


def mpi_takes_device_buffers(choice, MPI):
    """The cuda_aware_mpi config key: "yes" or "no" as said, "auto" as the library answers
    (no, where it cannot say)."""
    if choice == "auto":
        return bool(mpi_cuda_support(MPI))
    return choice == "yes"


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
        if self.comm.takes_device_buffers():
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

    With `zero=1` (ZeRO-1) each bucket is reduce-scattered instead: a rank receives the sums
    of the part of the bucket inside its shard (comm.shard), and finish() leaves the average
    of its shard alone in place, for its optimizer; gather_parameters() then all-gathers the
    updated shards. Without it, gather_parameters() has nothing to do.
    """

    def __init__(self, comm, store, buckets, kind="mpi", zero=0):
        self.comm, self.store, self.buckets, self.kind = comm, store, buckets, kind
        self.pending = []
        self.comm_seconds = 0.0
        self.xp = store.xp
        self.shard = comm.shard(store.numel) if zero and comm.world_size > 1 else None
        self.layout = comm.shard_layout(store.numel)  # (counts, offsets) of every rank's shard
        self.staged = None  # pinned host buffers, for an MPI that takes no device buffers
        if comm.world_size > 1 and self.xp is not np:
            self.cuda_aware = comm.takes_device_buffers()
            if kind == "nccl":
                self.nccl = nccl_communicator(comm)
            elif not self.cuda_aware:
                self.staged = pinned_empty(store.grad.shape, store.grad.dtype)
        if self.shard is not None:  # where this rank receives the sums of its shard
            size = self.shard.stop - self.shard.start
            self.reduced = (self.xp.empty(size, store.dtype) if self.staged is None
                            else pinned_empty((size,), store.dtype))

    def ready(self, name):
        if self.comm.world_size == 1:
            return
        started = time.perf_counter()
        start, stop = self.buckets[name]
        grad = self.store.grad[start:stop]
        MPI = self.comm.mpi
        if self.shard is not None:
            self.pending += self.reduce_scatter(start, stop)
        elif self.xp is np:
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
            self.comm.wait(self.pending, "the gradient allreduce")
            self.pending = []
        average = self.store.grad.dtype.type(1.0 / self.comm.world_size)
        if self.shard is not None:
            grad = self.store.grad[self.shard]
            if self.staged is not None:
                grad.set(self.reduced)
                grad *= average
            else:
                self.xp.multiply(self.reduced, average, out=grad)
        else:
            if self.staged is not None:
                self.store.grad.set(self.staged)
            self.store.grad *= average
        self.synchronize("the gradient allreduce")
        self.comm_seconds += time.perf_counter() - started

    def synchronize(self, what):
        """Wait for the device's queued work; NCCL's collectives are in that queue, so there the
        wait is bounded by comm_timeout as MPI's are, and a timed-out communicator is aborted."""
        if self.xp is np or self.kind != "nccl":
            synchronize(self.xp)
            return
        done = self.xp.cuda.Event(disable_timing=True)
        done.record()
        deadline = time.monotonic() + self.comm.timeout
        while not done.done:
            self.comm.answer_probes()
            if time.monotonic() > deadline:
                self.nccl.abort()
                raise CommTimeout(f"{what} (NCCL) did not complete in {self.comm.timeout:g} s; "
                                  f"{self.comm.silent_ranks()}")

    def reduce_scatter(self, start, stop):
        """Start summing grad[start:stop] over ranks, each rank receiving the part inside its
        shard (possibly none) into its place in self.reduced; the MPI requests to wait for.
        NCCL has no reduce-scatter of uneven parts, so there each part is reduced to its owner."""
        counts, offsets = self.layout
        parts = [max(0, min(stop, o + c) - max(start, o)) for c, o in zip(counts, offsets)]
        first = max(start, self.shard.start) - self.shard.start
        received = self.reduced[first:first + parts[self.comm.rank]]
        grad = self.store.grad[start:stop]
        if self.xp is not np and self.kind == "nccl":
            from cupy.cuda import nccl
            nccl.groupStart()
            for owner, (count, offset) in enumerate(zip(parts, offsets)):
                if count:
                    part = grad[max(start, offset) - start:][:count]
                    into = received if owner == self.comm.rank else part  # read on the owner alone
                    self.nccl.reduce(part.data.ptr, into.data.ptr, count, nccl_dtype(part), nccl.NCCL_SUM, owner,
                                     self.xp.cuda.get_current_stream().ptr)
            nccl.groupEnd()
            return []
        if self.staged is not None:
            grad = self.staged[start:stop]
            self.store.grad[start:stop].get(out=grad, stream=self.xp.cuda.get_current_stream())
        synchronize(self.xp)
        return [self.comm.comm.Ireduce_scatter(grad, received, parts, op=self.comm.mpi.SUM)]

    def sum_over_shards(self, value):
        """A number summed over the ranks' shards under ZeRO-1; without it, each rank holds
        every shard, and the number is already the whole."""
        return value if self.shard is None else self.comm.sum_floats([value], "the gradient norm's allreduce")[0]

    def gather_parameters(self):
        """ZeRO-1: every rank's updated shard of the parameters, to every rank."""
        if self.shard is None:
            return
        started = time.perf_counter()
        data = self.store.data
        if self.xp is not np and self.kind == "nccl":
            from cupy.cuda import nccl
            nccl.groupStart()
            for owner, (count, offset) in enumerate(zip(*self.layout)):
                part = data[offset:offset + count]
                self.nccl.bcast(part.data.ptr, count, nccl_dtype(part), owner, self.xp.cuda.get_current_stream().ptr)
            nccl.groupEnd()
        elif self.staged is not None:  # the gradients are in place by now, so their buffer is free
            data[self.shard].get(out=self.staged[self.shard], stream=self.xp.cuda.get_current_stream())
            synchronize(self.xp)
            self.comm.allgather_shards(self.staged)
            data.set(self.staged)
        else:
            synchronize(self.xp)
            self.comm.allgather_shards(data)
        self.synchronize("the parameters' all-gather")
        self.comm_seconds += time.perf_counter() - started


def nccl_communicator(comm):
    """An NCCL communicator over the MPI ranks; rank 0 makes the unique id and broadcasts it."""
    from cupy.cuda import nccl
    unique_id = nccl.get_unique_id() if comm.is_root else None
    unique_id = comm.broadcast_object(unique_id)
    return nccl.NcclCommunicator(comm.world_size, unique_id, comm.rank)


def nccl_dtype(array):
    from cupy.cuda import nccl
    return {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}[array.dtype]


def nccl_allreduce_sum(communicator, array):
    """In-place sum over ranks on the current stream (asynchronous, like every NCCL call)."""
    import cupy
    from cupy.cuda import nccl
    communicator.allReduce(array.data.ptr, array.data.ptr, array.size, nccl_dtype(array),
                           nccl.NCCL_SUM, cupy.cuda.get_current_stream().ptr)

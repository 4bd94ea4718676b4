"""Data parallelism over MPI (mpi4py): rank 0's parameters are broadcast, and gradients are
averaged with one allreduce per bucket of the flat gradient buffer, each started the moment
backward has finished the layer that owns it, so communication overlaps the rest of backward.

One process started without a launcher uses no MPI at all. With CuPy arrays the buffers go
straight to a CUDA-aware MPI, through pinned host memory to one that is not, or through NCCL
(`comm="nccl"`), whose unique id travels over MPI.
"""
import atexit
import os
import queue
import signal
import sys
import threading
import time
from concurrent.futures import Future

import numpy as np

from engine.backend import array_module
from engine.errors import CommTimeout, UserError

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
        """Wait for `requests` (non-blocking MPI calls, or calls on_thread), answering probes
        meanwhile; after self.timeout seconds, a CommTimeout saying `what` did not complete and
        who is silent."""
        deadline = time.monotonic() + self.timeout
        while not all(request.Test() for request in requests):
            self.answer_probes()
            time.sleep(5e-5)  # lets the comm thread take the GIL, which a spinning loop would hold
            if time.monotonic() > deadline:
                raise CommTimeout(f"{what} did not complete in {self.timeout:g} s; {self.silent_ranks()}")

    def on_thread(self, call):
        """Run call() on this process's communication thread, after the calls queued before it;
        a request that wait() takes. The thread blocks in the call while this one goes on."""
        self.start_comm_thread()
        done = Future()
        self.calls.put((call, done))
        return ThreadRequest(done)

    def start_comm_thread(self):
        """Start the thread on_thread runs calls on, once; MPI must then take calls from two threads."""
        if hasattr(self, "calls"):
            return
        if self.mpi.Query_thread() < self.mpi.THREAD_MULTIPLE:
            raise UserError("MPI on device buffers runs on a thread of its own and needs MPI_THREAD_MULTIPLE, "
                            "which this MPI library does not give; use comm=nccl")
        self.calls = queue.SimpleQueue()
        threading.Thread(target=self.run_calls, name="nano2-comm", daemon=True).start()

    def run_calls(self):
        while True:
            call, done = self.calls.get()
            try:
                done.set_result(call())
            except Exception as e:  # handed to the waiting thread, which raises it
                done.set_exception(e)

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

    def start(self, nonblocking, blocking, *args, after=None, **kwargs):
        """Start an MPI collective: `nonblocking` (comm.Ibcast) on host buffers; on device buffers,
        `blocking` (comm.Bcast) on the comm thread inside `after` (a DeviceReady), for MPI
        libraries take device memory in blocking collectives only (Open MPI's CUDA support lists
        no non-blocking one, over UCX either). A request for wait()."""
        if after is None:
            return nonblocking(*args, **kwargs)

        def call():
            with after:
                blocking(*args, **kwargs)
        return self.on_thread(call)

    def broadcast_array(self, array, root=0, what="a broadcast"):
        """Overwrite `array` (host or device) with root's, in place."""
        if self.world_size > 1:
            with host_view(array, self) as (buffer, after):
                self.wait([self.start(self.comm.Ibcast, self.comm.Bcast, buffer, root=root, after=after)], what)

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

    def allgather_shards(self, whole, what="the parameters' all-gather", after=None):
        """Fill every rank's copy of `whole` with the shards the other ranks hold of it (a device
        array inside `after`, as in start)."""
        self.wait([self.start(self.comm.Iallgatherv, self.comm.Allgatherv, self.mpi.IN_PLACE,
                              [whole, self.shard_layout(whole.size)], after=after)], what)

    def allgather_parts(self, array, layout, what):
        """Fill every rank's `array` (host or device) with the parts, (counts, offsets) in
        `layout`, that the other ranks wrote of it."""
        with host_view(array, self) as (buffer, after):
            self.wait([self.start(self.comm.Iallgatherv, self.comm.Allgatherv, self.mpi.IN_PLACE,
                                  [buffer, layout], after=after)], what)

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


class DeviceReady:
    """Where the comm thread makes a collective on device memory: on the device of the thread
    that made this (CUDA's current device is a thread's own), once the work queued so far on
    `stream` (the current one by default) is done, as `event` records."""

    def __init__(self, xp, stream=None):
        self.device = xp.cuda.Device()
        self.event = (stream or xp.cuda.get_current_stream()).record()

    def __enter__(self):
        self.device.__enter__()
        self.event.synchronize()

    def __exit__(self, *exc):
        self.device.__exit__(*exc)


class ThreadRequest:
    """A call queued on Comm.on_thread, tested as an MPI request is; its error raised by Test."""

    def __init__(self, done):
        self.done = done

    def Test(self):
        if not self.done.done():
            return False
        self.done.result()
        return True


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
    """(buffer, after) for MPI to read and write `array`: the array itself on the host (after:
    None), or with a CUDA-aware MPI (after: a DeviceReady, for Comm.start), else a pinned host
    copy (after: None) that is written back to the device on exit."""

    def __init__(self, array, comm):
        self.array, self.comm = array, comm

    def __enter__(self):
        xp = array_module(self.array)
        if xp is np:
            return self.array, None
        if self.comm.takes_device_buffers():
            return self.array, DeviceReady(xp)
        self.staged = pinned_empty(self.array.shape, self.array.dtype)
        self.array.get(out=self.staged)
        return self.staged, None

    def __exit__(self, *exc):
        if hasattr(self, "staged"):
            self.array.set(self.staged)
            self.array.device.synchronize()  # the copy is asynchronous, and its pinned source freed next


def pinned_empty(shape, dtype):
    import cupyx
    return cupyx.empty_pinned(shape, dtype=dtype)


class GradientAllreduce:
    """Averages the flat gradient buffer over ranks, bucket by bucket.

    `buckets` ({name: (start, stop)}, from the model) are contiguous slices of the buffer;
    `ready(name)` is called by the model's backward when every gradient in bucket `name` is
    final, and starts summing that slice over the ranks. `finish()` waits for all of them and
    divides by the number of ranks. take_comm_seconds() gives the communication the step waited
    for, which backward did not hide: on the host, the time spent posting and waiting; on the
    GPU, from backward's end to the averaged gradients, read from CUDA events on its stream.

    On the GPU the host never waits for the device to start a bucket: it records an event after
    the bucket's backward and goes on launching kernels. NCCL runs on a stream of its own, which
    waits for that event; over MPI, the collectives run on the comm thread (Comm.start), which
    waits for the event first (and, for an MPI that takes no device buffers, for the bucket's
    copy to pinned host memory on a side stream).

    With `zero=1` (ZeRO-1) each bucket is reduce-scattered instead: a rank receives the sums
    of the part of the bucket inside its shard (comm.shard), and finish() leaves the average
    of its shard alone in place, for its optimizer; gather_parameters() then all-gathers the
    updated shards. Without it, gather_parameters() has nothing to do.
    """

    def __init__(self, comm, store, buckets, kind="mpi", zero=0):
        self.comm, self.store, self.buckets, self.kind = comm, store, buckets, kind
        self.pending = []
        self.host_seconds, self.spans = 0.0, []  # spans: (start, end) CUDA events of waiting on comm
        self.xp = store.xp
        self.shard = comm.shard(store.numel) if zero and comm.world_size > 1 else None
        self.layout = comm.shard_layout(store.numel)  # (counts, offsets) of every rank's shard
        self.staged = None  # pinned host buffers, for an MPI that takes no device buffers
        self.on_device = comm.world_size > 1 and self.xp is not np
        if self.on_device:
            self.side = self.xp.cuda.Stream(non_blocking=True)  # NCCL's, or the copies to the host
            if kind == "nccl":
                self.nccl = nccl_communicator(comm)
            else:
                comm.start_comm_thread()
                if not comm.takes_device_buffers():
                    self.staged = pinned_empty(store.grad.shape, store.grad.dtype)
        if self.shard is not None:  # where this rank receives the sums of its shard
            size = self.shard.stop - self.shard.start
            self.reduced = (self.xp.empty(size, store.dtype) if self.staged is None
                            else pinned_empty((size,), store.dtype))

    def ready(self, name):
        if self.comm.world_size == 1:
            return
        start, stop = self.buckets[name]
        if not self.on_device:
            started = time.perf_counter()
            self.pending.append(self.mpi_sum(self.store.grad, start, stop))
            self.host_seconds += time.perf_counter() - started
            return
        backward_done = DeviceReady(self.xp)
        if self.kind == "nccl":
            self.side.wait_event(backward_done.event)
            self.nccl_sum(start, stop)
        elif self.staged is not None:
            self.side.wait_event(backward_done.event)
            self.store.grad[start:stop].get(out=self.staged[start:stop], stream=self.side, blocking=False)
            self.pending.append(self.mpi_sum(self.staged, start, stop, after=DeviceReady(self.xp, self.side)))
        else:
            self.pending.append(self.mpi_sum(self.store.grad, start, stop, after=backward_done))

    def mpi_sum(self, buffer, start, stop, after=None):
        """Start summing buffer[start:stop] over ranks (Comm.start: `after` for device memory):
        in place, or under ZeRO-1 each rank receiving the part inside its shard into its place
        in self.reduced."""
        comm, MPI = self.comm, self.comm.mpi
        if self.shard is None:
            return comm.start(comm.comm.Iallreduce, comm.comm.Allreduce, MPI.IN_PLACE, buffer[start:stop],
                              op=MPI.SUM, after=after)
        parts, received = self.shard_parts(start, stop)
        return comm.start(comm.comm.Ireduce_scatter, comm.comm.Reduce_scatter, buffer[start:stop], received, parts,
                          op=MPI.SUM, after=after)

    def shard_parts(self, start, stop):
        """How many entries of the bucket start:stop fall in each rank's shard, and where this
        rank's part goes in self.reduced."""
        counts, offsets = self.layout
        parts = [max(0, min(stop, o + c) - max(start, o)) for c, o in zip(counts, offsets)]
        first = max(start, self.shard.start) - self.shard.start
        return parts, self.reduced[first:first + parts[self.comm.rank]]

    def nccl_sum(self, start, stop):
        """mpi_sum through NCCL, on the side stream. NCCL has no reduce-scatter of uneven parts,
        so under ZeRO-1 each part is reduced to its owner."""
        from cupy.cuda import nccl
        grad, stream = self.store.grad[start:stop], self.side.ptr
        if self.shard is None:
            self.nccl.allReduce(grad.data.ptr, grad.data.ptr, grad.size, nccl_dtype(grad), nccl.NCCL_SUM, stream)
            return
        parts, received = self.shard_parts(start, stop)
        nccl.groupStart()
        for owner, (count, offset) in enumerate(zip(parts, self.layout[1])):
            if count:
                part = grad[max(start, offset) - start:][:count]
                into = received if owner == self.comm.rank else part  # read on the owner alone
                self.nccl.reduce(part.data.ptr, into.data.ptr, count, nccl_dtype(part), nccl.NCCL_SUM, owner, stream)
        nccl.groupEnd()

    def finish(self):
        if self.comm.world_size == 1:
            return
        started = time.perf_counter()
        span_start = self.xp.cuda.get_current_stream().record() if self.on_device else None
        if self.pending:
            self.comm.wait(self.pending, "the gradient allreduce")
            self.pending = []
        if self.on_device and self.kind == "nccl":
            self.wait_for_side("the gradient allreduce")
        average = self.store.grad.dtype.type(1.0 / self.comm.world_size)
        if self.shard is not None:
            grad = self.store.grad[self.shard]
            if self.staged is not None:
                grad.set(self.reduced)  # not waited for: the buffer's next writer, next step's MPI
                grad *= average         # call, waits for an event the compute stream records later
            else:
                self.xp.multiply(self.reduced, average, out=grad)
        else:
            if self.staged is not None:
                self.store.grad.set(self.staged)
            self.store.grad *= average
        self.end_span(span_start, started)

    def end_span(self, span_start, started):
        """Count the time since `started` (host) or the CUDA event span_start (GPU) as waiting."""
        if span_start is None:
            self.host_seconds += time.perf_counter() - started
        else:
            self.spans.append((span_start, self.xp.cuda.get_current_stream().record()))

    def take_comm_seconds(self):
        """The seconds counted since the last call; on the GPU, this waits for the spans' events."""
        seconds, self.host_seconds = self.host_seconds, 0.0
        for start, end in self.spans:
            end.synchronize()
            seconds += self.xp.cuda.get_elapsed_time(start, end) / 1e3
        self.spans = []
        return seconds

    def wait_for_side(self, what):
        """Wait for NCCL's stream, up to comm_timeout (a timed-out communicator is aborted), and
        order the compute stream after it."""
        done = self.side.record()
        deadline = time.monotonic() + self.comm.timeout
        while not done.done:
            self.comm.answer_probes()
            if time.monotonic() > deadline:
                self.nccl.abort()
                raise CommTimeout(f"{what} (NCCL) did not complete in {self.comm.timeout:g} s; "
                                  f"{self.comm.silent_ranks()}")
        self.xp.cuda.get_current_stream().wait_event(done)

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
        if not self.on_device:
            self.comm.allgather_shards(data)
            self.end_span(None, started)
            return
        updated = DeviceReady(self.xp)
        if self.kind == "nccl":
            from cupy.cuda import nccl
            self.side.wait_event(updated.event)
            nccl.groupStart()
            for owner, (count, offset) in enumerate(zip(*self.layout)):
                part = data[offset:offset + count]
                self.nccl.bcast(part.data.ptr, count, nccl_dtype(part), owner, self.side.ptr)
            nccl.groupEnd()
            self.wait_for_side("the parameters' all-gather")
        elif self.staged is not None:  # the gradients are in place by now, so their buffer is free
            data[self.shard].get(out=self.staged[self.shard])
            self.comm.allgather_shards(self.staged)
            data.set(self.staged)
        else:
            self.comm.allgather_shards(data, after=updated)
        self.end_span(updated.event, started)


def nccl_communicator(comm):
    """An NCCL communicator over the MPI ranks; rank 0 makes the unique id and broadcasts it."""
    from cupy.cuda import nccl
    if not nccl.available:
        raise UserError("comm=nccl: CuPy finds no NCCL (it comes with .[cuda12] and .[cuda13], or pip install "
                        "nvidia-nccl-cu12 / nvidia-nccl-cu13); or use comm=mpi")
    unique_id = nccl.get_unique_id() if comm.is_root else None
    unique_id = comm.broadcast_object(unique_id)
    return nccl.NcclCommunicator(comm.world_size, unique_id, comm.rank)


def nccl_dtype(array):
    from cupy.cuda import nccl
    return {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}[array.dtype]


"""The gradient allreduce, and ZeRO-1's reduce-scatter and all-gather, on device buffers: staged
through pinned host memory, straight to a CUDA-aware MPI, and through NCCL. Runs only where
CuPy sees a GPU (the MPI paths let two ranks share one GPU; NCCL needs two)."""
import subprocess
import sys
import textwrap

import pytest
from helpers import MPIEXEC, needs_mpiexec

cupy = pytest.importorskip("cupy", reason="needs CuPy (pip install -e '.[cuda12]' or '.[cuda13]')")
pytestmark = [pytest.mark.skipif(not cupy.cuda.is_available(), reason="no CUDA device here"), needs_mpiexec]

# With zero=1, each rank ends with the mean of its own shard of the gradients, and the
# all-gather hands every rank each owner's shard of the parameters.
SCRIPT = textwrap.dedent("""
    import cupy, numpy as np
    from engine import comm
    from engine.comm import GradientAllreduce
    from layers.model import Decoder, ModelConfig
    world = comm.world()
    world.cuda_aware_mpi = "{cuda_aware}"
    cupy.cuda.Device(world.local_rank % cupy.cuda.runtime.getDeviceCount()).use()
    model = Decoder(ModelConfig(64, 16, 2, 2, 32, 8), np.float32, cupy)
    store = model.store
    store.grad[...] = cupy.arange(store.numel, dtype=cupy.float32) * (world.rank + 1)
    sync = GradientAllreduce(world, store, model.gradient_buckets(), "{kind}", zero={zero})
    for name in ("ln_f", "blocks.1", "blocks.0", "tok_emb"):
        sync.ready(name)
    sync.finish()
    waited = sync.take_comm_seconds()  # the CUDA events' span, read once: a second read has nothing
    assert np.isfinite(waited) and sync.take_comm_seconds() == 0.0
    mine = sync.shard or slice(None)
    assert cupy.allclose(store.grad[mine], cupy.arange(store.numel, dtype=cupy.float32)[mine] * 1.5), "wrong mean"
    if sync.shard is None:
        store.data[...] = world.rank + 7
        world.broadcast_array(store.data)
        assert bool((store.data == 7).all()), "broadcast did not take rank 0's values"
    else:
        store.data[...] = -1
        store.data[mine] = world.rank + 7
        sync.gather_parameters()
        counts, offsets = world.shard_layout(store.numel)
        expected = np.repeat(np.arange(world.world_size) + 7, counts).astype(np.float32)
        assert bool((store.data.get() == expected).all()), "the all-gather did not take each owner's shard"
    print("rank", world.rank, "ok")
""")


def cuda_aware_mpi():
    from mpi4py import MPI

    from engine.comm import mpi_cuda_support
    return bool(mpi_cuda_support(MPI))


@pytest.mark.parametrize("zero", [0, 1])
@pytest.mark.parametrize("kind, cuda_aware", [("mpi", "no"), ("mpi", "yes"), ("nccl", "no")])
def test_device_collectives(zero, kind, cuda_aware):
    if cuda_aware == "yes" and not cuda_aware_mpi():
        pytest.skip("this MPI library does not report CUDA support")
    if kind == "nccl" and cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("NCCL refuses two ranks on one GPU (ncclInvalidUsage: duplicate GPU)")
    script = SCRIPT.format(kind=kind, zero=zero, cuda_aware=cuda_aware)
    result = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" ok") == 2

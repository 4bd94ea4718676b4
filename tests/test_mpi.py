"""Data parallelism under `mpiexec -n 2` (the mpich wheel's launcher): the same parameters as
one rank with the same global batch, checkpoints that move between rank counts, a failing
rank that ends the job, and a run folder written by rank 0 alone."""
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import MPIEXEC, assert_parameters_close, assert_trains_like_one_process, final_parameters, needs_mpiexec

from engine.params import read_safetensors
from engine.threads import threads_per_rank
from layers.model import Decoder, ModelConfig

pytestmark = needs_mpiexec
TRAIN = "from train.trainer import entry; entry()"


def launch(n, code, *args, timeout=120):
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, "-c", code, *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-6), ("float64", 1e-12)])
def test_two_ranks_equal_one_rank_with_the_same_global_batch(small_args, tmp_path, dtype, tol):
    def two_ranks(command):
        return subprocess.run([MPIEXEC, "-n", "2", *command], capture_output=True, text=True, timeout=300)
    assert_trains_like_one_process(two_ranks, 2, small_args, tmp_path, dtype, tol)


def test_two_ranks_train_modded_options_as_one(small_args, tmp_path):
    """RMSNorm leaves ln_f without parameters, so without a gradient bucket of its own; an untied
    head's is the first bucket backward finishes; every rank takes every Muon step."""
    def two_ranks(command):
        return subprocess.run([MPIEXEC, "-n", "2", *command], capture_output=True, text=True, timeout=300)
    options = ["--norm=rmsnorm", "--activation=relu2", "--bias=false", "--tie_head=false", "--zero_init_proj=true",
               "--qk_norm=true", "--positions=rotary", "--optimizer=muon",
               "--embedding_lr=0.01", "--head_lr=0.002", "--vector_lr=0.004"]
    modded = small_args[:-1] + options + small_args[-1:]  # out_dir stays last
    assert_trains_like_one_process(two_ranks, 2, modded, tmp_path, "float64", 1e-12)


def final_moments(run_dir, step):
    tensors, _ = read_safetensors(os.path.join(run_dir, f"ckpt-{step:07d}.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith("adam_")}


@pytest.mark.parametrize("ranks", [2, 3])
def test_zero_1_trains_as_zero_0(small_args, tmp_path, ranks):
    common = small_args[:-1] + ["--max_steps=5", "--eval_interval=5", "--dtype=float64", "--batch_size=4",
                                "--embedding_lr=0.01", "--vector_lr=0.004"]  # rates of their own cut by the shards
    plain = launch(ranks, TRAIN, *common, "--zero=0", f"--out_dir={tmp_path / 'plain'}")
    sharded = launch(ranks, TRAIN, *common, "--zero=1", f"--out_dir={tmp_path / 'sharded'}")
    assert plain.returncode == 0, plain.stderr
    assert sharded.returncode == 0, sharded.stderr
    assert "(ZeRO-1)" in sharded.stdout and "(ZeRO-1)" not in plain.stdout
    assert_parameters_close(final_parameters(tmp_path / "sharded", 5), final_parameters(tmp_path / "plain", 5), 1e-12,
                            per_tensor=True)
    # the checkpoint holds the whole moments, gathered from every rank's shard
    assert_parameters_close(final_moments(tmp_path / "sharded", 5), final_moments(tmp_path / "plain", 5), 1e-12,
                            per_tensor=True)


@pytest.mark.parametrize("ranks, zero", [(1, 0), (3, 1)])
def test_a_zero_1_checkpoint_resumes_on_any_rank_count_and_setting(small_args, tmp_path, ranks, zero):
    common = small_args[:-1] + ["--max_steps=8", "--eval_interval=4", "--tokens_per_step=768", "--dtype=float64",
                                "--batch_size=4"]
    two = launch(2, TRAIN, *common, "--zero=1", f"--out_dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr
    (tmp_path / "resumed").mkdir()
    shutil.copy(tmp_path / "two" / "ckpt-0000004.safetensors", tmp_path / "resumed")
    resumed = launch(ranks, TRAIN, *common, f"--zero={zero}", f"--out_dir={tmp_path / 'resumed'}", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    assert_parameters_close(final_parameters(tmp_path / "resumed", 8), final_parameters(tmp_path / "two", 8), 1e-12,
                            per_tensor=True)


def test_a_two_rank_checkpoint_resumes_on_one_rank(small_args, tmp_path):
    common = small_args[:-1] + ["--max_steps=8", "--eval_interval=4", "--tokens_per_step=256", "--dtype=float64"]
    two = launch(2, TRAIN, *common, "--batch_size=4", f"--out_dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr
    (tmp_path / "resumed").mkdir()
    shutil.copy(tmp_path / "two" / "ckpt-0000004.safetensors", tmp_path / "resumed")
    one = launch(1, TRAIN, *common, "--batch_size=4", f"--out_dir={tmp_path / 'resumed'}", "--resume")
    assert one.returncode == 0, one.stderr
    assert "resuming from" in one.stdout and "(2 x 1 x 4 x 32)" in one.stdout
    assert_parameters_close(final_parameters(tmp_path / "resumed", 8), final_parameters(tmp_path / "two", 8), 1e-12,
                            per_tensor=True)


def test_a_rank_that_raises_ends_the_job(small_args):
    code = textwrap.dedent(f"""
        from engine import comm
        import train.trainer as trainer
        real = trainer.learning_rate
        def fail_on_rank_1(step, cfg):
            if comm.world().rank == 1 and step == 2:
                raise RuntimeError("planted failure")
            return real(step, cfg)
        trainer.learning_rate = fail_on_rank_1
        {TRAIN}
    """)
    # Without the Abort, rank 0 would wait in its next allreduce forever: the launch's timeout
    # (subprocess.TimeoutExpired) is what a hang looks like here.
    result = launch(2, code, *small_args, "--max_steps=1000", "--eval_interval=1000", timeout=60)
    assert result.returncode != 0
    assert "nano2_train: rank 1: RuntimeError: planted failure" in result.stderr, result.stderr[-3000:]
    assert "done:" not in result.stdout, "rank 0 must be ended, not left to finish its 1000 steps"


def test_a_collective_past_comm_timeout_ends_the_job_naming_the_silent_rank(small_args):
    code = textwrap.dedent(f"""
        import time
        from engine import comm
        import train.trainer as trainer
        real = trainer.learning_rate
        def stall_on_rank_1(step, cfg):
            if comm.world().rank == 1 and step == 2:
                time.sleep(60)  # busy elsewhere, not in a collective: it cannot answer a probe
            return real(step, cfg)
        trainer.learning_rate = stall_on_rank_1
        {TRAIN}
    """)
    started = time.monotonic()
    result = launch(2, code, *small_args, "--max_steps=1000", "--eval_interval=1000", "--comm_timeout=2", timeout=50)
    assert result.returncode != 0 and time.monotonic() - started < 40
    assert re.search(r"nano2_train: rank 0: step 3: the gradient allreduce did not complete in 2 s; "
                     r"rank 1 \(\S+\) did not answer; ending the job", result.stderr), result.stderr[-3000:]


def test_only_rank_0_writes_files(small_args, tmp_path):
    code = textwrap.dedent(f"""
        import atexit, builtins, os, tempfile
        from engine import comm
        watched = {str(tmp_path)!r}
        writes = []
        def record(path):
            if str(path).startswith(watched):
                writes.append(os.path.basename(str(path)))
        real_open, real_replace, real_mkstemp = builtins.open, os.replace, tempfile.mkstemp
        def open_(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+"):
                record(file)
            return real_open(file, mode, *args, **kwargs)
        def replace(src, dst, *args, **kwargs):
            record(dst)
            return real_replace(src, dst, *args, **kwargs)
        def mkstemp(*args, **kwargs):
            fd, path = real_mkstemp(*args, **kwargs)
            record(path)
            return fd, path
        builtins.open, os.replace, tempfile.mkstemp = open_, replace, mkstemp
        atexit.register(lambda: print(f"rank {{comm.world().rank}} wrote {{sorted(set(writes))}}", flush=True))
        {TRAIN}
    """)
    result = launch(2, code, *small_args, "--max_steps=4", "--eval_interval=2")
    assert result.returncode == 0, result.stderr
    assert "rank 1 wrote []" in result.stdout
    assert "metrics.jsonl" in result.stdout.split("rank 0 wrote")[1].splitlines()[0]
    assert sorted(os.listdir(tmp_path / "run")) == ["best.safetensors", "ckpt-0000002.safetensors",
                                                    "ckpt-0000004.safetensors", "loss.png", "metrics.jsonl"]


def test_threads_are_shared_among_local_ranks():
    assert threads_per_rank(local_size=2, cpu_count=2, affinity=2) == 1
    assert threads_per_rank(local_size=1, cpu_count=2, affinity=2) == 2
    assert threads_per_rank(local_size=4, cpu_count=16, affinity=16) == 4
    assert threads_per_rank(local_size=3, cpu_count=2, affinity=2) == 1
    assert threads_per_rank(local_size=2, cpu_count=16, affinity=3) == 3, "a bound rank keeps its cores"


@pytest.mark.parametrize("options", [{}, {"positions": "learned"}, {"norm": "rmsnorm"}, {"tie_head": False}])
def test_buckets_tile_the_gradient_buffer(options):
    model = Decoder(ModelConfig(256, 16, 3, 2, 32, 8, **options))
    store, buckets = model.store, model.gradient_buckets()
    ln_f = [] if options.get("norm") == "rmsnorm" else ["ln_f"]  # an RMSNorm has no parameters to average
    head = [] if options.get("tie_head", True) else ["head"]
    assert list(buckets) == ["tok_emb", "blocks.0", "blocks.1", "blocks.2", *ln_f, *head]
    edges = sorted(buckets.values())
    assert edges[0][0] == 0 and edges[-1][1] == store.numel
    assert all(a[1] == b[0] for a, b in zip(edges, edges[1:]))


@pytest.mark.parametrize("hosts, expected", [(["-H", "a,b,c", "-N", "2"], "-n 6 -hosts a,b,c -ppn 2"),
                                             (["--hostfile", "HOSTFILE", "-N", "1"], "-n 3 -f HOSTFILE -ppn 1")])
def test_run_mpi_counts_ranks_from_the_hosts(tmp_path, hosts, expected):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a\nb  # the second\n# retired: c\n\nd:2\n")
    launcher = tmp_path / "launcher"
    launcher.write_text('#!/bin/sh\nprintf "%s " "$@" > "$(dirname "$0")/argv"\n')
    launcher.chmod(0o755)
    argv = [str(hostfile) if a == "HOSTFILE" else a for a in hosts]
    result = subprocess.run(["./scripts/run_mpi.sh", *argv, "--", "nano2_train"], capture_output=True, text=True,
                            env={**os.environ, "MPIEXEC": str(launcher)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "argv").read_text().strip() == f"{expected.replace('HOSTFILE', str(hostfile))} " \
                                                      f"{os.path.join('.venv', 'bin', 'nano2_train')}"


def test_whether_mpi_takes_device_buffers_is_the_config_s_choice_or_the_library_s_answer():
    # The library's answer, asked as nano2 asks it: the mpich wheel here is built without CUDA.
    code = "from mpi4py import MPI; from engine.comm import mpi_cuda_support; print(mpi_cuda_support(MPI))"
    answer = launch(1, code)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == "False", "MPICH exports MPIX_Query_cuda_support, so there is an answer"
    from engine.comm import mpi_cuda_support, mpi_takes_device_buffers

    class Silent:  # neither the bindings nor the library (here a file that is no library) can say
        __file__ = __file__

    assert mpi_cuda_support(Silent()) is None and not mpi_takes_device_buffers("auto", Silent())

    class Says:  # an MPI library whose bindings wrap the query (mpi4py >= 4.2, MPI 5)
        def __init__(self, supported):
            self.Query_cuda_support = lambda: supported

    assert mpi_takes_device_buffers("auto", Says(True)) and not mpi_takes_device_buffers("auto", Says(False))
    assert mpi_takes_device_buffers("yes", Says(False)) and not mpi_takes_device_buffers("no", Says(True))


@pytest.mark.parametrize("zero, said", [(0, "non-finite gradient of ln_f.weight"), (1, "non-finite gradient norm nan")])
def test_a_nan_gradient_on_one_rank_stops_every_rank_saying_where(small_args, zero, said):
    # Under ZeRO-1 rank 0 holds no part of ln_f's averaged gradient: it can name the norm only.
    code = textwrap.dedent(f"""
        import numpy as np
        from engine import comm
        from layers.model import Decoder
        real = Decoder.backward
        def nan_on_rank_1(self, *args, **kwargs):
            if comm.world().rank == 1:
                self.store.grads["ln_f.weight"][0] = np.nan
            return real(self, *args, **kwargs)
        Decoder.backward = nan_on_rank_1
        {TRAIN}
    """)
    result = launch(2, code, *small_args, "--max_steps=3", "--eval_interval=3", f"--zero={zero}", timeout=60)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"nano2_train: step 1: {said}" in result.stderr, result.stderr[-3000:]


COMM_THREAD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from engine import comm
    from engine.errors import CommTimeout
    world = comm.world()
    MPI = world.mpi

    class Ready:  # DeviceReady's stand-in: the comm thread enters it (waits for the device) first
        def __init__(self):
            self.passed = False

        def __enter__(self):
            time.sleep(0.3)
            self.passed = True

        def __exit__(self, *exc):
            pass

    def allreduce(buffer, ready):
        return world.start(world.comm.Iallreduce, world.comm.Allreduce, MPI.IN_PLACE, buffer, op=MPI.SUM,
                           after=ready)
""")


def test_device_collectives_run_blocking_on_the_comm_thread_in_order():
    """What the GPU path does with device buffers, MPI offering blocking collectives only there:
    each on the comm thread once its event has passed, the host going on meanwhile."""
    code = COMM_THREAD + textwrap.dedent("""
        buffers = [np.full(5, world.rank + 1.0) * (i + 1) for i in range(3)]
        readies = [Ready() for _ in buffers]
        requests = [allreduce(b, r) for b, r in zip(buffers, readies)]
        assert not any(r.Test() for r in requests), "the host waited for the device"
        world.wait(requests, "the test's allreduce")
        assert all(r.passed for r in readies)
        assert all((b == 3.0 * (i + 1)).all() for i, b in enumerate(buffers)), buffers
        print("ok")
    """)
    result = launch(2, code, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok") == 2  # the ranks' lines may interleave


def test_a_collective_on_the_comm_thread_past_comm_timeout_names_the_silent_rank():
    code = COMM_THREAD + textwrap.dedent("""
        world.timeout = 2
        if world.rank == 1:
            time.sleep(60)  # never joins, nor answers a probe
        try:
            world.wait([allreduce(np.ones(5), Ready())], "the test's allreduce")
        except CommTimeout as e:
            print(e, file=sys.stderr)
            world.abort(3)
    """)
    started = time.monotonic()
    result = launch(2, code, timeout=50)
    assert result.returncode != 0 and time.monotonic() - started < 40
    assert re.search(r"the test's allreduce did not complete in 2 s; rank 1 \(\S+\) did not answer",
                     result.stderr), result.stderr[-3000:]

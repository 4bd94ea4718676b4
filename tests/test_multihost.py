"""Data parallelism across separate network stacks (tests/multihost.py: network namespaces as
hosts, MPI over TCP): the same parameters as one process with the same global batch on 2 and
3 hosts, scripts/run_mpi.sh and the timing commands across hosts, and a cut link or a killed
host that ends the job, leaving checkpoints a run resumes from on one host."""
import glob
import json
import os
import re
import subprocess
import sys
import time

import pytest
from helpers import MPIEXEC, TRAIN, assert_trains_like_one_process, needs_mpiexec
from multihost import LAUNCHER, TCP_ONLY, Hosts

from train.checkpoint import read_checkpoint
from train.config import load_config

pytestmark = [needs_mpiexec, pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def two_hosts():
    with Hosts(2) as hosts:
        yield hosts


def one_process(args):
    return subprocess.run(TRAIN + args, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-6), ("float64", 1e-12)])
def test_two_hosts_train_like_one_process(two_hosts, small_args, tmp_path, dtype, tol):
    assert_trains_like_one_process(two_hosts.run, 2, small_args, tmp_path, dtype, tol)


def test_two_hosts_with_zero_1_train_like_one_process(two_hosts, small_args, tmp_path):
    assert_trains_like_one_process(two_hosts.run, 2, small_args, tmp_path, extra=["--zero=1"])


def test_three_hosts_train_like_one_process(small_args, tmp_path):
    with Hosts(3) as hosts:
        assert_trains_like_one_process(hosts.run, 3, small_args, tmp_path)


def test_run_mpi_sh_across_two_hosts(two_hosts, small_args, tmp_path):
    script = [os.path.join(ROOT, "scripts", "run_mpi.sh"), "-H", "host1,host2", "-N", "1",
              "-launcher", "ssh", "-launcher-exec", LAUNCHER, *TCP_ONLY,
              "--", "nano2_train", *small_args[:-1], "--max_steps=3", "--eval_interval=3",
              f"--out_dir={tmp_path / 'run'}"]
    result = subprocess.run(two_hosts.on_host1(script), capture_output=True, text=True, timeout=300,
                            env=two_hosts.environment(), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert f"{MPIEXEC} -n 2 " in result.stderr or ".venv/bin/mpiexec -n 2 " in result.stderr
    assert "(1 x 2 x 4 x 32)" in result.stdout and os.path.exists(tmp_path / "run" / "ckpt-0000003.safetensors")


@pytest.mark.parametrize("command, iters", [("cpu_fw_entry", "--fw-iters=2"), ("cpu_fwandbw_entry", "--fwbw-iters=2")])
def test_timing_commands_across_two_hosts(two_hosts, command, iters):
    code = f"from train.timing import {command}; {command}()"
    result = two_hosts.run([sys.executable, "-c", code, "--config", "configs/tiny.json", "--batch-size", "2",
                            "--json", iters, "--peak-gflops", "10"])
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout.strip().splitlines()[-1])
    assert r["ranks"] == 2 and r["threads_per_rank"] == 1, "each host is pinned to one core"
    assert r["tokens_per_s"] > 0 and ("comm_ms" in r) == (r["mode"] == "fwbw")


def start_training(hosts, small_args, out_dir):
    """A long two-host training with comm_timeout=5, once its checkpoint at step 20 exists."""
    process = hosts.start(TRAIN + small_args[:-1] + ["--max_steps=100000", "--eval_interval=10", "--comm_timeout=5",
                                                     "--tokens_per_step=256",
                                                     f"--out_dir={out_dir}"])
    deadline = time.monotonic() + 240
    while not os.path.exists(out_dir / "ckpt-0000020.safetensors"):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.2)
    return process


def assert_checkpoints_load(out_dir, cfg):
    paths = glob.glob(str(out_dir / "*.safetensors"))
    assert len(paths) >= 2  # ckpt-0000020 and best
    for path in paths:
        read_checkpoint(path, cfg)


def test_a_cut_link_ends_the_job_and_the_run_resumes_on_one_host(two_hosts, small_args, tmp_path):
    out_dir = tmp_path / "run"
    process = start_training(two_hosts, small_args, out_dir)
    cut = time.monotonic()
    two_hosts.cut("host2")
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0 and time.monotonic() - cut < 30, output
    line = re.search(r"nano2_train: rank 0: step (\d+): (.*) did not complete in 5 s; rank 1 \(host2\) did not answer; "
                     r"ending the job", output)
    assert line, output
    while two_hosts.ranks_on("host2") and time.monotonic() - cut < 40:
        time.sleep(0.5)  # the cut-off rank times out too, and ends itself
    assert two_hosts.ranks_on("host2") == []
    cfg = load_config(None, small_args)
    assert_checkpoints_load(out_dir, cfg)

    last = max(int(p[-18:-12]) for p in glob.glob(str(out_dir / "ckpt-*.safetensors")))
    resumed = one_process(small_args[:-1] + [f"--max_steps={last + 2}", "--tokens_per_step=256", f"--out_dir={out_dir}",
                                             "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {out_dir / f'ckpt-{last:07d}.safetensors'} at step {last}" in resumed.stdout
    assert "(2 x 1 x 4 x 32)" in resumed.stdout, "the same global batch on one rank, by accumulation"
    assert os.path.exists(out_dir / f"ckpt-{last + 2:07d}.safetensors")


def test_a_killed_host_ends_the_job(two_hosts, small_args, tmp_path):
    out_dir = tmp_path / "run"
    process = start_training(two_hosts, small_args, out_dir)
    killed = time.monotonic()
    two_hosts.kill_everything_in(two_hosts.namespace("host2"))
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0 and time.monotonic() - killed < 30, output
    assert two_hosts.ranks_on("host1") == []
    assert_checkpoints_load(out_dir, load_config(None, small_args))

"""The timing commands (train/timing.py): what they report, the per-layer profile, their
errors, the GPU commands on a machine without a GPU, and two ranks under mpiexec. No test
holds a timing to anything but being positive: speed is for bench/, not for tests."""
import json
import subprocess
import sys
import types

import numpy as np
import pytest
from helpers import MPIEXEC, needs_mpiexec

from engine import comm
from train import timing
from train.cli import run_main
from train.config import load_config
from train.data import random_batch
from train.model_setup import build_model
from train.profiler import LayerProfiler, run_profile

SMALL = ["--n_layer=2", "--d_model=32", "--n_head=2", "--d_ff=64", "--seq_len=32", "--batch-size", "2",
         "--warmup", "1"]
PROFILE_ROWS = ["embedding", "positions", "layernorm", "attention core", "linear qkv", "linear attn.proj",
                "linear fc", "gelu", "linear ffn.proj", "head (tied)", "cross-entropy", "other"]
POSITIVE = ("median_ms", "min_ms", "max_ms", "tokens_per_s", "gflops", "peak_gflops", "mfu")


def run(prog, argv, capsys):
    """(exit status, stdout, stderr) of a timing command run in this process."""
    try:
        status = run_main(lambda: timing.main(argv, prog), prog)
    except SystemExit as e:
        status = e.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def run_json(prog, argv, capsys):
    status, out, err = run(prog, SMALL + ["--json"] + argv, capsys)
    assert status == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return json.loads(lines[0])


@pytest.mark.parametrize("prog, iters_flag, mode", [("nano2_cpu_fw", "--fw-iters", "fw"),
                                                    ("nano2_cpu_fwandbw", "--fwbw-iters", "fwbw"),
                                                    ("nano2_cpu_fwandbw", "--fw-bw-iters", "fwbw")])
def test_json_reports_positive_numbers(prog, iters_flag, mode, capsys):
    r = run_json(prog, [iters_flag, "3"], capsys)
    assert (r["command"], r["mode"], r["device"], r["dtype"]) == (prog, mode, "cpu", "float32")
    assert (r["batch_size"], r["seq_len"], r["n_layer"], r["d_model"]) == (2, 32, 2, 32)
    assert r["ranks"] == 1 and r["iters"] == 3 and r["threads_per_rank"] >= 1 and r["peak_measured"]
    for key in POSITIVE:
        assert r[key] > 0, key
    assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
    assert r["tokens_per_s"] == pytest.approx(2 * 32 / (r["median_ms"] / 1e3))
    if mode == "fwbw":
        assert r["comm_ms"] == 0.0, "one rank has nothing to communicate"
    else:
        assert "comm_ms" not in r
    assert r["page_faults_per_iter"] >= 0 and r["system_ms_per_iter"] >= 0
    assert r["peak_rss_mib"] > 50, "the interpreter, NumPy and Numba alone are more than 50 MiB"


def test_host_memory_is_per_iteration():
    before = types.SimpleNamespace(ru_minflt=1000, ru_stime=2.0, ru_maxrss=100 * 1024)
    after = types.SimpleNamespace(ru_minflt=1600, ru_stime=2.03, ru_maxrss=300 * 1024)
    memory = timing.host_memory(before, after, iters=3)
    assert memory == pytest.approx({"page_faults_per_iter": 200, "system_ms_per_iter": 10, "peak_rss_mib": 300})


def test_a_given_peak_sets_the_mfu(capsys):
    r = run_json("nano2_cpu_fwandbw", ["--fwbw-iters", "2", "--peak-gflops", "50"], capsys)
    assert r["peak_gflops"] == 50 and not r["peak_measured"]
    assert r["mfu"] == pytest.approx(r["gflops"] / 50)


@pytest.mark.parametrize("prog", ["nano2_cpu_fw", "nano2_cpu_fwandbw"])
def test_the_table_prints(prog, capsys):
    status, out, err = run(prog, SMALL + ["--fw-iters", "2"] + (["--fw-bw-iters", "2"] if "and" in prog else []),
                           capsys)
    assert status == 0, err
    assert out.startswith(f"{prog}: ")
    for text in ("d_model 32, n_layer 2", "float32 on cpu", "B 2 x T 32", "1 rank x", "median", "tokens/s",
                 "GFLOP/s, MFU"):
        assert text in out, f"{text!r} missing from:\n{out}"
    assert "profile" not in out and "communication" not in out


def profile_table(out):
    """{row: (numbers in the row)} of the printed profile table, and its summary lines."""
    lines = out.split("\nprofile: ")[1].splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["layer"])
    end = next(i for i, line in enumerate(lines) if "matrix products" in line)
    rows = {}
    for line in lines[header + 1:end]:
        words = line.split()
        numbers = [w for w in words if w[0].isdigit() or w[0] == "-"]
        rows[" ".join(words[:len(words) - len(numbers)])] = numbers
    return rows, lines[end:]


@pytest.mark.parametrize("prog, columns", [("nano2_cpu_fw", 2), ("nano2_cpu_fwandbw", 3)])
def test_profile_table_lists_every_kind_of_layer_and_adds_up(prog, columns, capsys):
    status, out, err = run(prog, SMALL + ["--profile", "--fw-iters", "2"], capsys)
    assert status == 0, err
    rows, summary = profile_table(out)
    assert list(rows) == PROFILE_ROWS
    assert all(len(numbers) == columns for numbers in rows.values()), rows
    shares = [float(numbers[-1].rstrip("%")) for numbers in rows.values()]
    assert sum(shares) == pytest.approx(100.0, abs=0.1 * len(shares)), "each share is rounded to 0.1%"
    assert "of the step); everything else" in summary[0]
    assert any("fwbw/fw:" in line for line in summary) == (prog == "nano2_cpu_fwandbw")


def test_profile_json_adds_up_to_the_step(capsys):
    r = run_json("nano2_cpu_fwandbw", ["--profile", "--fwbw-iters", "2", "--fw-iters", "2"], capsys)
    p = r["profile"]
    assert [row["layer"] for row in p["rows"]] == PROFILE_ROWS
    assert sum(row["share"] for row in p["rows"]) == pytest.approx(1.0)
    assert sum(row["fw_ms"] + row["bw_ms"] for row in p["rows"]) == pytest.approx(p["step_ms"])
    assert all(row["fw_ms"] >= 0 and row["bw_ms"] >= 0 for row in p["rows"]), p["rows"]
    assert 0 < p["matmul_share"] < 1
    assert p["fw_median_ms"] > 0 and p["fwbw_over_fw"] > 0


def test_profiling_leaves_the_layers_as_they_were():
    model = build_model(load_config(None, SMALL[:5]))
    before = {name: vars(layer).copy() for name, layer in model.named_layers()}
    profiler = LayerProfiler(model)
    assert "forward" in vars(model.blocks[0].attn.qkv)
    profiler.restore()
    assert {name: vars(layer) for name, layer in model.named_layers()} == before
    assert "forward" not in vars(model) and "backward" not in vars(model)


def test_each_layer_says_its_profile_row():
    model = build_model(load_config(None, SMALL[:5]))
    model.blocks[1].attn.kind = "attention core, block 1"
    idx, targets = random_batch(np.random.default_rng(0), 2, 8, model.config.vocab_size)
    p = run_profile(model, lambda: model.forward(idx, targets), 2, comm.world(), None, "fw")
    assert [row["layer"] for row in p["rows"]] == PROFILE_ROWS[:-3] + ["attention core, block 1"] + PROFILE_ROWS[-3:]
    assert sum(row["share"] for row in p["rows"]) == pytest.approx(1.0)


@pytest.mark.parametrize("prog, argv, message", [
    ("nano2_cpu_fw", ["--fw-iters", "0"], "--fw-iters must be positive"),
    ("nano2_cpu_fw", ["--fw-iters", "many"], "--fw-iters must be an integer, got 'many'"),
    ("nano2_cpu_fw", ["--fwbw-iters", "2"], "unknown option or config key --fwbw_iters"),
    ("nano2_cpu_fwandbw", ["--fw-bw-iters", "-1"], "--fwbw-iters must be positive"),
    ("nano2_cpu_fwandbw", ["--batch-size", "0"], "--batch-size must be positive"),
    ("nano2_cpu_fwandbw", ["--warmup", "-1"], "--warmup must not be negative"),
    ("nano2_cpu_fwandbw", ["--peak-gflops", "0"], "--peak-gflops must be positive"),
    ("nano2_cpu_fwandbw", ["--peak-gflops", "nan"], "--peak-gflops must be finite, got nan"),
    ("nano2_cpu_fwandbw", ["--peak-gflops", "inf"], "--peak-gflops must be finite, got inf"),
    ("nano2_cpu_fwandbw", ["--n_layer=two"], "n_layer must be an integer"),
    ("nano2_cpu_fwandbw", ["--config", "no/such.json"], "config file not found"),
    ("nano2_fwbw", ["--fwbw-iters", "0"], "--fwbw-iters must be positive"),
])
def test_bad_flags_end_with_one_line(prog, argv, message, capsys):
    status, out, err = run(prog, argv, capsys)
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("prog, argv", [("nano2_fw", ["--fw-iters", "2"]), ("nano2_fwbw", ["--fwbw-iters", "2"]),
                                        ("nano2_fwbw", ["--fw-bw-iters", "2"])])
def test_gpu_commands_without_cupy_name_the_cpu_commands(prog, argv, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy fails, as where it is not installed
    status, out, err = run(prog, SMALL + argv, capsys)
    assert status == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no GPU: CuPy is not installed" in lines[0] and "nano2_cpu_fw" in lines[0], err


def test_cupy_without_a_device_is_no_gpu(monkeypatch, capsys):
    cuda = types.SimpleNamespace(is_available=lambda: False)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    status, out, err = run("nano2_fw", SMALL, capsys)
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and "finds no CUDA device" in err and "nano2_cpu_fwandbw" in err


@needs_mpiexec
def test_two_ranks_report_both_ranks_and_their_communication():
    code = "from train.timing import cpu_fwandbw_entry; cpu_fwandbw_entry()"
    result = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", code, *SMALL, "--threads=1", "--json",
                             "--fw-bw-iters", "3", "--fw-iters", "2", "--profile"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, "only rank 0 prints"
    r = json.loads(lines[0])
    assert r["ranks"] == 2 and r["threads_per_rank"] == 1
    assert r["iters"] == 6, "3 iterations from each rank"
    assert r["comm_ms"] >= 0 and 0 <= r["comm_share"] < 1
    assert r["tokens_per_s"] == pytest.approx(2 * 2 * 32 / (r["median_ms"] / 1e3))
    assert [row["layer"] for row in r["profile"]["rows"]][-2:] == ["communication", "other"]

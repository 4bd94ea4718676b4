"""bench/recipe.py: which options its ablation sets, how it reads a run, and a short run of it."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import recipe  # noqa: E402
from train.config import load_config  # noqa: E402


def test_the_ablation_sets_each_option_with_the_keys_that_go_with_it():
    baseline = load_config(os.path.join(ROOT, "configs", "tiny.json"))
    modded = load_config(os.path.join(ROOT, "configs", "modded.json"), ["--embedding_lr=0.01"])
    options = recipe.option_overrides(baseline, modded)
    assert options["optimizer"] == ["--optimizer=muon", f"--muon_lr={modded.muon_lr}",
                                    f"--muon_momentum={modded.muon_momentum}"]
    assert options["tie_head"] == ["--tie_head=False", f"--head_lr={modded.head_lr}"]
    assert options["embedding_lr"] == ["--embedding_lr=0.01"], "a rate of its own is a row of its own"
    assert {"positions", "norm", "qk_norm", "activation", "bias", "zero_init_proj"} <= set(options)
    assert not {"muon_lr", "head_lr", "out_dir", "max_steps", "lr"} & set(options)
    for overrides in options.values():  # every row is a config nano2_train takes
        load_config(os.path.join(ROOT, "configs", "tiny.json"), overrides)


def test_a_runs_curve_and_the_step_it_reaches_a_loss(tmp_path):
    rows = [{"step": 0, "val_loss": 5.0, "val_bpb": 7.2}]
    rows += [{"step": s, "loss": 1.0, "tokens_per_s": 512 / (0.01 * s)} for s in range(1, 5)]
    rows += [{"step": 2, "val_loss": 2.0, "val_bpb": 2.9}, {"step": 4, "val_loss": 1.0, "val_bpb": 1.4}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["step"])))
    result = recipe.read_result("run", [], str(path), 512)
    assert [v[0] for v in result.val] == [0, 2, 4]
    assert result.val[1][1] == pytest.approx(0.01 + 0.02) and result.val[2][1] == pytest.approx(0.1)
    assert result.steps_to(2.5) == 2 and result.steps_to(1.0) == 4 and result.steps_to(0.5) is None
    assert result.final_loss == 1.0


def test_a_run_that_fails_ends_the_benchmark_in_one_line(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "bench", "recipe.py"), "--data", str(tmp_path / "missing"),
               "--runs_dir", str(tmp_path / "runs"), "--out_dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "the baseline run failed (status 2)" in result.stderr, result.stderr


def test_a_short_run_draws_the_curves_and_writes_the_table(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "bench", "recipe.py"), "--name", "short",
               "--runs_dir", str(tmp_path / "runs"), "--out_dir", str(tmp_path), "--eval_interval", "2",
               "--rounds", "1", "--timed_steps", "2", "--", "--max_steps=4", "--num_stories=60", "--eval_iters=2",
               f"--data_dir={tmp_path / 'data'}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    table = (tmp_path / "recipe_short.md").read_text()
    assert "4 steps of 512 tokens" in table and "kernels)" in table  # the BLAS named
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| baseline") or
            line.startswith("| recipe")]
    assert len(rows) == 2 and rows[0][6].strip() == "1.00x"
    assert float(rows[1][5]) > 0 and float(rows[1][3]) < 8.0  # ms/step, and bits per byte below a byte's
    assert (tmp_path / "recipe_short.png").stat().st_size > 10_000
    assert os.path.exists(tmp_path / "runs" / "short" / "recipe" / "train.log")

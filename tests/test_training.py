"""nano2_train end to end on a small model: parity with PyTorch over 30 steps, bit-exact
resume, Ctrl-C, checkpoints that are refused when they cannot be trusted, non-finite stops."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import SMALL_TRAINING

from engine.optim import AdamW
from engine.params import read_safetensors
from train import trainer
from train.cli import run_main
from train.config import load_config
from train.data import TokenData
from train.model_setup import build_model
from train.trainer import learning_rate, train_step


def run_train(argv, capsys=None):
    """nano2_train's exit status (and its stderr, this run's only, when capsys is given)."""
    if capsys is not None:
        capsys.readouterr()
    try:
        status = run_main(lambda: trainer.main(argv), "nano2_train")
    except SystemExit as e:
        status = e.code
    return status if capsys is None else (status, capsys.readouterr().err)


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_thirty_steps_match_pytorch(stories_dir):
    torch = pytest.importorskip("torch")
    from torch_reference import torch_loss
    cfg = load_config(None, SMALL_TRAINING + [f"--data_dir={stories_dir}", "--max_steps=30", "--warmup_steps=5",
                                              "--tokens_per_step=256", "--grad_clip=0.5", "--weight_decay=0.1"])
    micro_steps = 2  # 256 tokens per step = 2 micro-batches of 4 x 32
    data = TokenData(stories_dir)
    model = build_model(cfg)
    optimizer = AdamW(model.store, cfg.beta1, cfg.beta2, cfg.adam_eps, cfg.weight_decay)
    params = {n: torch.tensor(p.copy(), requires_grad=True) for n, p in model.store.params.items()}
    decayed = [p for p in params.values() if p.ndim >= 2]
    not_decayed = [p for p in params.values() if p.ndim < 2]
    reference = torch.optim.AdamW([{"params": decayed, "weight_decay": cfg.weight_decay},
                                   {"params": not_decayed, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    for step in range(30):
        batches = [data.batch("train", cfg.seed, step, cfg.batch_size, cfg.seq_len,
                              micro_step=m, micro_steps=micro_steps)
                   for m in range(micro_steps)]
        lr = learning_rate(step, cfg)
        loss, _ = train_step(model, optimizer, batches, lr, cfg.grad_clip)

        reference.zero_grad()
        reference_loss = 0.0
        for idx, targets in batches:
            micro_loss = torch_loss(params, torch.tensor(idx), torch.tensor(targets), cfg.n_layer, cfg.n_head)
            (micro_loss / micro_steps).backward()
            reference_loss += micro_loss.item() / micro_steps
        torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip)
        for group in reference.param_groups:
            group["lr"] = lr
        reference.step()
        assert loss == pytest.approx(reference_loss, rel=1e-4), f"step {step}"
    assert loss < 4.0, "30 steps should have learned the byte frequencies at least"


def test_run_folder_holds_metrics_plot_and_the_kept_checkpoints(small_args, tmp_path):
    run_dir = tmp_path / "run"
    assert run_train(small_args + ["--max_steps=8", "--eval_interval=2", "--keep_checkpoints=2"]) == 0
    files = sorted(os.listdir(run_dir))
    assert files == ["best.safetensors", "ckpt-0000006.safetensors", "ckpt-0000008.safetensors",
                     "loss.png", "metrics.jsonl"]
    assert open(run_dir / "loss.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    rows = metrics(run_dir)
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 2, 4, 6, 8]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))
    assert all(r["val_bpb"] > 0 for r in rows if "val_loss" in r)
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in rows if "loss" in r)
    best = min((r for r in rows if "val_loss" in r and r["step"] > 0), key=lambda r: r["val_loss"])
    assert read_safetensors(run_dir / "best.safetensors")[1]["step"] == best["step"]


def test_a_log_gets_one_plain_line_per_log_interval(small_args, capsys):
    """With no terminal (pytest's captured stderr, like a log file) no progress bar draws its
    carriage-return frames; a line every log_interval steps says how the run goes."""
    capsys.readouterr()
    assert run_train(small_args + ["--max_steps=6", "--eval_interval=3", "--log_interval=2"]) == 0
    out, err = capsys.readouterr()
    step_lines = [line for line in out.splitlines() if line.startswith("step ") and " | loss " in line]
    assert [line.split()[1] for line in step_lines] == ["2/6", "4/6", "6/6"], out
    words = (" | lr ", " | grad norm ", " tok/s | ", " | MFU ", " ms")
    assert all(word in step_lines[0] for word in words), step_lines[0]
    assert "\r" not in out + err


def stop_after(monkeypatch, stop_step):
    """Make the run receive Ctrl-C (SIGINT) while it computes step `stop_step`."""
    real = trainer.learning_rate

    def learning_rate_then_interrupt(step, cfg):
        if step + 1 == stop_step:
            os.kill(os.getpid(), signal.SIGINT)
        return real(step, cfg)

    monkeypatch.setattr(trainer, "learning_rate", learning_rate_then_interrupt)


@pytest.mark.parametrize("optimizer", [[], ["--optimizer=muon", "--muon_lr=0.02"]], ids=["adamw", "muon"])
def test_interrupt_then_resume_is_bit_exact(small_args, tmp_path, monkeypatch, capsys, optimizer):
    """With Muon the checkpoint holds its momentum (muon_momentum.*) too."""
    straight = small_args[:-1] + optimizer + [f"--out_dir={tmp_path / 'straight'}", "--max_steps=10",
                                              "--eval_interval=5"]
    halves = small_args[:-1] + optimizer + [f"--out_dir={tmp_path / 'halves'}", "--max_steps=10", "--eval_interval=5"]
    assert run_train(straight) == 0

    with monkeypatch.context() as patch:
        stop_after(patch, 3)
        status, err = run_train(halves, capsys)
    assert status == 130 and "interrupted; saved" in err and "ckpt-0000003" in err
    assert run_train(halves + ["--resume"]) == 0

    a, _ = read_safetensors(tmp_path / "straight" / "ckpt-0000010.safetensors")
    b, _ = read_safetensors(tmp_path / "halves" / "ckpt-0000010.safetensors")
    assert set(a) == set(b) and any(name.startswith("muon_momentum.") for name in a) == bool(optimizer)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    losses = lambda d: [(r["step"], r["loss"]) for r in metrics(tmp_path / d) if "loss" in r]  # noqa: E731
    assert losses("straight") == losses("halves")


def test_corrupt_checkpoint_is_refused_and_the_previous_one_kept(small_args, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_train(small_args + ["--max_steps=4", "--eval_interval=2"]) == 0
    older = (run_dir / "ckpt-0000002.safetensors").read_bytes()
    newest = run_dir / "ckpt-0000004.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    status, err = run_train(small_args + ["--max_steps=6", "--eval_interval=2", "--resume"], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "ckpt-0000004.safetensors is not a readable safetensors file" in err
    assert (run_dir / "ckpt-0000002.safetensors").read_bytes() == older
    resume_older = small_args + ["--max_steps=6", "--eval_interval=2", f"--resume={run_dir / 'ckpt-0000002.safetensors'}"]
    assert run_train(resume_older) == 0


def test_checkpoint_from_another_config_is_refused(small_args, capsys):
    assert run_train(small_args + ["--max_steps=2", "--eval_interval=2"]) == 0
    status, err = run_train(small_args + ["--max_steps=4", "--d_model=48", "--resume"], capsys)
    assert status == 2
    assert err.strip().endswith("is from a different config: d_model is 32 there and 48 here")


def test_learned_positions_train_resume_and_hold_their_seq_len(small_args, capsys):
    gpt2 = small_args + ["--positions=learned", "--scale_embedding=false"]
    assert run_train(gpt2 + ["--max_steps=2", "--eval_interval=2"]) == 0
    assert run_train(gpt2 + ["--max_steps=4", "--eval_interval=2", "--resume"]) == 0
    status, err = run_train(gpt2 + ["--max_steps=6", "--seq_len=64", "--resume"], capsys)
    assert status == 2  # the table has seq_len rows: unlike the sinusoids', they cannot grow
    assert err.strip().endswith("is from a different config: seq_len is 32 there and 64 here")
    status, err = run_train(small_args + ["--max_steps=6", "--resume"], capsys)
    assert status == 2
    assert err.strip().endswith("is from a different config: positions is learned there and sinusoidal here")


def test_muon_trains(small_args, tmp_path):
    argv = small_args[:-1] + ["--optimizer=muon", f"--out_dir={tmp_path / 'muon'}", "--max_steps=20",
                              "--eval_interval=20"]
    assert run_train(argv) == 0
    losses = [row["val_loss"] for row in metrics(tmp_path / "muon") if "val_loss" in row]
    assert losses[-1] < losses[0] - 0.3, losses


def test_a_new_run_will_not_overwrite_an_old_one(small_args, capsys):
    assert run_train(small_args + ["--max_steps=2", "--eval_interval=2"]) == 0
    status, err = run_train(small_args + ["--max_steps=2"], capsys)
    assert status == 2 and "already holds a run's checkpoints; pass --resume" in err


def test_non_finite_gradient_stops_naming_step_and_tensor(small_args, tmp_path, monkeypatch, capsys):
    import layers.ffn
    real = layers.ffn.gelu_backward
    calls = []

    def nan_on_fifth_call(dy, cache):
        calls.append(1)
        dx = real(dy, cache)
        return dx * np.nan if len(calls) == 5 else dx  # step 3, first block in backward order

    monkeypatch.setattr(layers.ffn, "gelu_backward", nan_on_fifth_call)
    status, err = run_train(small_args + ["--max_steps=6", "--eval_interval=2"], capsys)
    assert status == 1
    line = err.strip().splitlines()[-1]
    assert "step 3: non-finite gradient of blocks.1.ffn.fc.bias" in line
    assert "the last good checkpoint is" in line and "ckpt-0000002.safetensors" in line
    assert sorted(os.listdir(tmp_path / "run"))[:1] == ["best.safetensors"]
    assert not (tmp_path / "run" / "ckpt-0000004.safetensors").exists()


def test_ctrl_c_in_a_real_process_saves_and_exits(small_args, tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", "from train.trainer import entry; entry()",
                                *small_args, "--max_steps=100000", "--eval_interval=100000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").exists() and sum(1 for _ in open(run_dir / "metrics.jsonl")) >= 3:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted; saved" in err and "Traceback" not in err
    saved = [f for f in os.listdir(run_dir) if f.startswith("ckpt-")]
    assert len(saved) == 1
    assert read_safetensors(run_dir / saved[0])[1]["step"] >= 2


def test_seq_len_larger_than_validation_split(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("word " * 400)
    (tmp_path / "t-val.txt").write_text("tiny")
    status, err = run_train(SMALL_TRAINING + [f"--data={tmp_path}", f"--data_dir={tmp_path / 'prep'}",
                                              f"--out_dir={tmp_path / 'run'}"], capsys)
    assert status == 2 and "seq_len 32 is larger than the val split" in err


def test_wandb_offline_logging(small_args, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert run_train(small_args + ["--max_steps=2", "--eval_interval=2", "--wandb=true"]) == 0
    offline_runs = [d for d in os.listdir(tmp_path / "run" / "wandb") if d.startswith("offline-run-")]
    assert len(offline_runs) == 1


def test_checkpoint_without_usable_adamw_state_is_refused(small_args, tmp_path, capsys):
    assert run_train(small_args + ["--max_steps=2", "--eval_interval=2"]) == 0
    path = tmp_path / "run" / "ckpt-0000002.safetensors"
    tensors, metadata = read_safetensors(path)
    tensors["adam_v.ln_f.bias"] = tensors["adam_v.ln_f.bias"][:3]
    from engine.params import write_safetensors
    write_safetensors(path, tensors, metadata)
    status, err = run_train(small_args + ["--max_steps=4", "--resume"], capsys)
    assert status == 2 and "no usable AdamW state for ln_f.bias" in err


@pytest.mark.parametrize("damage", [{"step": None}, {"step": "abc"}, {"step": 2.5}, {"best_val_loss": None}])
def test_checkpoint_with_damaged_run_state_is_refused(small_args, tmp_path, capsys, damage):
    assert run_train(small_args + ["--max_steps=2", "--eval_interval=2"]) == 0
    path = tmp_path / "run" / "ckpt-0000002.safetensors"
    tensors, metadata = read_safetensors(path)
    metadata = {key: value for key, value in (metadata | damage).items() if value is not None}
    from engine.params import write_safetensors
    write_safetensors(path, tensors, metadata)
    status, err = run_train(small_args + ["--max_steps=4", "--resume"], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "is damaged: its metadata needs a step count and a best validation loss" in err, err


def test_metrics_rows_without_a_step_are_skipped(tmp_path):
    from train.plot import read_metrics
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.5}\n3\n{"loss": 2.4}\n{"step": 2, "val_loss": 2.4}\n')
    assert read_metrics(path) == [{"step": 1, "loss": 2.5}, {"step": 2, "val_loss": 2.4}]


def test_metrics_with_a_half_written_last_line_still_read(tmp_path):
    """A run killed while appending leaves a partial line; --resume and the plot must not fail on it."""
    from train.plot import read_metrics
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "val_loss": 2.4}\n{"step": 3, "lo')
    assert read_metrics(path) == [{"step": 1, "loss": 2.5}, {"step": 2, "val_loss": 2.4}]

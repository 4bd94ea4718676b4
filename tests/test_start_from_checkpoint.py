"""Starting from a checkpoint's parameters: nano2_train --init_from (a new run, a fresh optimizer
at step 0, the model's shape and tokenizer from the checkpoint), and --ckpt for nano2_debug's
subcommands, nano2_gradcheck and the timing commands."""
import json

import numpy as np
import pytest
from conftest import SMALL_TRAINING
from helpers import final_parameters, run_command

from engine.params import read_safetensors
from train import debug, gradcheck, timing, trainer
from train.cli import run_main

GPT2_INPUT = ["--positions=learned", "--scale_embedding=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, stories_dir):
    """A checkpoint of two steps on the stories, GPT-2's input (learned positions, no √d)."""
    run_dir = tmp_path_factory.mktemp("source") / "run"
    argv = [*SMALL_TRAINING, *GPT2_INPUT, f"--data_dir={stories_dir}", f"--out_dir={run_dir}",
            "--max_steps=2", "--eval_interval=2"]
    assert run_main(lambda: trainer.main(argv), "nano2_train") == 0
    return run_dir / "ckpt-0000002.safetensors"


def val_losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["val_loss"] for row in rows if "val_loss" in row}


def test_init_from_starts_a_new_run_at_step_0_from_the_parameters(trained, stories_dir, tmp_path, capsys):
    """No model key is given: the shape, positions and tokenizer all come from the checkpoint."""
    run_dir = tmp_path / "run"
    model_keys = ("--d_model", "--n_layer", "--n_head", "--d_ff", "--seq_len")
    run_keys = [word for word in SMALL_TRAINING if not word.startswith(model_keys)]
    argv = [*run_keys, f"--init_from={trained}", f"--data_dir={stories_dir}", f"--out_dir={run_dir}",
            "--max_steps=2", "--eval_interval=1"]
    status, _, err = run_command(trainer.main, argv, "nano2_train", capsys)
    assert status == 0, err
    assert val_losses(run_dir)[0] == val_losses(trained.parent)[2], "step 0 must evaluate the checkpoint's model"
    tensors, metadata = read_safetensors(run_dir / "ckpt-0000002.safetensors")
    assert metadata["step"] == 2 and metadata["config"]["positions"] == "learned"
    assert metadata["config"]["d_model"] == 32 and not metadata["config"]["scale_embedding"]
    before, after = final_parameters(trained.parent, 2), final_parameters(run_dir, 2)
    assert set(before) == set(after) and any(not np.array_equal(before[k], after[k]) for k in before)
    # AdamW started afresh: after its first step m = (1 - β1) g and v = (1 - β2) g², so m² = 0.2 v
    first = read_safetensors(run_dir / "ckpt-0000001.safetensors")[0]
    for name in before:
        m, v = first[f"adam_m.{name}"].astype(np.float64), first[f"adam_v.{name}"].astype(np.float64)
        np.testing.assert_allclose(m * m, 0.1 ** 2 / 0.05 * v, rtol=1e-4, atol=1e-30, err_msg=name)


@pytest.mark.parametrize("extra, said", [
    (["--d_model=48"], "d_model 48 would change the model of {ckpt} (d_model 32 there)"),
    (["--positions=sinusoidal"], "positions sinusoidal would change the model of {ckpt} (positions learned there)"),
    (["--seq_len=64"], "seq_len 64 is longer than the 32 learned positions of {ckpt}"),
    (["--tokenizer=gpt2"], "vocab_size 256 is smaller than the gpt2 tokenizer's 50257"),
    (["--resume"], "--resume continues a run and --init_from starts one: give one of them"),
])
def test_init_from_refuses_what_would_not_fit_the_checkpoint(trained, tmp_path, capsys, extra, said):
    argv = [f"--init_from={trained}", f"--out_dir={tmp_path / 'run'}", *extra]
    status, _, err = run_command(trainer.main, argv, "nano2_train", capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert said.format(ckpt=trained) in err
    assert not (tmp_path / "run").exists(), "nothing is written for a refused start"


def test_init_from_refuses_a_file_that_is_no_checkpoint(tmp_path, capsys):
    argv = [f"--init_from={tmp_path / 'missing.safetensors'}"]
    status, _, err = run_command(trainer.main, argv, "nano2_train", capsys)
    assert status == 2 and err.strip().endswith(f"no such file: {tmp_path / 'missing.safetensors'}")


def test_debug_state_starts_from_the_checkpoint(trained, tmp_path, capsys):
    """Sequences of 8: the model takes the first 8 of the 32 learned positions."""
    out = tmp_path / "state.safetensors"
    argv = ["state", "--ckpt", str(trained), "--batch-size", "2", "--seq-len", "8", "--out", str(out)]
    status, _, err = run_command(debug.main, argv, "nano2_debug", capsys)
    assert status == 0, err
    state, source = read_safetensors(out)[0], final_parameters(trained.parent, 2)
    source["pos_emb.weight"] = source["pos_emb.weight"][:8]
    for name, value in source.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)


@pytest.mark.parametrize("subcommand", [["trace"], ["check", "--samples", "2"], ["nonfinite"]])
def test_debug_subcommands_take_a_checkpoint(trained, capsys, subcommand):
    argv = [*subcommand, "--ckpt", str(trained), "--batch-size", "1", "--seq-len", "6"]
    status, out, err = run_command(debug.main, argv, "nano2_debug", capsys)
    assert status == 0, err
    assert "pos_emb" in out or subcommand == ["nonfinite"]


def test_gradcheck_takes_a_checkpoint(trained, capsys):
    status, out, err = run_command(gradcheck.main, ["--ckpt", str(trained), "--samples", "2", "--seq-len", "8"],
                                   "nano2_gradcheck", capsys)
    assert status == 0, err + out
    assert "pos_emb.weight" in out


def test_gradcheck_refuses_sequences_longer_than_the_learned_positions(trained, capsys):
    status, _, err = run_command(gradcheck.main, ["--ckpt", str(trained), "--seq-len", "64"], "nano2_gradcheck", capsys)
    assert status == 2 and "sequences of 64 tokens are longer than the learned positions' 32 rows" in err


@pytest.mark.parametrize("prog, iters", [("nano2_cpu_fw", "--fw-iters=1"), ("nano2_cpu_fwandbw", "--fw-bw-iters=1")])
def test_timing_commands_take_a_checkpoint(trained, capsys, prog, iters):
    argv = ["--ckpt", str(trained), "--json", iters, "--warmup=0", "--batch-size", "1"]
    status, out, err = run_command(lambda argv: timing.main(argv, prog=prog), argv, prog, capsys)
    assert status == 0, err
    report = json.loads(out)
    assert report["ckpt"] == str(trained) and report["positions"] == "learned" and report["seq_len"] == 32

"""nano2_debug trace / check / step / dump / diff / nonfinite: each must point at the right layer."""
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import MPIEXEC, needs_mpiexec

from engine.params import read_safetensors, write_safetensors
from train import debug
from train.cli import run_main

SMALL = ["--config", "configs/tiny.json", "--n_layer=2", "--batch-size", "2", "--seq-len", "8"]


def run(argv, capsys):
    capsys.readouterr()
    try:
        status = run_main(lambda: debug.main(argv), "nano2_debug")
    except SystemExit as e:
        status = e.code
    out = capsys.readouterr()
    return status, out.out, out.err


def test_trace_lists_every_layer_in_execution_order(capsys):
    status, out, _ = run(["trace", *SMALL], capsys)
    assert status == 0
    rows = [line.split()[1:3] for line in out.splitlines()[1:] if line[:3].strip().isdigit()]
    order = list(dict.fromkeys(tuple(r) for r in rows))
    assert order[0] == ("tok_emb", "forward") and order[-1] == ("tok_emb", "backward")
    assert order.index(("blocks.1.ffn.gelu", "forward")) < order.index(("xent", "forward"))
    assert order.index(("blocks.1.ffn.gelu", "backward")) < order.index(("blocks.0.ffn.gelu", "backward"))
    assert "blocks.1.attn.qkv.weight" in out and "|grad|/|param|" in out


def test_check_passes_on_the_model(capsys):
    status, out, _ = run(["check", *SMALL], capsys)
    assert status == 0 and "agrees with central differences" in out


def test_trace_and_check_name_the_learned_positions(capsys):
    gpt2 = [*SMALL, "--positions=learned", "--scale_embedding=false"]
    status, out, _ = run(["trace", *gpt2], capsys)
    assert status == 0 and "pos_emb.weight" in out
    rows = [line.split()[1:3] for line in out.splitlines()[1:] if line[:3].strip().isdigit()]
    assert ["pos_emb", "backward"] in rows
    status, out, _ = run(["check", *gpt2], capsys)
    assert status == 0 and "agrees with central differences" in out


def test_trace_and_check_name_the_modded_layers(capsys):
    modded = [*SMALL, "--activation=relu2", "--norm=rmsnorm", "--bias=false", "--tie_head=false", "--qk_norm=true",
              "--positions=rotary"]
    status, out, _ = run(["trace", *modded], capsys)
    rows = [line.split()[1:3] for line in out.splitlines()[1:] if line[:3].strip().isdigit()]
    assert status == 0 and ["blocks.1.ffn.relu2", "backward"] in rows and "gelu" not in out
    assert ["blocks.1.ln2", "backward"] in rows and "ln2.weight" not in out  # an RMSNorm learns nothing
    assert "head.weight" in out and ".bias" not in out
    status, out, _ = run(["check", *modded], capsys)
    assert status == 0 and "agrees with central differences" in out


def test_check_passes_configs_modded_json_across_relu2s_kink(capsys):
    """At eps 1e-4 one FFN's fc.weight difference straddled ReLU²'s kink (3e-6, over 1e-6); the
    check takes such a tensor again at a tenth of the step."""
    status, out, _ = run(["check", "--config", "configs/modded.json", "--zero_init_proj=false"], capsys)
    assert status == 0 and "agrees with central differences" in out, out


def test_a_kink_is_differenced_again_and_a_wrong_gradient_stays_wrong():
    from train.finite_differences import checked_differences
    x = np.array([3e-5, 0.5])  # relu(x)² near its kink, and far from it

    def loss():
        return (np.maximum(x, 0) ** 2).sum()
    numeric, err = checked_differences(loss, x, [0, 1], 2 * np.maximum(x, 0), 1e-4, 1e-6)
    assert err < 1e-10 and numeric == pytest.approx([6e-5, 1.0])
    _, err = checked_differences(loss, x, [0, 1], 2.02 * np.maximum(x, 0), 1e-4, 1e-6)
    assert err > 1e-3


def test_check_names_a_planted_wrong_backward_and_no_earlier_layer(monkeypatch, capsys):
    import layers.ffn
    correct = layers.ffn.gelu_backward
    monkeypatch.setattr(layers.ffn, "gelu_backward", lambda dy, x: correct(dy, x) * 1.01)
    status, out, _ = run(["check", *SMALL], capsys)
    assert status == 1
    assert "first failing backward: blocks.1.ffn.gelu" in out
    failing = [line.split()[0] for line in out.splitlines() if line.endswith("FAIL")]
    assert failing == ["blocks.1.ffn.gelu"], "a layer checked before it was wrongly blamed"


def test_nonfinite_names_the_layer_that_made_the_nan(monkeypatch, capsys):
    import layers.attention
    real = layers.attention.causal_attention_forward
    calls = []

    def nan_in_the_second_block(*args):
        y, cache = real(*args)
        calls.append(1)
        if len(calls) == 2:
            y = y.copy()
            y[0, 3, 5] = np.nan
        return y, cache

    monkeypatch.setattr(layers.attention, "causal_attention_forward", nan_in_the_second_block)
    status, out, _ = run(["nonfinite", *SMALL], capsys)
    assert status == 1
    assert "first non-finite: blocks.1.attn.proj forward" in out  # the NaN enters here, made inside attn
    assert "in0" in out


def test_nonfinite_names_the_layer_whose_parameter_gradient_is_nan(monkeypatch, capsys):
    import layers.linear
    real = layers.linear.linear_backward
    calls = []

    def nan_bias_gradient_in_the_second_call(dy, cache):
        dx, dw, db = real(dy, cache)
        calls.append(1)
        if len(calls) == 2:
            db = db.copy()
            db[0] = np.nan  # only the store sees it: dx, the backward's output, stays finite
        return dx, dw, db

    monkeypatch.setattr(layers.linear, "linear_backward", nan_bias_gradient_in_the_second_call)
    status, out, _ = run(["nonfinite", *SMALL], capsys)
    assert status == 1
    # Backward meets the linears from the last: ffn.proj, ffn.fc, attn.proj of block 1.
    assert "first non-finite: blocks.1.ffn.fc backward" in out and "gradient of blocks.1.ffn.fc.bias" in out


def test_nonfinite_reports_a_clean_step(capsys):
    status, out, _ = run(["nonfinite", *SMALL], capsys)
    assert status == 0 and "no NaN or Inf" in out


def test_diff_names_the_layer_of_a_changed_tensor(tmp_path, capsys):
    a, b = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    assert run(["dump", *SMALL, "--out", a], capsys)[0] == 0
    assert run(["dump", *SMALL, "--out", b], capsys)[0] == 0
    status, out, _ = run(["diff", a, b], capsys)
    assert status == 0 and "agree" in out
    tensors, metadata = read_safetensors(b)
    key = next(k for k in sorted(tensors) if "/blocks.0.ffn.fc/forward/out0" in k)
    tensors[key] = tensors[key] * 1.001
    write_safetensors(b, tensors, metadata)
    status, out, _ = run(["diff", a, b], capsys)
    assert status == 1
    assert out.strip().splitlines()[-1] == f"first difference: blocks.0.ffn.fc ({key})"


def test_step_follows_scripted_commands(monkeypatch, capsys):
    script = "n\np out0\np nothing\nb blocks.0.attn:backward\nc\np in0\nc\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    status, out, _ = run(["step", *SMALL], capsys)
    assert status == 0
    out = out.replace("(nano2) ", "\n")  # the prompt has no newline of its own
    stops = [line for line in out.splitlines() if re.match(r"\[\d+\] ", line)]
    assert stops[0].startswith("[0] tok_emb forward") and stops[1].startswith("[1] pos forward")
    assert stops[2].split()[1:3] == ["blocks.0.attn", "backward"] and len(stops) == 3
    assert "no tensor 'nothing' here" in out and "breakpoint at blocks.0.attn:backward" in out
    assert out.strip().endswith("step finished")


def test_step_refuses_a_breakpoint_naming_no_layer_and_asks_again(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("b blocks.0.atn:backward\nc blocks.9.ln1\nb\nq\n"))
    status, out, _ = run(["step", *SMALL], capsys)
    assert status == 0
    assert out.count("no such layer and phase") == 3 and "breakpoint at" not in out
    assert "step finished" not in out, "the prompt asked again each time, and q quit"


def test_diff_refuses_a_tolerance_that_cannot_compare(tmp_path, capsys):
    a = str(tmp_path / "a.safetensors")
    assert run(["dump", *SMALL, "--out", a], capsys)[0] == 0
    for tol, message in (("nan", "--tol must be finite, got nan"), ("-1", "--tol must not be negative")):
        status, _, err = run(["diff", a, a, "--tol", tol], capsys)
        assert status == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_step_from_a_script_with_break():
    result = subprocess.run([sys.executable, "-c", "from train.debug import entry; entry()", "step", *SMALL,
                             "--break", "blocks.1.ln2:backward"], input="p in0\nq\n", capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "blocks.1.ln2 backward" in result.stdout and "[[[" in result.stdout
    assert "step finished" not in result.stdout, "q quits"


@needs_mpiexec
def test_dump_under_mpi_writes_one_file_per_rank(tmp_path, capsys):
    out = str(tmp_path / "dump.safetensors")
    result = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", "from train.debug import entry; entry()",
                             "dump", *SMALL, "--out", out], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    ranks = [str(tmp_path / f"dump.rank{r}.safetensors") for r in (0, 1)]
    assert all(os.path.exists(p) for p in ranks)
    status, text, _ = run(["diff", *ranks], capsys)
    assert status == 1 and "first difference: tok_emb" in text  # each rank has its own rows


def test_tracer_restores_an_instance_attribute_it_wrapped():
    """restore() puts back what the object had: its own attribute where it had one, not the class's method."""
    from train.config import load_config
    from train.model_setup import build_model
    from train.tracing import Tracer
    model = build_model(load_config("configs/tiny.json", ["--n_layer=1"]))
    own = model.ln_f.forward
    model.ln_f.forward = own  # an instance attribute, as another tool's wrapper would be
    Tracer(model).restore()
    assert vars(model.ln_f)["forward"] is own

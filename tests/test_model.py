"""The whole decoder: every parameter entry against central differences on a small model,
the gradcheck tool on configs/tiny.json, and float32 against float64."""
import math

import numpy as np
import pytest
from helpers import assert_grad_close, relative_error

from layers.model import Decoder, ModelConfig, hidden_matrices, init_parameters
from train import gradcheck
from train.data import random_batch

SMALL = dict(vocab_size=11, d_model=8, n_layer=2, n_head=2, d_ff=12, seq_len=6)


GPT2_OPTIONS = dict(positions="learned", scale_embedding=False)  # GPT-2's input: E[idx] + a learned table


def small_model(dtype=np.float64, seed=0, **options):
    model = Decoder(ModelConfig(**SMALL, **options), dtype=dtype)
    init_parameters(model.store, SMALL["n_layer"], seed)
    # Larger than the N(0, 0.02) init, so every path carries a gradient well above rounding.
    model.store.data[...] += np.random.default_rng(seed).normal(0, 0.3, model.store.numel).astype(dtype)
    return model


@pytest.mark.parametrize("options", [{}, GPT2_OPTIONS, {"activation": "relu2"}, {"norm": "rmsnorm"}, {"bias": False},
                                     {"tie_head": False}, {"qk_norm": True}, {"positions": "rotary", "qk_norm": True}],
                         ids=["nano2", "gpt2-input", "relu2", "rmsnorm", "no-bias", "untied-head", "qk-norm", "rotary"])
def test_every_parameter_entry_matches_central_differences(options):
    model = small_model(**options)
    assert ("pos_emb.weight" in model.store.shapes) == (options.get("positions") == "learned")
    idx, targets = random_batch(np.random.default_rng(1), 3, 5, SMALL["vocab_size"])  # 5 of seq_len's 6 rows
    model.forward(idx, targets)
    model.backward()
    loss = lambda: model.forward(idx, targets)[1]
    for name in model.store.shapes:
        assert_grad_close(model.store.grads[name].copy(), loss, model.store.params[name], name)


def test_tied_embedding_gets_gradient_from_the_head_too():
    model = small_model()
    idx = np.zeros((1, 4), dtype=np.int64)  # only token 0 is looked up
    targets = np.ones((1, 4), dtype=np.int64)
    model.forward(idx, targets)
    model.backward()
    row_grad_norms = np.linalg.norm(model.store.grads["tok_emb.weight"], axis=1)
    assert np.all(row_grad_norms[1:] > 0), "rows never looked up still feed the head's logits"


def test_gradcheck_tool_passes_on_tiny_config(capsys):
    assert gradcheck.main(["--config", "configs/tiny.json"]) == 0
    out = capsys.readouterr().out
    assert "51/51 tensors within 1e-06" in out
    assert "blocks.3.ffn.proj.weight" in out


def test_gradcheck_tool_on_the_modded_recipe(capsys):
    """At modded.json's zero-initialised start the check can show nothing, and says so; from
    random projections every option's backward is checked."""
    assert gradcheck.main(["--config", "configs/modded.json", "--samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "17 tensors have zero gradients at these weights" in out and "--ckpt" in out
    assert gradcheck.main(["--config", "configs/modded.json", "--samples", "3", "--zero_init_proj=false"]) == 0
    out = capsys.readouterr().out
    assert "18/18 tensors within 1e-06" in out and "zero" not in out and "head.weight" in out


@pytest.mark.parametrize("spelling", ["--batch_size=1 --seq_len=3", "--batch-size=1 --seq-len=3"])
def test_gradcheck_tool_takes_batch_and_length_in_either_spelling(spelling, capsys):
    assert gradcheck.main(["--config", "configs/tiny.json", "--samples", "1", *spelling.split()]) == 0
    assert "batch 1 x 3 tokens" in capsys.readouterr().out


def test_gradcheck_tool_fails_on_a_wrong_backward(monkeypatch, capsys):
    import layers.layernorm as layernorm
    correct = layernorm.layernorm_backward

    def forgets_the_mean_term(dy, cache):
        dx, dw, db = correct(dy, cache)
        x, mean, rstd, w = cache
        return dx + rstd[..., None] * (dy * w).mean(axis=-1, keepdims=True), dw, db

    monkeypatch.setattr(layernorm, "layernorm_backward", forgets_the_mean_term)
    assert gradcheck.main(["--config", "configs/tiny.json", "--samples", "3"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_float32_agrees_with_float64():
    idx, targets = random_batch(np.random.default_rng(2), 2, 6, SMALL["vocab_size"])
    model64 = small_model(np.float64)
    model32 = Decoder(ModelConfig(**SMALL), dtype=np.float32)
    model32.store.data[...] = model64.store.data
    losses = {}
    for model in (model32, model64):
        _, loss = model.forward(idx, targets)
        model.backward()
        assert loss.dtype == model.store.grad.dtype == model.store.dtype
        losses[model.store.dtype.name] = float(loss)
    assert losses["float32"] == pytest.approx(losses["float64"], rel=1e-4)
    for name in model64.store.shapes:
        err = relative_error(model32.store.grads[name].astype(np.float64), model64.store.grads[name])
        assert err <= 1e-4, f"{name}: float32 gradient off by {err:.2e}"


def test_init_follows_the_design():
    model = Decoder(ModelConfig(256, 64, 4, 4, 256, 32), dtype=np.float64)
    init_parameters(model.store, 4, seed=3)
    p = model.store.params
    assert p["tok_emb.weight"].std() == pytest.approx(0.02, rel=0.05)
    assert p["blocks.0.attn.qkv.weight"].std() == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / math.sqrt(2 * 4)
    assert p["blocks.1.attn.proj.weight"].std() == pytest.approx(residual_std, rel=0.05)
    assert p["blocks.2.ffn.proj.weight"].std() == pytest.approx(residual_std, rel=0.05)
    assert np.all(p["ln_f.weight"] == 1) and np.all(p["blocks.0.ln2.bias"] == 0)
    assert np.all(p["blocks.3.ffn.fc.bias"] == 0)


def test_initial_loss_is_near_uniform():
    model = Decoder(ModelConfig(256, 64, 2, 2, 128, 32))
    init_parameters(model.store, 2, seed=0)
    idx, targets = random_batch(np.random.default_rng(0), 4, 32, 256)
    _, loss = model.forward(idx, targets)
    assert float(loss) == pytest.approx(math.log(256), rel=0.05)


def test_every_matrix_product_is_two_dimensional_and_needs_no_copy(monkeypatch):
    """cuBLAS (through CuPy) takes a 2-D product's operands as they lie, C- or F-ordered (a
    transposed weight included), and in the compute type --tf32 sets; a product of more
    dimensions goes to a batched call in the default math mode, after copying its operands.
    So every product of a training step must be 2-D, on operands either way contiguous."""
    from engine.kernels import cpu
    operands = []

    def recording(function):
        def record(*args):
            operands.extend((function.__name__, a) for a in args if a is not None and a.ndim > 1)
            return function(*args)
        return record

    monkeypatch.setattr(cpu, "matmul", recording(cpu.matmul))
    monkeypatch.setattr(cpu, "linear_backward", recording(cpu.linear_backward))
    model = small_model()
    model.forward(*random_batch(np.random.default_rng(2), 2, 6, SMALL["vocab_size"]))
    model.backward()
    # 4 linears a block (2 operands forward, 3 backward), the head's 3 products
    assert len(operands) == (2 + 3) * 4 * SMALL["n_layer"] + 3 * 2, "a product went another way"
    for name, a in operands:
        assert a.ndim == 2 and (a.flags.c_contiguous or a.flags.f_contiguous), (name, a.shape, a.strides)


def test_zero_init_proj_starts_the_projections_and_an_untied_head_at_zero():
    model = Decoder(ModelConfig(**SMALL, tie_head=False), dtype=np.float64)
    init_parameters(model.store, SMALL["n_layer"], seed=0, zero_init_proj=True)
    zeroed = [name for name, p in model.store.params.items() if not np.any(p)]
    projections = [f"blocks.{i}.{p}.weight" for i in range(SMALL["n_layer"]) for p in ("attn.proj", "ffn.proj")]
    biases = [name for name in model.store.shapes if name.endswith(".bias")]  # zero in every init
    assert sorted(zeroed) == sorted(projections + biases + ["head.weight"])
    idx, targets = random_batch(np.random.default_rng(1), 2, 6, SMALL["vocab_size"])
    _, loss = model.forward(idx, targets)
    assert float(loss) == pytest.approx(math.log(SMALL["vocab_size"]), rel=1e-12), "a zero head: uniform logits"


def test_muon_takes_the_blocks_matrices_alone():
    model = Decoder(ModelConfig(**SMALL, tie_head=False, positions="learned"))
    expected = [f"blocks.{i}.{p}.weight" for i in range(SMALL["n_layer"])
                for p in ("attn.qkv", "attn.proj", "ffn.fc", "ffn.proj")]
    assert hidden_matrices(model) == expected

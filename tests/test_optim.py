"""AdamW, gradient clipping and the learning-rate schedule."""
import numpy as np
import pytest

from engine.errors import UserError
from engine.kernels import cpu, reference
from engine.optim import AdamW, Muon, clip_grad_norm, consecutive_parts, newton_schulz_flops, updated_runs
from engine.params import ParameterStore
from train.config import load_config
from train.model_setup import build_model
from train.trainer import adamw_lr_scales, learning_rate, make_optimizers, micro_steps_per_step


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_numba_adamw_equals_the_reference(dtype, tol, n):
    rng = np.random.default_rng(n)
    param, grad = rng.normal(size=n).astype(dtype), rng.normal(size=n).astype(dtype)
    m, v = (rng.normal(size=n) * 0.1).astype(dtype), (rng.random(n) * 0.01).astype(dtype)
    decay = (rng.random(n) < 0.5).astype(np.uint8)
    expected = [a.copy() for a in (param, m, v)]
    got = [a.copy() for a in (param, m, v)]
    for step in (1, 2, 3):
        reference.adamw_step(expected[0], grad, expected[1], expected[2], decay, 1e-2, 0.9, 0.95, 1e-8, 0.1, step)
        cpu.adamw_step(got[0], grad, got[1], got[2], decay, 1e-2, 0.9, 0.95, 1e-8, 0.1, step)
    for e, g in zip(expected, got):
        assert np.linalg.norm(e - g) <= tol * np.linalg.norm(e)


def test_adamw_matches_pytorch():
    torch = pytest.importorskip("torch")
    store = ParameterStore([("w", (3, 4)), ("b", (4,))], dtype=np.float64)
    rng = np.random.default_rng(0)
    store.data[...] = rng.normal(size=store.numel)
    ours = AdamW(store, 0.9, 0.95, 1e-8, 0.1)
    w = torch.tensor(store.params["w"].copy(), requires_grad=True)
    b = torch.tensor(store.params["b"].copy(), requires_grad=True)
    theirs = torch.optim.AdamW([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}],
                               lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for step in range(5):
        store.grad[...] = rng.normal(size=store.numel)
        w.grad = torch.tensor(store.grads["w"].copy())
        b.grad = torch.tensor(store.grads["b"].copy())
        ours.step(1e-2 * (step + 1))
        for group in theirs.param_groups:
            group["lr"] = 1e-2 * (step + 1)
        theirs.step()
    np.testing.assert_allclose(store.params["w"], w.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(store.params["b"], b.detach().numpy(), rtol=1e-13)


def test_adamw_rates_per_group_match_pytorchs_param_groups():
    """modded-nanogpt's separate rates (embedding, head, vectors): factors of the step's lr,
    against torch.optim.AdamW with one group per rate."""
    torch = pytest.importorskip("torch")
    shapes = [("tok_emb.weight", (5, 2)), ("blocks.0.ffn.fc.weight", (2, 3)), ("blocks.0.ffn.fc.bias", (3,)),
              ("head.weight", (5, 2))]
    store = ParameterStore(shapes, dtype=np.float64)
    rng = np.random.default_rng(1)
    store.data[...] = rng.normal(size=store.numel)
    scales = {"tok_emb.weight": 30.0, "blocks.0.ffn.fc.bias": 0.5, "head.weight": 0.4}
    ours = AdamW(store, 0.9, 0.95, 1e-8, 0.1, lr_scales=scales)
    tensors = {name: torch.tensor(p.copy(), requires_grad=True) for name, p in store.params.items()}
    theirs = torch.optim.AdamW([{"params": [t], "weight_decay": 0.1 if t.dim() == 2 else 0.0,
                                 "scale": scales.get(name, 1.0)} for name, t in tensors.items()],
                               betas=(0.9, 0.95), eps=1e-8)
    for step in range(4):
        store.grad[...] = rng.normal(size=store.numel)
        for name, t in tensors.items():
            t.grad = torch.tensor(store.grads[name].copy())
        for group in theirs.param_groups:
            group["lr"] = 1e-2 * (step + 1) * group["scale"]
        ours.step(1e-2 * (step + 1))
        theirs.step()
    for name, t in tensors.items():
        np.testing.assert_allclose(store.params[name], t.detach().numpy(), rtol=1e-13, err_msg=name)


def test_adamw_runs_join_neighbours_at_one_rate_within_the_shard():
    store = ParameterStore([("a", (4,)), ("b", (2, 2)), ("c", (3,)), ("d", (2,)), ("e", (5,))])
    runs = updated_runs(store, slice(2, 16), exclude=["d"], lr_scales={"c": 2.0, "e": 2.0})
    assert runs == [(slice(0, 6), 1.0), (slice(6, 9), 2.0), (slice(11, 14), 2.0)]


def test_weight_decay_skips_biases_and_layernorm():
    store = ParameterStore([("tok_emb.weight", (5, 2)), ("ln_f.weight", (2,)), ("fc.bias", (3,))])
    decay = AdamW(store).decay
    assert decay[:10].all() and not decay[10:].any()


def test_clip_grad_norm():
    store = ParameterStore([("a", (2, 2)), ("b", (3,))], dtype=np.float64)
    store.grad[...] = [3, 0, 0, 4, 0, 0, 0]
    clip_grad_norm(store.grad, 1.0, 5.0)
    assert np.linalg.norm(store.grad) == pytest.approx(1.0, rel=1e-6)
    store.grad[...] = [0.3, 0, 0, 0.4, 0, 0, 0]
    clip_grad_norm(store.grad, 1.0, 0.5)
    assert np.linalg.norm(store.grad) == pytest.approx(0.5), "a norm under the limit is left alone"


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = load_config(None, ["--lr=1.0", "--min_lr=0.1", "--warmup_steps=10", "--max_steps=110"])
    lrs = [learning_rate(s, cfg) for s in range(111)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.5 * 0.9)
    assert lrs[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_each_groups_rate_key_names_its_parameters():
    cfg = load_config(None, ["--n_layer=1", "--tie_head=false", "--positions=learned", "--lr=0.01",
                             "--embedding_lr=0.6", "--head_lr=0.008"])
    scales = adamw_lr_scales(cfg, build_model(cfg).store)
    assert scales == {"tok_emb.weight": pytest.approx(60), "pos_emb.weight": pytest.approx(60),
                      "head.weight": pytest.approx(0.8)}, "vector_lr 0 leaves the vectors at lr"
    cfg.vector_lr = 0.02
    scales = adamw_lr_scales(cfg, build_model(cfg).store)
    assert scales["blocks.0.ln1.bias"] == scales["ln_f.weight"] == pytest.approx(2.0)
    assert "blocks.0.attn.qkv.weight" not in scales


def test_muon_runs_at_muon_lr_on_lrs_schedule():
    cfg = load_config(None, ["--n_layer=1", "--optimizer=muon", "--lr=0.01", "--muon_lr=0.03", "--dtype=float64"])
    model = build_model(cfg)
    _, muon = make_optimizers(cfg, model)
    twin = Muon(model.store, muon.names, cfg.muon_momentum)
    model.store.grad[...] = np.random.default_rng(2).normal(size=model.store.numel)
    start = model.store.data.copy()
    muon.step(0.005)  # half the peak: Muon at half of muon_lr
    scaled = model.store.data.copy()
    model.store.data[...] = start
    twin.step(0.015)
    np.testing.assert_array_equal(scaled, model.store.data)


def test_gradient_accumulation_steps():
    cfg = load_config(None, ["--batch_size=4", "--seq_len=8", "--tokens_per_step=128"])
    assert micro_steps_per_step(cfg) == 4 and micro_steps_per_step(cfg, world_size=2) == 2
    cfg.tokens_per_step = 100
    with pytest.raises(UserError, match="must be a multiple"):
        micro_steps_per_step(cfg)
    cfg.tokens_per_step = 0
    assert micro_steps_per_step(cfg) == 1


@pytest.mark.parametrize("shape", [(6, 10), (10, 6)])  # (in, out) both ways: wide and tall
def test_muon_matches_modded_nanogpts_step(shape):
    """Two steps of Muon on a stored (in, out) matrix against modded-nanogpt's on its (out, in)
    transpose, written from the record's code (tests/torch_reference.py)."""
    torch = pytest.importorskip("torch")
    from torch_reference import torch_muon_step
    store = ParameterStore([("blocks.0.attn.proj.weight", shape), ("blocks.0.attn.proj.bias", (shape[1],))],
                           dtype=np.float64)
    rng = np.random.default_rng(3)
    store.data[...] = rng.normal(size=store.numel)
    muon = Muon(store, ["blocks.0.attn.proj.weight"], momentum=0.95)
    p = torch.tensor(store.params["blocks.0.attn.proj.weight"].T.copy())
    buf = torch.zeros_like(p)
    for lr in (0.02, 0.01):
        store.grad[...] = rng.normal(size=store.numel)
        g = torch.tensor(store.grads["blocks.0.attn.proj.weight"].T.copy())
        muon.step(lr)
        torch_muon_step(p, g, buf, lr)
    np.testing.assert_allclose(store.params["blocks.0.attn.proj.weight"], p.numpy().T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(muon.buffers["blocks.0.attn.proj.weight"], buf.numpy().T, rtol=1e-12)


def test_muons_matrices_cut_into_runs_of_equal_work():
    assert consecutive_parts([4, 4, 4, 4], 2) == [0, 2, 4]
    assert consecutive_parts([9, 1, 1, 1], 2) == [0, 1, 4], "the big matrix alone is half the work"
    assert consecutive_parts([5, 5], 3) == [0, 1, 1, 2], "more ranks than matrices: a rank without any"
    assert newton_schulz_flops((6, 10)) == newton_schulz_flops((10, 6)) == 5 * (4 * 36 * 10 + 2 * 216)


def test_adamw_leaves_what_muon_holds():
    store = ParameterStore([("tok_emb.weight", (5, 2)), ("blocks.0.ffn.fc.weight", (2, 3)), ("ln_f.bias", (2,))],
                           dtype=np.float64)
    store.data[...] = 1.0
    store.grad[...] = 0.5
    AdamW(store, exclude=["blocks.0.ffn.fc.weight"]).step(0.1)
    np.testing.assert_array_equal(store.params["blocks.0.ffn.fc.weight"], 1.0)
    assert (store.params["tok_emb.weight"] < 1.0).all() and (store.params["ln_f.bias"] < 1.0).all()

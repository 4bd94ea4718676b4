"""Incremental decoding with a key/value cache, and nano2_sample."""
import numpy as np
import pytest

from layers.model import Decoder, ModelConfig, init_parameters
from train import sample
from train.cli import run_main


@pytest.fixture(params=[{}, {"qk_norm": True, "positions": "learned", "tie_head": False},
                        {"qk_norm": True, "positions": "rotary"}], ids=["nano2", "modded", "rotary"])
def model(request):
    model = Decoder(ModelConfig(256, 32, 2, 4, 64, 16, **request.param), dtype=np.float64)
    init_parameters(model.store, 2, seed=0)
    model.store.data[...] += np.random.default_rng(1).normal(0, 0.2, model.store.numel)
    return model


def test_cached_logits_equal_full_recomputation(model):
    idx = np.random.default_rng(0).integers(0, 256, size=(2, 16))
    full, _ = model.forward(idx)
    cache = model.new_kv_cache(2)
    pieces = [model.forward_cached(idx[:, :5], cache, 0)]  # a prompt, then one token at a time
    pieces += [model.forward_cached(idx[:, t:t + 1], cache, t) for t in range(5, 16)]
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=1e-12, atol=1e-12)


def test_generate_matches_greedy_full_recomputation(model):
    prompt = [0, 72, 105]
    tokens = sample.generate(model, prompt, 30, temperature=0, top_k=0, rng=None)
    expected = list(prompt)
    for _ in range(30):  # the slow way: the whole (cropped) context every time
        context = expected[-model.config.seq_len:] if len(expected) <= model.config.seq_len else None
        if context is None:
            break
        logits, _ = model.forward(np.array([context]))
        expected.append(int(np.argmax(logits[0, -1])))
    assert tokens[:len(expected)] == expected
    assert len(tokens) == len(prompt) + 30, "generation goes on past seq_len by restarting the window"


def test_sampling_is_seeded_and_top_k_limits_choices():
    logits = np.array([5.0, 4.0, 3.0, -2.0, 1.0])
    draws = [sample.next_token(logits, 1.0, 2, np.random.default_rng(s)) for s in range(200)]
    assert set(draws) == {0, 1}
    same = [sample.next_token(logits, 1.0, 0, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(same)) == 1
    assert sample.next_token(logits, 0.0, 0, None) == 0


def test_sample_command_prints_a_story(small_args, tmp_path, capsys):
    from train import trainer
    assert trainer.main(small_args + ["--max_steps=2", "--eval_interval=2"]) == 0
    capsys.readouterr()
    ckpt = str(tmp_path / "run" / "ckpt-0000002.safetensors")
    assert sample.main(["--ckpt", ckpt, "--prompt", "Once upon a time", "--max-new-tokens", "20",
                        "--num-samples", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("Once upon a time") == 2 and "-" * 60 in out


@pytest.mark.parametrize("argv, message", [
    (["--ckpt", "missing.safetensors"], "no such file"),
    (["--ckpt", "x", "--temperature", "-1"], "must not be negative"),
    (["--ckpt", "x", "--temperature", "nan"], "--temperature must be finite, got nan"),
    (["--ckpt", "x", "--temperature", "inf"], "--temperature must be finite, got inf"),
    (["--ckpt", "x", "--num-samples", "0"], "--num-samples must be positive"),
    (["--ckpt", "x", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_sample_bad_input(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: sample.main(argv), "nano2_sample")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err

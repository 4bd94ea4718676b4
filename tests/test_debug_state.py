"""nano2_debug state: one step's inputs, logits, loss, parameters and gradients in one file."""
import numpy as np
import pytest

from engine.params import read_safetensors
from layers.model import Decoder, ModelConfig, parameter_shapes
from train import debug


def test_state_file_holds_the_whole_step(tmp_path, capsys):
    out = tmp_path / "state.safetensors"
    argv = ["state", "--config", "configs/tiny.json", "--batch-size", "2", "--seq-len", "12",
            "--seed", "7", "--dtype", "float64", "--out", str(out)]
    assert debug.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    tensors, metadata = read_safetensors(out)

    cfg = metadata["config"]
    assert (cfg["d_model"], cfg["n_layer"], cfg["batch_size"], cfg["seq_len"], cfg["seed"],
            cfg["dtype"]) == (128, 4, 2, 12, 7, "float64")
    names = [name for name, _ in parameter_shapes(ModelConfig(256, 128, 4, 4, 512))]
    expected = {"inputs", "targets", "logits", "loss"} | set(names) | {f"grad.{n}" for n in names}
    assert set(tensors) == expected
    assert tensors["inputs"].shape == tensors["targets"].shape == (2, 12)
    assert tensors["inputs"].dtype == np.int32
    assert tensors["logits"].shape == (2, 12, 256) and tensors["logits"].dtype == np.float64
    np.testing.assert_array_equal(tensors["inputs"][:, 1:], tensors["targets"][:, :-1])

    # The file is self-consistent: its parameters and inputs reproduce its loss and gradients.
    model = Decoder(ModelConfig(256, 128, 4, 4, 512, 12), dtype=np.float64)
    model.store.load_tensors(tensors, str(out))
    logits, loss = model.forward(tensors["inputs"], tensors["targets"])
    model.backward()
    assert float(loss) == pytest.approx(float(tensors["loss"][0]), rel=1e-14)
    np.testing.assert_allclose(logits, tensors["logits"], rtol=1e-13)
    for name in names:
        np.testing.assert_allclose(model.store.grads[name], tensors[f"grad.{name}"], rtol=1e-12, atol=1e-18)


def test_same_seed_same_state(tmp_path):
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for path in paths:
        debug.main(["state", "--config", "configs/tiny.json", "--batch-size", "1", "--seq-len", "8",
                    "--seed", "3", "--out", str(path)])
    a, b = (read_safetensors(p)[0] for p in paths)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])

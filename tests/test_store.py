"""The flat parameter store and its safetensors files."""
import os

import numpy as np
import pytest

from engine.errors import UserError
from engine.params import ParameterStore, read_safetensors, write_safetensors

SHAPES = [("a.weight", (3, 4)), ("a.bias", (4,)), ("b.weight", (2, 2))]


def test_one_buffer_for_parameters_one_for_gradients():
    store = ParameterStore(SHAPES)
    assert store.numel == 12 + 4 + 4 and store.data.shape == store.grad.shape == (20,)
    for name, shape in SHAPES:
        assert store.params[name].shape == shape
        assert np.shares_memory(store.params[name], store.data)
        assert np.shares_memory(store.grads[name], store.grad)
    store.grads["a.bias"][...] = 1.0
    assert store.grad[12:16].tolist() == [1.0] * 4
    store.zero_grad()
    assert not store.grad.any()


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError):
        ParameterStore([("x", (1,)), ("x", (2,))])


def test_save_and_load_round_trip(tmp_path):
    store = ParameterStore(SHAPES, dtype=np.float64)
    store.data[...] = np.arange(20)
    store.grad[...] = -np.arange(20)
    path = tmp_path / "s.safetensors"
    write_safetensors(path, store.state_tensors(with_grads=True), {"config": {"d_model": 4}, "note": "hi"})
    tensors, metadata = read_safetensors(path)
    assert metadata == {"config": {"d_model": 4}, "note": "hi"}
    np.testing.assert_array_equal(tensors["grad.a.bias"], -np.arange(12, 16))
    other = ParameterStore(SHAPES, dtype=np.float64)
    other.load_tensors(tensors, str(path))
    np.testing.assert_array_equal(other.data, store.data)
    assert [f for f in os.listdir(tmp_path)] == ["s.safetensors"], "no temporary file left behind"


def test_load_refuses_another_models_tensors(tmp_path):
    store = ParameterStore(SHAPES)
    wrong = {"a.weight": np.zeros((4, 3), np.float32), "a.bias": np.zeros(4, np.float32),
             "b.weight": np.zeros((2, 2), np.float32)}
    with pytest.raises(UserError, match="a.weight.*different config"):
        store.load_tensors(wrong, "ckpt")
    missing = {"a.weight": np.zeros((3, 4), np.float32), "a.bias": np.zeros(4, np.float32)}
    with pytest.raises(UserError, match="no tensor 'b.weight'"):
        store.load_tensors(missing, "ckpt")


def test_truncated_or_corrupt_files_are_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    store = ParameterStore(SHAPES)
    write_safetensors(path, store.state_tensors(), {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable safetensors file"):
        read_safetensors(path)
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(UserError, match="not a readable safetensors file"):
        read_safetensors(path)
    with pytest.raises(UserError, match="no such file"):
        read_safetensors(tmp_path / "missing.safetensors")


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "s.safetensors"
    write_safetensors(path, {"x": np.ones(3, np.float32)}, {})
    good = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("engine.params.save_file", crash)
    with pytest.raises(OSError):
        write_safetensors(path, {"x": np.zeros(3, np.float32)}, {})
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["s.safetensors"]


def test_a_path_that_cannot_be_written_is_one_user_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    for path in (tmp_path, tmp_path / "file" / "x.safetensors"):
        with pytest.raises(UserError, match="cannot write"):
            write_safetensors(path, {"a": np.zeros(2, np.float32)}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no temporary file left behind


def test_a_tensor_numpy_cannot_hold_is_refused_not_a_traceback(tmp_path):
    """A bfloat16 tensor (what torch often saves): safetensors' NumPy reader would raise a TypeError."""
    import json
    import struct
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x80\x3f\x00\x40")
    with pytest.raises(UserError, match="tensor w is BF16, which NumPy cannot hold; save it as float32"):
        read_safetensors(path)
    assert read_safetensors(path, tensors=False) == ({}, {})  # the header alone reads


def test_atomic_writes_get_a_plain_files_mode_not_mkstemps(tmp_path):
    """Checkpoints, exported weights, prepared data and PNGs are written to a temporary file and
    renamed; the file then has the mode the umask gives a new file (mkstemp alone gives 0600)."""
    import matplotlib.pyplot as plt

    from train.plot import save_figure
    umask = os.umask(0o022)
    try:
        write_safetensors(tmp_path / "a.safetensors", {"w": np.zeros(2, np.float32)}, {})
        save_figure(plt.figure(), str(tmp_path / "a.png"))
    finally:
        os.umask(umask)
    for name in ("a.safetensors", "a.png"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name

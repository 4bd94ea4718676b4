"""The GPU backend through CuPy: the CUDA kernels against reference.py, the whole model on the
GPU against the CPU backend, and the GPU timing commands. Runs only where CuPy sees a GPU;
elsewhere tests/test_cuda_kernels.py proves the same sources by compiling and emulating them."""
import json

import numpy as np
import pytest

cp = pytest.importorskip("cupy", reason="needs CuPy (pip install -e '.[gpu]')")
pytestmark = pytest.mark.skipif(not cp.cuda.is_available(), reason="no CUDA device here")

from engine.kernels import gpu, reference  # noqa: E402
from helpers import KERNEL_TOLERANCE, kernel_error  # noqa: E402
from train import timing  # noqa: E402
from train.config import load_config  # noqa: E402
from train.data import random_batch  # noqa: E402
from train.model_setup import build_model  # noqa: E402


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 32), (2, 3, 37, 64), (1, 2, 130, 128)])
def test_attention_kernels(dtype, shape):
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal(shape).astype(dtype) for _ in range(4))
    out, lse = gpu.attention_forward(*(cp.asarray(a) for a in (q, k, v)))
    expected_out, expected_lse = reference.attention_forward(q, k, v)
    assert kernel_error(out, expected_out) <= KERNEL_TOLERANCE[dtype]
    assert kernel_error(lse, expected_lse) <= KERNEL_TOLERANCE[dtype]
    grads = gpu.attention_backward(cp.asarray(dout), *(cp.asarray(a) for a in (q, k, v)), out, lse)
    for got, want in zip(grads, reference.attention_backward(dout, q, k, v, expected_out, expected_lse)):
        assert kernel_error(got, want, np.linalg.norm(dout)) <= KERNEL_TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, vocab", [(1, 1), (5, 33), (64, 50257)])
def test_softmax_xent_kernels(dtype, rows, vocab):
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((rows, vocab)) * 3).astype(dtype)
    targets = rng.integers(0, vocab, rows)
    dlosses = rng.standard_normal(rows).astype(dtype)
    losses, lse = gpu.softmax_xent_forward(cp.asarray(logits), cp.asarray(targets))
    expected_losses, expected_lse = reference.softmax_xent_forward(logits, targets)
    assert kernel_error(lse, expected_lse) <= KERNEL_TOLERANCE[dtype]
    assert kernel_error(losses, expected_losses, np.abs(expected_lse).max()) <= KERNEL_TOLERANCE[dtype]
    dlogits = gpu.softmax_xent_backward(cp.asarray(dlosses), cp.asarray(logits), lse, cp.asarray(targets))
    expected = reference.softmax_xent_backward(dlosses, logits, expected_lse, targets)
    assert kernel_error(dlogits, expected, np.linalg.norm(dlosses)) <= KERNEL_TOLERANCE[dtype]


def test_adamw_kernel():
    rng = np.random.default_rng(2)
    p, g, m, v = (rng.standard_normal(1000) for _ in range(4))
    v = np.abs(v)
    decay = (rng.random(1000) < 0.5).astype(np.uint8)
    expected = [a.copy() for a in (p, m, v)]
    reference.adamw_step(expected[0], g, expected[1], expected[2], decay, 1e-2, 0.9, 0.95, 1e-8, 0.1, 3)
    got = [cp.asarray(a) for a in (p, m, v)]
    gpu.adamw_step(got[0], cp.asarray(g), got[1], got[2], cp.asarray(decay), 1e-2, 0.9, 0.95, 1e-8, 0.1, 3)
    for a, b in zip(got, expected):
        assert kernel_error(a, b) <= 1e-12


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_whole_model_matches_the_cpu_backend(dtype, tol):
    cfg = load_config("configs/tiny.json", [f"--dtype={dtype}", "--seq_len=64"])
    idx, targets = random_batch(np.random.default_rng(3), 2, 64, cfg.vocab_size)
    cpu_model = build_model(cfg)
    cfg.device = "gpu"
    gpu_model = build_model(cfg)
    _, cpu_loss = cpu_model.forward(idx, targets)
    cpu_model.backward()
    _, gpu_loss = gpu_model.forward(cp.asarray(idx), cp.asarray(targets))
    gpu_model.backward()
    assert float(gpu_loss) == pytest.approx(float(cpu_loss), rel=tol)
    for name in cpu_model.store.shapes:
        assert kernel_error(gpu_model.store.grads[name], cpu_model.store.grads[name]) <= tol, name


@pytest.mark.parametrize("prog, iterations", [("nano2_fw", "--fw-iters=2"), ("nano2_fwbw", "--fwbw-iters=2")])
def test_gpu_timing_commands(prog, iterations, capsys):
    assert timing.main(["--config", "configs/tiny.json", "--json", iterations], prog=prog) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens_per_s"] > 0


def test_sum_of_squares_kernel():
    x = np.random.default_rng(4).standard_normal(100_003).astype(np.float32)
    assert float(gpu.sum_of_squares(cp.asarray(x))) == pytest.approx(reference.sum_of_squares(x), rel=1e-6)

"""The GPU backend through CuPy: the CUDA kernels against reference.py, the whole model on the
GPU against the CPU backend, and the GPU timing commands. Runs only where CuPy sees a GPU;
elsewhere tests/test_cuda_kernels.py proves the same sources by compiling and emulating them."""
import json

import numpy as np
import pytest

cp = pytest.importorskip("cupy", reason="needs CuPy (pip install -e '.[cuda12]' or '.[cuda13]')")
pytestmark = pytest.mark.skipif(not cp.cuda.is_available(), reason="no CUDA device here")

from engine.kernels import gpu, reference  # noqa: E402
from helpers import KERNEL_TOLERANCE, kernel_error  # noqa: E402
from train import timing  # noqa: E402
from train.config import load_config  # noqa: E402
from train.data import random_batch  # noqa: E402
from train.model_setup import build_model  # noqa: E402


# T = 1, and T spanning several query and key tiles of every kernel (8 to 64 rows), ragged, up to gpt2-small's.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 32), (2, 3, 37, 64), (1, 2, 130, 128), (2, 2, 257, 32),
                                   (1, 2, 1024, 64)])
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


def float64(*arrays):
    """Host float64 copies: the reference then gives the exact answer to the kernels' own inputs."""
    return [cp.asnumpy(a).astype(np.float64) for a in arrays]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 33), (2, 37, 768), (5, 4096),
                                   (9000, 100),  # more row groups than blocks: the blocks take several each
                                   (8, 1024, 768)])  # gpt2-small's
def test_layernorm_kernels(dtype, shape):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w, b = (rng.standard_normal(shape[-1]).astype(dtype) for _ in range(2))
    dy = rng.standard_normal(shape).astype(dtype)
    forward = gpu.layernorm_forward(cp.asarray(x), cp.asarray(w), cp.asarray(b), 1e-5)
    for got, want in zip(forward, reference.layernorm_forward(*float64(x, w, b), 1e-5)):
        assert got.dtype == dtype and got.shape == want.shape
        assert kernel_error(got, want) <= KERNEL_TOLERANCE[dtype]
    _, mean, rstd = forward
    grads = gpu.layernorm_backward(cp.asarray(dy), cp.asarray(x), mean, rstd, cp.asarray(w))
    for got, want in zip(grads, reference.layernorm_backward(*float64(dy, x, mean, rstd, w))):
        assert got.dtype == dtype and got.shape == want.shape
        assert kernel_error(got, want) <= KERNEL_TOLERANCE[dtype]
    again = gpu.layernorm_backward(cp.asarray(dy), cp.asarray(x), mean, rstd, cp.asarray(w))
    assert all(cp.array_equal(a, b) for a, b in zip(grads, again))  # no atomics: the same bits every run


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (3, 333), (2, 1024, 3072)])  # the last: several values a thread
def test_gelu_kernels(dtype, shape):
    rng = np.random.default_rng(5)
    x, dy = (rng.standard_normal(shape) * 3).astype(dtype), rng.standard_normal(shape).astype(dtype)
    y = gpu.gelu_forward(cp.asarray(x))
    assert y.dtype == dtype and y.shape == x.shape
    assert kernel_error(y, reference.gelu_forward(*float64(x))) <= KERNEL_TOLERANCE[dtype]
    dx = gpu.gelu_backward(cp.asarray(dy), cp.asarray(x))
    assert dx.dtype == dtype and dx.shape == x.shape
    assert kernel_error(dx, reference.gelu_backward(*float64(dy, x))) <= KERNEL_TOLERANCE[dtype]


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


@pytest.mark.parametrize("options", [[], ["--positions=learned", "--scale_embedding=false"],
                                     ["--activation=relu2", "--norm=rmsnorm", "--bias=false", "--tie_head=false",
                                      "--qk_norm=true", "--positions=rotary"]],
                         ids=["nano2", "gpt2-input", "modded"])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_whole_model_matches_the_cpu_backend(dtype, tol, options):
    cfg = load_config("configs/tiny.json", [f"--dtype={dtype}", "--seq_len=64", *options])
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


def test_embedding_backward_adds_into_the_gradient():
    rng = np.random.default_rng(6)
    idx = rng.integers(0, 11, size=(3, 40))  # many repeats
    dy, start = rng.standard_normal((3, 40, 7)), rng.standard_normal((11, 7))
    expected = start.copy()
    reference.embedding_backward(dy, idx, 2.5, expected)
    got = cp.asarray(start)
    gpu.embedding_backward(cp.asarray(dy), cp.asarray(idx), 2.5, got)
    assert kernel_error(got, expected) <= KERNEL_TOLERANCE[np.float64]


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_reaches_every_product_shape_the_model_makes(tf32):
    """--tf32 rounds float32 products' inputs to 10 mantissa bits (about 1e-3 relative); without
    it they are plain FP32 (about 1e-6). Both ways, after the other was set in this process."""
    from engine.backend import get_array_module
    get_array_module("gpu", tf32=not tf32)
    cp.ones((4, 4), np.float32) @ cp.ones((4, 4), np.float32)  # CuPy has read its setting by now
    get_array_module("gpu", tf32=tf32)
    rng = np.random.default_rng(7)
    rows, w = rng.standard_normal((512, 768)), rng.standard_normal((768, 1024))
    products = {"linear": (rows, w), "tied head": (rows, np.ascontiguousarray(w.T).T)}  # Wᵀ of a (V, d) matrix
    for name, (a, b) in products.items():
        got = gpu.matmul(cp.asarray(a, np.float32), cp.asarray(b, np.float32))
        error = kernel_error(got, a @ b)
        assert (error > 1e-4) if tf32 else (error < 1e-5), (name, error)

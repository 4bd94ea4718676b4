"""The Numba/BLAS kernels (engine/kernels/cpu.py) against the NumPy spec (reference.py):
float32 within 1e-5 relative, float64 within 1e-12, on ragged shapes (T not a multiple of
the query block, odd widths, one-row inputs)."""
import numba
import numpy as np
import pytest
from helpers import KERNEL_TOLERANCE, assert_kernel_close

from engine.kernels import cpu, reference

DTYPES = list(KERNEL_TOLERANCE)


def random(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 8), (2, 3, 37, 16), (1, 2, 64, 32), (1, 1, 130, 64), (2, 1, 200, 24),
                                   (2, 3, 300, 64), (1, 2, 260, 128)])  # the last two: several query blocks, ragged
@pytest.mark.parametrize("packed", [False, True], ids=["contiguous", "qkv-views"])
def test_attention(dtype, shape, packed):
    """packed: q, k, v are heads sliced out of one (B, T, 3d) buffer, as the layer passes them."""
    rng = np.random.default_rng(sum(shape))
    B, H, T, hd = shape
    if packed:
        qkv = random(rng, (B, T, 3, H, hd), dtype)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        dout = random(rng, (B, T, H, hd), dtype).transpose(0, 2, 1, 3)
    else:
        q, k, v, dout = (random(rng, shape, dtype) for _ in range(4))
    out, lse = cpu.attention_forward(q, k, v)
    expected_out, expected_lse = reference.attention_forward(q, k, v)
    assert_kernel_close(out, expected_out, dtype, "out")
    assert_kernel_close(lse, expected_lse, dtype, "lse")
    got = cpu.attention_backward(dout, q, k, v, out, lse)
    expected = reference.attention_backward(dout, q, k, v, expected_out, expected_lse)
    for name, g, e in zip(("dq", "dk", "dv"), got, expected):
        assert_kernel_close(g, e, dtype, name, scale=np.linalg.norm(dout.astype(np.float64)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, d_in, d_out", [(1, 5, 3), (37, 33, 65), (301, 64, 130), (2048, 96, 288)])
@pytest.mark.parametrize("views", [False, True], ids=["contiguous", "strided"])
def test_linear_products(dtype, rows, d_in, d_out, views):
    """matmul (with and without bias) and linear_backward, rows split unevenly over the threads;
    strided: x and dy are column slices of wider buffers and W is read through a transpose."""
    rng = np.random.default_rng(rows + d_in)
    if views:
        x = random(rng, (rows, d_in + 7), dtype)[:, 3:3 + d_in]
        dy = random(rng, (rows, 2 * d_out), dtype)[:, :d_out]
        w = random(rng, (d_out, d_in), dtype).T
    else:
        x, dy = random(rng, (rows, d_in), dtype), random(rng, (rows, d_out), dtype)
        w = random(rng, (d_in, d_out), dtype)
    b = random(rng, (d_out,), dtype)
    assert_kernel_close(cpu.matmul(x, w, b), reference.matmul(x, w, b), dtype, "y")
    assert_kernel_close(cpu.matmul(x, w), reference.matmul(x, w), dtype, "y without bias")
    for name, g, e in zip(("dx", "dw", "db"), cpu.linear_backward(dy, x, w), reference.linear_backward(dy, x, w)):
        assert g.dtype == dtype, name
        assert_kernel_close(g, e, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 5), (2, 7, 33), (3, 128)])
def test_layernorm(dtype, shape):
    rng = np.random.default_rng(1)
    x, dy = random(rng, shape, dtype, 3.0) + dtype(1.0), random(rng, shape, dtype)
    w, b = random(rng, shape[-1:], dtype), random(rng, shape[-1:], dtype)
    y, mean, rstd = cpu.layernorm_forward(x, w, b)
    ey, emean, erstd = reference.layernorm_forward(x, w, b)
    for name, g, e in (("y", y, ey), ("mean", mean, emean), ("rstd", rstd, erstd)):
        assert_kernel_close(g, e, dtype, name)
    for name, g, e in zip(("dx", "dw", "db"), cpu.layernorm_backward(dy, x, mean, rstd, w),
                          reference.layernorm_backward(dy, x, emean, erstd, w)):
        assert_kernel_close(g, e, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5, 17), (64, 96)])
def test_gelu(dtype, shape):
    rng = np.random.default_rng(2)
    x, dy = random(rng, shape, dtype, 2.0), random(rng, shape, dtype)
    assert_kernel_close(cpu.gelu_forward(x), reference.gelu_forward(x), dtype, "y")
    assert_kernel_close(cpu.gelu_backward(dy, x), reference.gelu_backward(dy, x), dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2), (3, 5, 17), (2, 4, 64, 32)])
def test_rmsnorm(dtype, shape):
    rng = np.random.default_rng(5)
    x, dy = random(rng, shape, dtype, 2.0) + dtype(0.5), random(rng, shape, dtype)
    y, rstd = cpu.rmsnorm_forward(x)
    expected_y, expected_rstd = reference.rmsnorm_forward(x)
    assert_kernel_close(y, expected_y, dtype, "y")
    assert_kernel_close(rstd, expected_rstd, dtype, "rstd")
    assert_kernel_close(cpu.rmsnorm_backward(dy, x, rstd), reference.rmsnorm_backward(dy, x, expected_rstd), dtype,
                        "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5, 17), (64, 96)])
def test_relu2(dtype, shape):
    rng = np.random.default_rng(6)
    x, dy = random(rng, shape, dtype, 2.0), random(rng, shape, dtype)
    assert_kernel_close(cpu.relu2_forward(x), reference.relu2_forward(x), dtype, "y")
    assert_kernel_close(cpu.relu2_backward(dy, x), reference.relu2_backward(dy, x), dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, H, T, hd", [(1, 1, 1, 2), (2, 3, 17, 8), (4, 4, 128, 32)])
def test_rotary(dtype, B, H, T, hd):
    """On heads as attention has them: a strided view of the qkv buffer (layers/attention.py)."""
    from layers.attention import split_heads
    from layers.rotary import rotary_table
    rng = np.random.default_rng(7)
    qkv = random(rng, (B, T, 3 * H * hd), dtype)
    q = split_heads(qkv[..., H * hd:2 * H * hd], H)
    cos, sin = (t.astype(dtype) for t in rotary_table(T, hd, 10000.0))
    assert_kernel_close(cpu.rotary_forward(q, cos, sin), reference.rotary_forward(q, cos, sin), dtype, "y")
    assert_kernel_close(cpu.rotary_forward(q, cos, -sin), reference.rotary_forward(q, cos, -sin), dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, vocab", [(1, 2), (9, 257), (64, 256)])
def test_softmax_xent(dtype, rows, vocab):
    rng = np.random.default_rng(3)
    logits = random(rng, (rows, vocab), dtype, 4.0)
    targets = rng.integers(0, vocab, size=rows)
    dlosses = random(rng, (rows,), dtype)
    losses, lse = cpu.softmax_xent_forward(logits, targets)
    expected_losses, expected_lse = reference.softmax_xent_forward(logits, targets)
    assert_kernel_close(losses, expected_losses, dtype, "losses")
    assert_kernel_close(lse, expected_lse, dtype, "lse")
    assert_kernel_close(cpu.softmax_xent_backward(dlosses, logits, lse, targets),
                 reference.softmax_xent_backward(dlosses, logits, expected_lse, targets), dtype, "dlogits",
                 scale=np.linalg.norm(dlosses.astype(np.float64)))  # p - 1 cancels when p ≈ 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward(dtype):
    rng = np.random.default_rng(4)
    idx = rng.integers(0, 11, size=(3, 40))  # many repeats
    dy = random(rng, (3, 40, 7), dtype)
    start = random(rng, (11, 7), dtype)  # the kernels add into the gradient that is there
    got, expected = start.copy(), start.copy()
    cpu.embedding_backward(dy, idx, 2.5, got)
    reference.embedding_backward(dy, idx, 2.5, expected)
    assert_kernel_close(got, expected, dtype)


def test_nan_still_reaches_the_output():
    """The kernels are compiled with fast-math minus the no-NaN/no-Inf assumptions."""
    x = np.ones((2, 8), np.float32)
    x[1, 3] = np.nan
    y, _, _ = cpu.layernorm_forward(x, np.ones(8, np.float32), np.zeros(8, np.float32))
    assert np.isnan(y[1]).all() and np.isfinite(y[0]).all()
    assert np.isnan(cpu.gelu_forward(x)[1, 3])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 7, 100_003])
def test_sum_of_squares(dtype, size):
    x = random(np.random.default_rng(size), (size,), dtype)
    assert_kernel_close(cpu.sum_of_squares(x), reference.sum_of_squares(x), dtype)


@numba.njit(fastmath=cpu.FAST)
def exp_in_a_kernel(x, y):
    for i in range(x.size):
        y[i] = cpu.fast_exp(x[i])


def test_fast_exp_in_float32():
    """Within 2e-7 of exp over the whole float32 range, compiled as the kernels compile it (a
    reassociation that merged the two-part ln 2 would show here); 0 below it, inf above, NaN kept."""
    x = np.concatenate([np.linspace(-87.3, 88.7, 1_000_001), [-np.inf, -100.0, 100.0, np.inf, np.nan]])
    x = x.astype(np.float32)
    y = np.empty_like(x)
    exp_in_a_kernel(x, y)
    exact = np.exp(x[:-5].astype(np.float64))
    assert np.abs(y[:-5] / exact - 1).max() < 2e-7
    assert list(y[-5:-1]) == [0.0, 0.0, np.inf, np.inf] and np.isnan(y[-1])

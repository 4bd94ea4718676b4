"""Every layer's pure forward/backward pair against central differences in float64.

Each pair is checked on a scalar loss L = Σ y ∘ g with a fixed random g, so dL/dy = g is what
backward receives and every output entry takes part."""
import math

import numpy as np
import pytest
from helpers import assert_grad_close

from layers.attention import causal_attention_backward, causal_attention_forward
from layers.embedding import (embedding_backward, embedding_forward, tied_head_backward,
                              tied_head_forward)
from layers.ffn import gelu_backward, gelu_forward, relu2_backward, relu2_forward
from layers.layernorm import layernorm_backward, layernorm_forward
from layers.linear import linear_backward, linear_forward
from layers.rmsnorm import rmsnorm_backward, rmsnorm_forward
from layers.rotary import RotaryPositions, rotary_backward, rotary_forward, rotary_table
from layers.positions import learned_positions_backward, positions_backward, positions_forward, sinusoidal_table
from layers.xent import cross_entropy_backward, cross_entropy_forward


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_linear(rng):
    x, w, b = rng.normal(size=(2, 3, 5)), rng.normal(size=(5, 4)), rng.normal(size=4)
    g = rng.normal(size=(2, 3, 4))
    dx, dw, db = linear_backward(g, linear_forward(x, w, b)[1])
    loss = lambda: (linear_forward(x, w, b)[0] * g).sum()
    assert_grad_close(dx, loss, x, "dx")
    assert_grad_close(dw, loss, w, "dw")
    assert_grad_close(db, loss, b, "db")


def test_layernorm(rng):
    x = rng.normal(size=(2, 3, 6)) * 3 + 1
    w, b = rng.normal(size=6), rng.normal(size=6)
    g = rng.normal(size=(2, 3, 6))
    dx, dw, db = layernorm_backward(g, layernorm_forward(x, w, b)[1])
    loss = lambda: (layernorm_forward(x, w, b)[0] * g).sum()
    assert_grad_close(dx, loss, x, "dx")
    assert_grad_close(dw, loss, w, "dw")
    assert_grad_close(db, loss, b, "db")


def test_layernorm_normalises(rng):
    y, _ = layernorm_forward(rng.normal(size=(4, 32)) * 5 + 3, np.ones(32), np.zeros(32))
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=-1), 1 / (1 + 1e-5 / y.var(axis=-1)), rtol=1e-3)


def test_gelu(rng):
    x = rng.normal(size=(3, 7)) * 2
    g = rng.normal(size=(3, 7))
    dx = gelu_backward(g, gelu_forward(x)[1])
    assert_grad_close(dx, lambda: (gelu_forward(x)[0] * g).sum(), x, "dx")


def test_gelu_matches_the_tanh_formula():
    """The formula in extended precision: in float64, 1 + tanh u loses digits where tanh u is
    near -1 (6.7e-15 relative at x = -3 against 40 digits; the kernel's x σ(2u) is 6e-17)."""
    x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0])
    wide = x.astype(np.longdouble)
    expected = 0.5 * wide * (1 + np.tanh(np.longdouble(math.sqrt(2 / math.pi)) * (wide + 0.044715 * wide ** 3)))
    np.testing.assert_allclose(gelu_forward(x)[0], expected.astype(np.float64), rtol=1e-15)


def test_embedding_scatter_adds_repeated_tokens(rng):
    idx = np.array([[1, 4, 1], [0, 4, 4]])  # repeats: their gradients must add up
    w = rng.normal(size=(6, 5))
    g = rng.normal(size=(2, 3, 5))
    dw = np.ones_like(w)  # the backward adds into the gradient that is there
    embedding_backward(g, embedding_forward(idx, w, 2.5)[1], dw)
    dw -= 1
    assert_grad_close(dw, lambda: (embedding_forward(idx, w, 2.5)[0] * g).sum(), w, "dw")
    np.testing.assert_array_equal(dw[[2, 3, 5]], 0)


def test_tied_head(rng):
    h, w = rng.normal(size=(2, 3, 5)), rng.normal(size=(7, 5))
    g = rng.normal(size=(2, 3, 7))
    dh, dw = tied_head_backward(g, tied_head_forward(h, w)[1])
    loss = lambda: (tied_head_forward(h, w)[0] * g).sum()
    assert_grad_close(dh, loss, h, "dh")
    assert_grad_close(dw, loss, w, "dw")


def test_positions(rng):
    table = sinusoidal_table(10, 6)
    x, g = rng.normal(size=(2, 4, 6)), rng.normal(size=(2, 4, 6))
    dx = positions_backward(g)
    assert_grad_close(dx, lambda: (positions_forward(x, table) * g).sum(), x, "dx")


def test_learned_positions(rng):
    table = rng.normal(size=(10, 6))  # seq_len 10 rows; a sequence of 4 uses the first 4
    x, g = rng.normal(size=(2, 4, 6)), rng.normal(size=(2, 4, 6))
    dtable = np.ones_like(table)  # the backward adds into the gradient that is there
    dx = learned_positions_backward(g, dtable)
    dtable -= 1
    loss = lambda: (positions_forward(x, table) * g).sum()  # noqa: E731
    assert_grad_close(dx, loss, x, "dx")
    assert_grad_close(dtable, loss, table, "dP")
    np.testing.assert_array_equal(dtable[4:], 0)


def test_sinusoidal_table_follows_the_formula():
    d = 6
    table = sinusoidal_table(5, d)
    for p in range(5):
        for i in range(d // 2):
            assert table[p, 2 * i] == pytest.approx(math.sin(p / 10000 ** (2 * i / d)), abs=1e-15)
            assert table[p, 2 * i + 1] == pytest.approx(math.cos(p / 10000 ** (2 * i / d)), abs=1e-15)
    assert sinusoidal_table(3, 5).shape == (3, 5)  # odd widths end on a sine column


@pytest.mark.parametrize("qk_norm, rotary", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("n_head", [1, 2])
def test_causal_attention(rng, n_head, qk_norm, rotary):
    qkv = rng.normal(size=(2, 5, 3 * 4))
    g = rng.normal(size=(2, 5, 4))
    table = RotaryPositions(5, 4 // n_head, 100.0, np.float64, np) if rotary else None
    dqkv = causal_attention_backward(g, causal_attention_forward(qkv, n_head, qk_norm, table)[1])
    loss = lambda: (causal_attention_forward(qkv, n_head, qk_norm, table)[0] * g).sum()
    assert_grad_close(dqkv, loss, qkv, "dqkv")


def test_causal_attention_ignores_the_future(rng):
    qkv = rng.normal(size=(1, 6, 3 * 4))
    y, _ = causal_attention_forward(qkv, 2)
    changed = qkv.copy()
    changed[:, 4:] += 10.0  # positions 4 and 5 change; 0..3 must not notice
    y2, _ = causal_attention_forward(changed, 2)
    np.testing.assert_array_equal(y[:, :4], y2[:, :4])
    assert not np.allclose(y[:, 4:], y2[:, 4:])


def test_cross_entropy(rng):
    logits = rng.normal(size=(2, 3, 7))
    targets = rng.integers(0, 7, size=(2, 3))
    loss, cache = cross_entropy_forward(logits, targets)
    dlogits = cross_entropy_backward(1.0, cache)
    assert_grad_close(dlogits, lambda: cross_entropy_forward(logits, targets)[0], logits, "dlogits")
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = -np.log(np.take_along_axis(p, targets[..., None], -1)).mean()
    assert float(loss) == pytest.approx(expected, rel=1e-14)


def test_relu2(rng):
    x, g = rng.normal(size=(2, 3, 7)), rng.normal(size=(2, 3, 7))
    x[np.abs(x) < 1e-3] = 0.5  # away from the kink, where central differences straddle it
    y, cache = relu2_forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0) ** 2)
    assert_grad_close(relu2_backward(g, cache), lambda: (relu2_forward(x)[0] * g).sum(), x, "dx")


def test_rmsnorm(rng):
    x, g = rng.normal(size=(2, 3, 8)) * 2 + 0.5, rng.normal(size=(2, 3, 8))
    y, cache = rmsnorm_forward(x)
    np.testing.assert_allclose(y, x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + np.finfo(float).eps),
                               rtol=1e-15)
    assert_grad_close(rmsnorm_backward(g, cache), lambda: (rmsnorm_forward(x)[0] * g).sum(), x, "dx")


def test_rotary(rng):
    cos, sin = rotary_table(10, 6, 10000.0)
    x, g = rng.normal(size=(2, 3, 4, 6)), rng.normal(size=(2, 3, 4, 6))
    y = rotary_forward(x, cos, sin, start=3)
    t, i = 5, 1  # position 5 (start 3 + row 2), pair i = 1: dimensions 1 and 1 + 3
    angle = t * 10000.0 ** (-2 * i / 6)
    assert y[0, 0, 2, 1] == pytest.approx(x[0, 0, 2, 1] * math.cos(angle) + x[0, 0, 2, 4] * math.sin(angle))
    assert y[0, 0, 2, 4] == pytest.approx(x[0, 0, 2, 4] * math.cos(angle) - x[0, 0, 2, 1] * math.sin(angle))
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-14)  # a rotation
    dx = rotary_backward(g, cos[3:], sin[3:])
    assert_grad_close(dx, lambda: (rotary_forward(x, cos, sin, start=3) * g).sum(), x, "dx")

"""engine/kernels/reference.py is the spec the fast kernels are held to, so it is checked
here against the plainest possible loops and against central differences in float64."""
import numpy as np
import pytest
from helpers import assert_grad_close

from engine.kernels import reference


def attention_by_loops(q, k, v):
    """One query row at a time over its visible keys: the definition, nothing fused."""
    B, H, T, hd = q.shape
    out, lse = np.zeros_like(q), np.zeros((B, H, T))
    for b in range(B):
        for h in range(H):
            for t in range(T):
                scores = np.array([q[b, h, t] @ k[b, h, s] / np.sqrt(hd) for s in range(t + 1)])
                lse[b, h, t] = np.log(np.exp(scores).sum())
                out[b, h, t] = (np.exp(scores - lse[b, h, t])[:, None] * v[b, h, :t + 1]).sum(0)
    return out, lse


@pytest.mark.parametrize("shape", [(1, 1, 1, 4), (2, 3, 7, 5), (1, 2, 33, 8)])
def test_attention_forward_matches_the_definition(shape):
    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(size=shape) for _ in range(3))
    out, lse = reference.attention_forward(q, k, v)
    expected_out, expected_lse = attention_by_loops(q, k, v)
    np.testing.assert_allclose(out, expected_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, expected_lse, rtol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 5, 3), (2, 2, 6, 4)])
def test_attention_backward(shape):
    rng = np.random.default_rng(2)
    q, k, v = (rng.normal(size=shape) for _ in range(3))
    g = rng.normal(size=shape)
    out, lse = reference.attention_forward(q, k, v)
    dq, dk, dv = reference.attention_backward(g, q, k, v, out, lse)
    loss = lambda: (reference.attention_forward(q, k, v)[0] * g).sum()
    assert_grad_close(dq, loss, q, "dq")
    assert_grad_close(dk, loss, k, "dk")
    assert_grad_close(dv, loss, v, "dv")


def test_attention_is_stable_for_large_scores():
    q = np.full((1, 1, 4, 2), 300.0)
    out, lse = reference.attention_forward(q, q, q)
    assert np.isfinite(out).all() and np.isfinite(lse).all()


def test_softmax_xent_forward_matches_the_definition():
    rng = np.random.default_rng(3)
    logits, targets = rng.normal(size=(9, 13)) * 4, rng.integers(0, 13, size=9)
    losses, lse = reference.softmax_xent_forward(logits, targets)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(losses, -np.log(probs[np.arange(9), targets]), rtol=1e-13)
    np.testing.assert_allclose(lse, np.log(np.exp(logits).sum(axis=1)), rtol=1e-14)


def test_softmax_xent_backward():
    rng = np.random.default_rng(4)
    logits, targets = rng.normal(size=(6, 11)), rng.integers(0, 11, size=6)
    dlosses = rng.normal(size=6)
    losses, lse = reference.softmax_xent_forward(logits, targets)
    dlogits = reference.softmax_xent_backward(dlosses, logits, lse, targets)
    loss = lambda: (reference.softmax_xent_forward(logits, targets)[0] * dlosses).sum()
    assert_grad_close(dlogits, loss, logits, "dlogits")


def test_softmax_xent_is_stable_for_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0]])
    losses, lse = reference.softmax_xent_forward(logits, np.array([0]))
    assert losses[0] == pytest.approx(0.0, abs=1e-12)
    assert np.isfinite(reference.softmax_xent_backward(np.ones(1), logits, lse, np.array([2]))).all()


def test_layernorm_backward():
    """The GPU runs these reference kernels as they are, so they get their own central
    differences, not only the CPU kernels' (which the layer tests check)."""
    rng = np.random.default_rng(5)
    x, w, b, g = rng.normal(size=(2, 3, 7)), rng.normal(size=7), rng.normal(size=7), rng.normal(size=(2, 3, 7))
    _, mean, rstd = reference.layernorm_forward(x, w, b)
    dx, dw, db = reference.layernorm_backward(g, x, mean, rstd, w)
    loss = lambda: (reference.layernorm_forward(x, w, b)[0] * g).sum()
    assert_grad_close(dx, loss, x, "dx")
    assert_grad_close(dw, loss, w, "dw")
    assert_grad_close(db, loss, b, "db")


def test_gelu_backward():
    rng = np.random.default_rng(6)
    x, g = rng.normal(size=(4, 9)) * 2, rng.normal(size=(4, 9))
    assert_grad_close(reference.gelu_backward(g, x), lambda: (reference.gelu_forward(x) * g).sum(), x, "dx")


def test_embedding_backward_adds_repeated_tokens():
    rng = np.random.default_rng(7)
    w, idx, scale = rng.normal(size=(5, 3)), np.array([[0, 3, 3], [4, 0, 3]]), 1.7
    g = rng.normal(size=(2, 3, 3))
    loss = lambda: (scale * w[idx] * g).sum()
    dw = np.zeros_like(w)
    reference.embedding_backward(g, idx, scale, dw)
    assert_grad_close(dw, loss, w, "dw")

"""The classes that own parameters: their gradients land in the flat store, add up over
calls, and match central differences in float64 for parameters and input alike."""
import numpy as np
import pytest
from helpers import assert_grad_close

from engine.params import ParameterStore
from layers.attention import CausalSelfAttention
from layers.block import Block
from layers.ffn import FFN
from layers.layernorm import LayerNorm
from layers.linear import Linear
from layers.model import ModelConfig

D, D_FF, N_HEAD = 8, 12, 2


def block_shapes(prefix):
    return [(f"{prefix}.ln1.weight", (D,)), (f"{prefix}.ln1.bias", (D,)),
            (f"{prefix}.attn.qkv.weight", (D, 3 * D)), (f"{prefix}.attn.qkv.bias", (3 * D,)),
            (f"{prefix}.attn.proj.weight", (D, D)), (f"{prefix}.attn.proj.bias", (D,)),
            (f"{prefix}.ln2.weight", (D,)), (f"{prefix}.ln2.bias", (D,)),
            (f"{prefix}.ffn.fc.weight", (D, D_FF)), (f"{prefix}.ffn.fc.bias", (D_FF,)),
            (f"{prefix}.ffn.proj.weight", (D_FF, D)), (f"{prefix}.ffn.proj.bias", (D,))]


def make(kind):
    store = ParameterStore(block_shapes("b"), dtype=np.float64)
    rng = np.random.default_rng(5)
    store.data[...] = rng.normal(size=store.numel) * 0.5
    layer = {
        "linear": lambda: Linear(store, "b.ffn.fc", "linear fc"),
        "layernorm": lambda: LayerNorm(store, "b.ln1"),
        "attention": lambda: CausalSelfAttention(store, "b.attn", N_HEAD),
        "ffn": lambda: FFN(store, "b.ffn"),
        "block": lambda: Block(store, "b", ModelConfig(d_model=D, n_head=N_HEAD, d_ff=D_FF)),
    }[kind]()
    return store, layer


@pytest.mark.parametrize("kind", ["linear", "layernorm", "attention", "ffn", "block"])
def test_class_gradients(kind):
    store, layer = make(kind)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 5, D))
    y = layer.forward(x)
    g = rng.normal(size=y.shape)
    dx = layer.backward(g)
    loss = lambda: (layer.forward(x) * g).sum()
    assert_grad_close(dx, loss, x, f"{kind} dx")
    touched = [name for name in store.shapes if np.any(store.grads[name] != 0)]
    assert touched, "backward wrote no parameter gradient"
    for name in touched:
        assert_grad_close(store.grads[name].copy(), loss, store.params[name], name)


def test_gradients_accumulate_over_backward_calls():
    store, layer = make("block")
    x = np.random.default_rng(7).normal(size=(1, 4, D))
    g = np.ones((1, 4, D))
    layer.forward(x)
    layer.backward(g)
    once = store.grad.copy()
    layer.forward(x)
    layer.backward(g)
    np.testing.assert_allclose(store.grad, 2 * once, rtol=1e-14)


def test_parameters_are_views_into_the_store():
    store, layer = make("linear")
    store.data[...] = 0.0
    assert np.all(layer.weight == 0)
    layer.weight[...] = 3.0
    start = store.offsets["b.ffn.fc.weight"]
    assert np.all(store.data[start:start + D * D_FF] == 3.0)

"""nano2 against an independent PyTorch model written from DESIGN.md's description, with
autograd computing the gradients: same weights, same batch, same loss and gradients."""
import math

import numpy as np
import pytest

from layers.model import Decoder, init_parameters
from train.gradcheck import random_batch

torch = pytest.importorskip("torch")
F = torch.nn.functional

SIZES = dict(vocab_size=256, d_model=64, n_layer=3, n_head=4, d_ff=256, seq_len=32)


def torch_loss(p, idx, targets, n_layer, n_head):
    V, d = p["tok_emb.weight"].shape
    B, T = idx.shape
    position = torch.arange(T, dtype=p["tok_emb.weight"].dtype)[:, None]
    angle = position / 10000 ** (torch.arange(0, d, 2, dtype=position.dtype) / d)
    pe = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).reshape(T, d)
    x = math.sqrt(d) * p["tok_emb.weight"][idx] + pe
    for i in range(n_layer):
        b = lambda name: p[f"blocks.{i}.{name}"]
        h = F.layer_norm(x, (d,), b("ln1.weight"), b("ln1.bias"), eps=1e-5)
        q, k, v = (h @ b("attn.qkv.weight") + b("attn.qkv.bias")).split(d, dim=-1)
        q, k, v = (t.reshape(B, T, n_head, d // n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + y.transpose(1, 2).reshape(B, T, d) @ b("attn.proj.weight") + b("attn.proj.bias")
        h = F.layer_norm(x, (d,), b("ln2.weight"), b("ln2.bias"), eps=1e-5)
        h = F.gelu(h @ b("ffn.fc.weight") + b("ffn.fc.bias"), approximate="tanh")
        x = x + h @ b("ffn.proj.weight") + b("ffn.proj.bias")
    x = F.layer_norm(x, (d,), p["ln_f.weight"], p["ln_f.bias"], eps=1e-5)
    logits = x @ p["tok_emb.weight"].T
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))


@pytest.mark.parametrize("dtype, loss_tol, grad_tol", [
    (np.float64, 1e-10, 1e-8),
    (np.float32, 1e-5, 1e-4),
])
def test_loss_and_gradients_match_pytorch(dtype, loss_tol, grad_tol):
    model = Decoder(**SIZES, dtype=dtype)
    init_parameters(model.store, SIZES["n_layer"], seed=11)
    idx, targets = random_batch(np.random.default_rng(12), 3, SIZES["seq_len"], SIZES["vocab_size"])
    _, loss = model.forward(idx, targets)
    model.backward()

    params = {name: torch.tensor(value.copy(), requires_grad=True) for name, value in model.store.params.items()}
    reference_loss = torch_loss(params, torch.tensor(idx), torch.tensor(targets),
                                SIZES["n_layer"], SIZES["n_head"])
    reference_loss.backward()

    assert float(loss) == pytest.approx(reference_loss.item(), rel=loss_tol)
    for name, param in params.items():
        ours = model.store.grads[name].astype(np.float64)
        theirs = param.grad.numpy().astype(np.float64)
        err = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
        assert err <= grad_tol, f"{name}: relative gradient difference {err:.2e}"

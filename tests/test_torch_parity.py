"""nano2 against an independent PyTorch model written from DESIGN.md's description, with
autograd computing the gradients: same weights, same batch, same loss and gradients."""
import numpy as np
import pytest

from layers.model import Decoder, ModelConfig, init_parameters
from train.data import random_batch

torch = pytest.importorskip("torch")
from torch_reference import torch_loss  # noqa: E402

SIZES = dict(vocab_size=256, d_model=64, n_layer=3, n_head=4, d_ff=256, seq_len=32)
# configs/modded.json's options but zero_init_proj, whose zeros would leave most gradients at 0
MODDED = dict(activation="relu2", norm="rmsnorm", bias=False, tie_head=False, qk_norm=True, positions="rotary")


@pytest.mark.parametrize("options", [{}, dict(positions="learned", scale_embedding=False), dict(activation="relu2"),
                                     dict(norm="rmsnorm"), dict(bias=False), dict(tie_head=False), dict(qk_norm=True),
                                     dict(positions="rotary"), dict(positions="rotary", qk_norm=True), MODDED],
                         ids=["nano2", "gpt2-input", "relu2", "rmsnorm", "no-bias", "untied-head", "qk-norm", "rotary",
                              "rotary-qk-norm", "modded"])
@pytest.mark.parametrize("dtype, loss_tol, grad_tol", [
    (np.float64, 1e-10, 1e-8),
    (np.float32, 1e-5, 1e-4),
])
def test_loss_and_gradients_match_pytorch(dtype, loss_tol, grad_tol, options):
    model = Decoder(ModelConfig(**SIZES, **options), dtype=dtype)
    init_parameters(model.store, SIZES["n_layer"], seed=11)
    idx, targets = random_batch(np.random.default_rng(12), 3, SIZES["seq_len"] - 3, SIZES["vocab_size"])
    _, loss = model.forward(idx, targets)
    model.backward()

    params = {name: torch.tensor(value.copy(), requires_grad=True) for name, value in model.store.params.items()}
    reference_loss = torch_loss(params, torch.tensor(idx), torch.tensor(targets),
                                SIZES["n_layer"], SIZES["n_head"], **options)
    reference_loss.backward()

    assert float(loss) == pytest.approx(reference_loss.item(), rel=loss_tol)
    for name, param in params.items():
        ours = model.store.grads[name].astype(np.float64)
        theirs = param.grad.numpy().astype(np.float64)
        err = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
        assert err <= grad_tol, f"{name}: relative gradient difference {err:.2e}"

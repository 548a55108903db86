"""The training step (pyro_dvae.step.train_step) and how the loop around it reacts to its
non-finite losses."""

import csv
import math

import pytest
import torch

from pyro_dvae.likelihoods import ExponentialPower
from pyro_dvae.models import build_model
from pyro_dvae.step import train_step
from pyro_dvae.train import TrainConfig, Trainer, load_checkpoint

TINY = dict(z_dim=3, dense_x_gx=[8], dim_rnn_gx=6, dense_ztm1_g=[4], dense_g_z=[5], dense_z_x=[7])


def _quadratic(theta: torch.Tensor, phi: torch.Tensor):
    """A loss ``weight · mean((θ x − φ)²)`` over the valid frames of ``x (B, T, D)``."""

    def loss(x, mask, weight):
        error = (theta * x - phi) ** 2
        kept = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask
        return weight * error[kept].mean()

    return loss


def test_a_step_is_the_scaled_clipped_update_of_the_loss():
    """float64, and the same operations as the hand-written step: equal to the last bit."""
    x = torch.rand(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[True, True, False], [True, False, False]])
    params = [torch.full((4,), 2.0, dtype=torch.float64), torch.ones(4, dtype=torch.float64)]
    copies = [p.clone() for p in params]
    for p in params + copies:
        p.requires_grad_(True)
    opt, ref_opt = torch.optim.Adam(params, lr=0.1), torch.optim.Adam(copies, lr=0.1)

    value = train_step(_quadratic(*params), opt, x, mask, 0.5, scale=3.0, clip_norm=0.01)

    ref = _quadratic(*copies)(x, mask, 0.5)
    (3.0 * ref).backward()
    torch.nn.utils.clip_grad_norm_(copies, 0.01)
    ref_opt.step()
    assert not value.requires_grad and value.item() == ref.item()  # the loss before the update
    for p, q in zip(params, copies, strict=True):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad)
    assert not torch.equal(params[0], torch.full((4,), 2.0, dtype=torch.float64))


def test_frozen_parameters_get_no_update_and_no_share_of_the_clipped_norm():
    x = torch.rand(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    theta, phi = torch.full((4,), 2.0, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    theta.requires_grad_(True)
    phi.requires_grad_(True)
    (g_theta,) = torch.autograd.grad(_quadratic(theta, phi)(x, None, 1.0), [theta])
    norm = torch.linalg.vector_norm(g_theta).item()
    opt = torch.optim.SGD([theta, phi], lr=1.0)
    train_step(_quadratic(theta, phi), opt, x, None, 1.0, frozen=[phi], clip_norm=1e-3)
    assert phi.grad is None and torch.equal(phi, torch.ones(4, dtype=torch.float64))
    # SGD with lr 1: θ moved by its gradient times clip_grad_norm_'s max / (‖g_θ‖ + 1e-6); a
    # norm counting φ's gradient too would move it less. float64: rounding ~1e-16 relative.
    moved = torch.linalg.vector_norm(theta.detach() - 2.0).item()
    assert moved == pytest.approx(1e-3 * norm / (norm + 1e-6), rel=1e-12)


def test_a_nan_loss_in_an_epochs_last_step_stops_before_its_checkpoint(tmp_path):
    """One batch per epoch: the non-finite loss is seen only at the epoch's all-reduce, which
    must stop the run before the epoch's writes."""
    torch.manual_seed(0)
    model = build_model("dkf", 10, ExponentialPower(), **TINY)
    data = list(torch.rand(8, 6, 10, generator=torch.Generator().manual_seed(0)) + 0.01)
    cfg = TrainConfig(epochs=1, batch_size=8, warmup_every=0, progress=False)
    trainer = Trainer(model, data, data, cfg, tmp_path, torch.device("cpu"))
    trainer.fit()
    before = load_checkpoint(tmp_path / "last.pt")
    loss = trainer.loss
    trainer.loss = lambda x, mask, weight: loss(x, mask, weight) * math.nan
    trainer.cfg.epochs = 2
    with pytest.raises(FloatingPointError, match="non-finite loss nan at epoch 1"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.pt")["state"] == before["state"]
    assert len(list(csv.DictReader(open(tmp_path / "metrics.csv")))) == 1

"""Every model runs its output layer through pyro_dvae.nn.OutputLinear: the loss and every
gradient equal those of the same model with nn.Linear (float64)."""

import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from benchmarks.reference_basic import original_layers
from pyro_dvae import nn as dvae_nn
from pyro_dvae.likelihoods import ExponentialPower
from pyro_dvae.models import build_model
from pyro_dvae.nn import OutputLinear
from tests.models import test_dkf, test_dsae, test_rvae, test_srnn, test_storn, test_vrnn

SIZES = {"dkf": test_dkf.TINY, "storn": test_storn.TINY, "srnn": test_srnn.TINY}
SIZES |= {"vrnn": test_vrnn.TINY, "rvae_causal": test_rvae.TINY, "dsae": test_dsae.TINY}
SIZES["vae"] = dict(z_dim=3, dense_x_z=[5, 4])
B, T, D = 4, 6, 10  # D = 10: not a multiple of 16, so the output layer pads its rows
# float64: the padded output layer is the same product, summed in MKL's order for another row
# stride (~1e-16 relative); through the loss and T = 6 recurrent steps of weights below 1 in
# size, the loss and its gradients move by well under 1e-13; 1e-12 leaves an order of magnitude.
TOL = dict(rtol=1e-12, atol=1e-12)


def _loss_and_grads(model, x):
    torch.manual_seed(1)
    loss = TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, 0.7)
    return loss, torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("name", sorted(SIZES))
def test_loss_and_gradients_equal_the_plain_layers_model(name, monkeypatch):
    monkeypatch.setattr(dvae_nn, "MIN_ROWS", 0)  # tiny batches take the padded layer too
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        model = build_model(name, D, ExponentialPower(), **SIZES[name])
        x = torch.rand(B, T, D)
        assert any(isinstance(m, OutputLinear) and m.out_features == D for m in model.modules())
        loss, grads = _loss_and_grads(model, x)
        with original_layers(model):
            assert not any(isinstance(m, OutputLinear) for m in model.modules())
            expected_loss, expected_grads = _loss_and_grads(model, x)
    finally:
        torch.set_default_dtype(previous)
    torch.testing.assert_close(loss, expected_loss, **TOL)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, **TOL)

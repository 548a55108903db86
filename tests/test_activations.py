"""The CPU tanh of pyro_dvae.activations against torch.tanh."""

import pytest
import torch
from torch import nn

from pyro_dvae import activations
from pyro_dvae.activations import Tanh, tanh
from pyro_dvae.nn import MLP

# float64: 2σ(2x) − 1 rounds σ (1 ulp of 1, 2.2e-16) and the affine step (1 ulp each), so it
# is within ~4 ulp of 1 of tanh(x) for every x; its backward dy·(1 − y²) then differs by
# ~2·|y|·4 ulp per unit of dy. 1e-14 leaves an order of magnitude.
TOL = dict(rtol=0, atol=1e-14)


@pytest.fixture(autouse=True)
def every_size(monkeypatch):
    """Small test tensors take the sigmoid path too."""
    monkeypatch.setattr(activations, "MIN_ELEMENTS", 0)


def test_values_and_gradients_equal_torch_tanh():
    x = torch.linspace(-20, 20, 4001, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(4001, dtype=torch.float64)
    assert tanh(x).grad_fn.name().endswith("SigmoidTanhBackward")
    torch.testing.assert_close(tanh(x), torch.tanh(x), **TOL)
    got = torch.autograd.grad(tanh(x), x, dy)[0]
    expected = torch.autograd.grad(torch.tanh(x), x, dy)[0]
    torch.testing.assert_close(got, expected, **TOL)


def test_an_mlps_tanh_is_the_fast_one_with_nn_tanhs_keys_and_values():
    torch.manual_seed(0)
    mlp = MLP(5, [4, 3]).double()
    plain = nn.Sequential(*(nn.Tanh() if isinstance(m, Tanh) else m for m in mlp)).double()
    assert [type(m) for m in mlp] == [nn.Linear, Tanh, nn.Linear, Tanh]
    assert list(mlp.state_dict()) == list(plain.state_dict())
    x = torch.randn(6, 5, dtype=torch.float64)
    torch.testing.assert_close(mlp(x), plain(x), **TOL)

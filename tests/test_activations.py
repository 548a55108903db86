"""The CPU tanh of pyro_dvae.activations against torch.tanh."""

import pytest
import torch
from torch import nn

from pyro_dvae import activations
from pyro_dvae.activations import Tanh, tanh, use_fast_tanh
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


def test_swapping_keeps_parameters_and_state_dict_keys():
    torch.manual_seed(0)
    net = nn.Sequential(MLP(5, [4, 3]), nn.Linear(3, 2)).double()
    keys, x = list(net.state_dict()), torch.randn(6, 5, dtype=torch.float64)
    expected = net(x)
    assert use_fast_tanh(net) is net
    assert [type(m) for m in net[0]] == [nn.Linear, Tanh, nn.Linear, Tanh]
    assert list(net.state_dict()) == keys
    torch.testing.assert_close(net(x), expected, **TOL)

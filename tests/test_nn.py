import math

import pytest
import torch
from torch import nn

from pyro_dvae.likelihoods import build_likelihood
from pyro_dvae.models import build_model
from pyro_dvae.nn import MLP, GaussianHead, initialise


def test_mlp_applies_the_activation_after_every_layer():
    mlp = MLP(3, [4, 2], "tanh")
    x = torch.randn(5, 3)
    first, second = mlp[0], mlp[2]
    expected = torch.tanh(second(torch.tanh(first(x))))
    torch.testing.assert_close(mlp(x), expected)
    assert mlp.out_dim == 2 and len(MLP(3, [])) == 0


def test_glorot_redraws_only_mlp_layers_with_the_activation_gain():
    torch.manual_seed(0)
    net = nn.ModuleDict({"mlp": MLP(200, [300], "tanh"), "head": GaussianHead(300, 4)})
    head_before = net["head"].linear.weight.clone()
    initialise(net, "glorot")
    layer = net["mlp"][0]
    bound = 5 / 3 * math.sqrt(6 / (200 + 300))  # tanh gain 5/3
    assert layer.weight.abs().max() <= bound
    # uniform on ±bound: std = bound/√3 (60,000 draws)
    assert abs(layer.weight.std().item() - bound / math.sqrt(3)) < 0.01 * bound
    assert torch.count_nonzero(layer.bias) == 0
    torch.testing.assert_close(net["head"].linear.weight, head_before)


def test_torch_init_is_untouched_and_unknown_scheme_names_the_key():
    torch.manual_seed(0)
    mlp = MLP(3, [4])
    before = mlp[0].weight.clone()
    initialise(mlp, "torch")
    torch.testing.assert_close(mlp[0].weight, before)
    with pytest.raises(ValueError, match="model.init='he'"):
        initialise(mlp, "he")


def test_glorot_keeps_the_deep_dkf_decoder_sensitive_to_z():
    """Over z ~ N(0, I) the paper's decoder output barely moves under the default init."""
    spread = {}
    for init in ("torch", "glorot"):
        torch.manual_seed(0)
        likelihood = build_likelihood(None, "speech", 513)
        model = build_model("dkf", 513, likelihood, init=init, z_dim=16)
        with torch.no_grad():
            spread[init] = model.decoder(torch.randn(2000, 16)).std(0).mean().item()
    assert spread["torch"] < 0.1 < 0.2 < spread["glorot"]

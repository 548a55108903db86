import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_dvae.likelihoods import ExponentialPower, build_likelihood
from pyro_dvae.models import build_model
from tests.helpers import exponential_nll, gaussian_kl, gaussian_log_density


@pytest.mark.parametrize(
    "modality,x_dim,z_dim,dense,count",
    [
        ("speech", 513, 16, [128], 138_273),
        ("motion", 96, 10, [32], 7_284),
    ],
)
def test_parameter_count_matches_spec(modality, x_dim, z_dim, dense, count):
    model = build_model(
        "vae", x_dim, build_likelihood(None, modality, x_dim), z_dim=z_dim, dense_x_z=dense
    )
    assert sum(p.numel() for p in model.parameters()) == count


def _sample_and_nets(model, x, seed):
    torch.manual_seed(seed)
    z = poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
    mq, sq = model.encoder(x)
    return z, mq, sq, model.decoder(z)


@pytest.mark.parametrize("kl_weight", [1.0, 0.4])
def test_mean_field_loss_is_is_recon_plus_analytic_kl(kl_weight):
    x_dim, B, T = 12, 3, 7
    model = build_model("vae", x_dim, ExponentialPower(), z_dim=4, dense_x_z=[8])
    x = torch.rand(B, T, x_dim)
    torch.manual_seed(1)
    loss = TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, kl_weight)
    z, mq, sq, y = _sample_and_nets(model, x, 1)
    kl = gaussian_kl(mq, sq, torch.zeros_like(mq), torch.ones_like(sq))
    expected = (exponential_nll(x, y) + kl_weight * kl) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_trace_elbo_loss_is_single_sample_estimate():
    x_dim, B, T = 12, 3, 7
    model = build_model("vae", x_dim, ExponentialPower(), z_dim=4, dense_x_z=[8])
    x = torch.rand(B, T, x_dim)
    torch.manual_seed(2)
    loss = Trace_ELBO().differentiable_loss(model.model, model.guide, x)
    z, mq, sq, y = _sample_and_nets(model, x, 2)
    log_q = gaussian_log_density(z, mq, sq)
    log_p = gaussian_log_density(z, torch.zeros_like(z), torch.ones_like(z))
    expected = (exponential_nll(x, y) + log_q - log_p) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_reconstruct_uses_posterior_mean_and_generate_shapes():
    model = build_model("vae", 6, ExponentialPower(), z_dim=3, dense_x_z=[5])
    x = torch.rand(2, 4, 6)
    mq, _ = model.encoder(x)
    torch.testing.assert_close(model.reconstruct(x), model.decoder(mq))
    torch.testing.assert_close(model.estimate(x), torch.exp(model.decoder(mq)))
    assert not torch.allclose(model.reconstruct(x, sample=True), model.decoder(mq))
    assert model.generate(5, 9).shape == (5, 9, 6)


def test_vae_rejects_a_guide_name():
    with pytest.raises(ValueError, match="single guide"):
        build_model("vae", 6, ExponentialPower(), guide="dks", z_dim=3, dense_x_z=[5])

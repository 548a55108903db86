import math

import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_dvae.likelihoods import ExponentialPower, build_likelihood
from pyro_dvae.models import build_model
from pyro_dvae.nn import shift
from tests.helpers import exponential_nll, gaussian_kl, gaussian_log_density

SPEECH = dict(
    z_dim=16,
    dense_x_gx=[256],
    dim_rnn_gx=128,
    dense_ztm1_g=[32],
    dense_g_z=[32],
    dense_z_x=[32, 64, 128, 256],
)
MOTION = dict(
    z_dim=10, dense_x_gx=[64], dim_rnn_gx=64, dense_ztm1_g=[16], dense_g_z=[32], dense_z_x=[32, 64]
)
TINY = dict(z_dim=3, dense_x_gx=[8], dim_rnn_gx=6, dense_ztm1_g=[4], dense_g_z=[5], dense_z_x=[7])


@pytest.mark.parametrize(
    "modality,x_dim,params,count",
    [
        ("speech", 513, SPEECH, 516_641),
        ("motion", 96, MOTION, 52_856),
    ],
)
def test_parameter_count_matches_spec(modality, x_dim, params, count):
    model = build_model("dkf", x_dim, build_likelihood(None, modality, x_dim), **params)
    assert sum(p.numel() for p in model.parameters()) == count


def _transition_by_hand(tr, z_prev):
    """(μ, σ) of p(z_t | z_{t−1}): the gated transition's equations, or the linear one's."""
    if hasattr(tr, "linear"):
        return tr.linear(z_prev), tr.log_scale.exp().expand_as(z_prev)
    gate = torch.sigmoid(tr.gate_out(torch.relu(tr.gate_hidden(z_prev))))
    prop = tr.prop_out(torch.relu(tr.prop_hidden(z_prev)))
    loc = (1 - gate) * tr.loc_linear(z_prev) + gate * prop
    return loc, torch.nn.functional.softplus(tr.var_linear(torch.relu(prop))).sqrt()


def _by_hand(model, x, z):
    """Networks' outputs along the sampled trajectory, step by step as on paper."""
    inf = model.inference
    h = inf.mlp_x_gx(x)
    if inf.bidirectional:
        out = inf.rnn_gx(h)[0]
        H = out.shape[-1] // 2
        gx, n_terms = out[..., :H] + out[..., H:], 3
    else:
        gx, n_terms = inf.rnn_gx(h.flip(1))[0].flip(1), 2
    mq, sq, mp, sp = [], [], [], []
    z_prev = torch.zeros_like(z[:, 0])
    for t in range(x.shape[1]):
        g = (inf.mlp_ztm1_g(z_prev) + gx[:, t]) / n_terms
        loc, logvar = inf.head.linear(inf.mlp_g_z(g)).chunk(2, -1)
        mq.append(loc)
        sq.append(torch.exp(0.5 * logvar))
        ploc, pscale = _transition_by_hand(model.prior, z_prev)
        mp.append(ploc)
        sp.append(pscale)
        z_prev = z[:, t]
    return [torch.stack(v, 1) for v in (mq, sq, mp, sp)], model.decoder(z)


def _mean_field_loss_by_hand(**choices):
    """TraceMeanField_ELBO loss (KL weight 0.6) of a tiny DKF on x (4, 6, 10), with the guide's
    draw z and the hand-written step outputs along it."""
    model = build_model("dkf", 10, ExponentialPower(), **choices, **TINY)
    x = torch.rand(4, 6, 10)
    torch.manual_seed(3)
    loss = TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, 0.6)
    torch.manual_seed(3)
    z = poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
    return (loss, x, z, *_by_hand(model, x, z))


@pytest.mark.parametrize("guide", ["dks", "st_lr"])
@pytest.mark.parametrize("prior", ["gated", "linear"])
def test_mean_field_loss_is_recon_plus_stepwise_kl(guide, prior):
    B, T = 4, 6
    loss, x, z, (mq, sq, mp, sp), y = _mean_field_loss_by_hand(guide=guide, prior=prior)
    expected = (exponential_nll(x, y) + 0.6 * gaussian_kl(mq, sq, mp, sp)) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_trace_elbo_is_log_ratio_of_the_sampled_trajectory():
    x_dim, B, T = 10, 4, 6
    model = build_model("dkf", x_dim, ExponentialPower(), **TINY)
    x = torch.rand(B, T, x_dim)
    torch.manual_seed(4)
    loss = Trace_ELBO().differentiable_loss(model.model, model.guide, x)
    torch.manual_seed(4)
    z = poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
    (mq, sq, mp, sp), y = _by_hand(model, x, z)
    log_ratio = gaussian_log_density(z, mq, sq) - gaussian_log_density(z, mp, sp)
    expected = (exponential_nll(x, y) + log_ratio) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prior", ["gated", "linear"])
def test_transition_equations(prior):
    model = build_model("dkf", 10, ExponentialPower(), prior=prior, **TINY)
    z = torch.randn(5, 3)
    step = model.prior(z)
    loc, scale = _transition_by_hand(model.prior, z)
    torch.testing.assert_close(step.mean, loc)
    torch.testing.assert_close(step.variance, scale**2, rtol=1e-5, atol=1e-8)
    assert step.event_shape == (3,) and step.batch_shape == (5,)


@pytest.mark.parametrize("guide", ["dks", "st_lr"])
def test_posterior_mean_path(guide):
    """z_t = E[z_t | z_{<t}] fed forward: the fixed point of T passes of the hand-written
    step equations (pass k fixes step k)."""
    model = build_model("dkf", 10, ExponentialPower(), guide=guide, **TINY)
    x = torch.rand(2, 5, 10)
    z = torch.zeros(2, 5, 3)
    for _ in range(5):
        z = _by_hand(model, x, z)[0][0]
    assert z.abs().sum() > 0
    torch.testing.assert_close(model.reconstruct(x), _by_hand(model, x, z)[1])


def test_generation_is_ancestral_sampling_by_hand():
    """z_t = μ(z_{t−1}) + σ(z_{t−1}) ε_t with ε_t drawn one step at a time; x̂ = exp(decoder(z))."""
    model = build_model("dkf", 10, ExponentialPower(), **TINY)
    torch.manual_seed(11)
    generated = model.generate(3, 8)
    torch.manual_seed(11)
    z_prev, zs = torch.zeros(3, 3), []
    for _ in range(8):
        loc, scale = _transition_by_hand(model.prior, z_prev)
        z_prev = loc + scale * torch.randn(3, 3)
        zs.append(z_prev)
    torch.testing.assert_close(generated, torch.exp(model.decoder(torch.stack(zs, 1))))
    assert torch.equal(shift(torch.ones(1, 2, 1))[:, 0], torch.zeros(1, 1))


def test_unknown_guide_and_prior_are_clear_errors():
    with pytest.raises(ValueError, match="guide.name='smoother'"):
        build_model("dkf", 10, ExponentialPower(), guide="smoother", **TINY)
    with pytest.raises(ValueError, match="prior.name='lstm'"):
        build_model("dkf", 10, ExponentialPower(), prior="lstm", **TINY)


def test_student_t_prior_falls_back_to_the_sampled_log_ratio():
    """No KL(Normal ‖ Student-t) is registered: TraceMeanField_ELBO scores the prior with
    log q(z) − log p(z) of the guide's draw; p is the Student-t density written out."""
    B, T = 4, 6
    loss, x, z, (mq, sq, mp, sp), y = _mean_field_loss_by_hand(prior="student_t")
    nu = torch.tensor(5.0)  # the initial degrees of freedom
    u = (z - mp) / sp
    log_p = (
        torch.lgamma((nu + 1) / 2) - torch.lgamma(nu / 2) - 0.5 * torch.log(nu * math.pi)
        - torch.log(sp) - (nu + 1) / 2 * torch.log1p(u**2 / nu)
    ).sum()
    expected = (exponential_nll(x, y) + 0.6 * (gaussian_log_density(z, mq, sq) - log_p)) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)

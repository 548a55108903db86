import math

import pytest
import torch

from pyro_dvae.likelihoods import (
    Gaussian,
    MaskedSteps,
    build_likelihood,
    step_log_prob,
)
from pyro_dvae.nn import LOGVAR_BOUND


def itakura_saito(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The original's loss: Itakura–Saito divergence ``Σ x/σ² − log(x/σ²) − 1``, σ² = e^y."""
    ratio = x * torch.exp(-y)
    return (ratio - ratio.log() - 1).sum((-2, -1))


def test_exponential_is_itakura_saito_up_to_a_constant():
    x = torch.rand(2, 3, 4) + 0.1
    y = torch.randn(2, 3, 4)
    lik = build_likelihood(None, "speech", 4)
    log_p = lik(y).log_prob(x)
    expected = torch.distributions.Exponential(torch.exp(-y)).log_prob(x).sum((-2, -1))
    torch.testing.assert_close(log_p, expected)
    # −log p = D_IS(x ‖ e^y) + Σ (log x + 1)
    torch.testing.assert_close(-log_p, itakura_saito(x, y) + (x.log() + 1).sum((-2, -1)))
    torch.testing.assert_close(lik.mean(y), torch.exp(y))


def test_exponential_guards_zero_power_and_overflow():
    lik = build_likelihood("exponential", "speech", 2)
    x = torch.tensor([[[0.0, 1e6]]])
    y = torch.tensor([[[-1e4, 1e4]]])
    log_p = lik(y).log_prob(x)
    assert torch.isfinite(log_p).all()
    # y is clamped to ±B: log p = −(−B + 0) − (B + 1e6·e^{−B})
    expected = torch.tensor([-1e6 * math.exp(-LOGVAR_BOUND)])
    torch.testing.assert_close(log_p, expected)


def test_exponential_gradient_is_the_analytic_one():
    """The fused log-density's backward: gradcheck in range, and 1 − x·e^{−y} at the bound."""
    x = (torch.rand(2, 3, 4, dtype=torch.double) + 0.1).requires_grad_()
    y = torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True)
    lik = build_likelihood(None, "speech", 4)
    assert torch.autograd.gradcheck(lambda x, y: lik(y).log_prob(x), (x, y))
    data = x.detach()  # the training case: x needs no gradient, e^{−y} is overwritten
    assert torch.autograd.gradcheck(lambda y: lik(y).log_prob(data), (y,))
    # outside ±B the gradient is the one at the bound: it points back into range
    y = torch.tensor([[[-40.0, 40.0]]], requires_grad=True)
    lik(y).log_prob(torch.tensor([[[1.0, 1.0]]])).sum().backward()
    bound = LOGVAR_BOUND
    expected = torch.tensor([[[math.exp(bound) - 1, math.exp(-bound) - 1]]])
    torch.testing.assert_close(y.grad, expected)


def test_mpjpe_is_minus_mean_joint_error_in_mm():
    J = 4
    x = torch.zeros(1, 2, 3 * J)
    y = x.clone()
    y[0, 0, 0:3] = torch.tensor([0.003, 0.004, 0.0])  # joint 0 of frame 0 off by 5 mm
    y[0, 1, 3:6] = torch.tensor([0.0, 0.0, 0.012])  # joint 1 of frame 1 off by 12 mm
    lik = build_likelihood(None, "motion", 3 * J)
    torch.testing.assert_close(lik(y).log_prob(x), torch.tensor([-(5 / J + 12 / J)]))
    assert torch.equal(lik.mean(y), y)


def test_mpjpe_fused_log_density_and_gradients_equal_the_per_frame_formula():
    """The fused −Σ_t MPJPE_t (one autograd node) equals the per-frame values summed, with the
    gradients autograd gives the per-frame formula, in float64 (the two differ only in where
    ×1000 is applied, ~1e-16 relative); an exact joint gets the norm's gradient there, 0."""
    J = 5
    x = torch.randn(3, 4, 3 * J, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 4, 3 * J, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        y[0, 1, 3:6] = x[0, 1, 3:6]  # joint 1 of frame 1 exact
    d = build_likelihood(None, "motion", 3 * J)(y)
    got = d.log_prob(x)
    expected = d.step_log_prob(x).sum(-1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    probe = torch.tensor([0.5, -2.0, 1.5], dtype=torch.float64)
    grads = torch.autograd.grad((got * probe).sum(), (x, y))
    expected_grads = torch.autograd.grad((expected * probe).sum(), (x, y))
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    assert torch.all(grads[1][0, 1, 3:6] == 0)
    data = x.detach()  # the training case: x needs no gradient
    assert torch.autograd.gradcheck(
        lambda y: build_likelihood(None, "motion", 3 * J)(y).log_prob(data), (y,)
    )


def test_gaussian_learned_scale_density():
    lik = Gaussian(3, scale=0.5)
    x, y = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    expected = torch.distributions.Normal(y, 0.5).log_prob(x).sum((-2, -1))
    torch.testing.assert_close(lik(y).log_prob(x), expected)
    assert lik.log_scale.requires_grad
    assert not Gaussian(3, learn_scale=False).log_scale.requires_grad


def test_unknown_likelihood_names_the_key():
    with pytest.raises(ValueError, match="likelihood.name='poisson'"):
        build_likelihood("poisson", "speech", 3)


def test_bernoulli_is_the_binary_cross_entropy():
    x = torch.tensor([[[1.0, 0.0, 1.0]]])
    y = torch.tensor([[[2.0, -1.0, -3.0]]])
    lik = build_likelihood(None, "music", 3)
    # log σ(2) + log(1 − σ(−1)) + log σ(−3), σ the logistic function
    expected = -(math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log1p(math.exp(3)))
    torch.testing.assert_close(lik(y).log_prob(x), torch.tensor([expected]))
    torch.testing.assert_close(lik.mean(y), torch.sigmoid(y))
    assert type(build_likelihood(None, "video", 3)) is type(lik)


@pytest.mark.parametrize(
    "name,modality",
    [
        ("exponential", "speech"),
        ("mpjpe", "motion"),
        ("gaussian", "motion"),
        ("bernoulli", "music"),
    ],
)
def test_per_frame_log_densities_add_up_and_masked_frames_drop_out(name, modality):
    x = torch.rand(2, 4, 6).round() if name == "bernoulli" else torch.rand(2, 4, 6) + 0.1
    d = build_likelihood(name, modality, 6)(torch.randn(2, 4, 6))
    frames = step_log_prob(d, x)
    assert frames.shape == (2, 4)
    torch.testing.assert_close(frames.sum(-1), d.log_prob(x))
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    torch.testing.assert_close(MaskedSteps(d, mask).log_prob(x), (frames * mask).sum(-1))

import pytest
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from pyro_dvae.distributions import IndependentTrajectory, MarkovTrajectory, PosteriorMean
from pyro_dvae.nn import shift
from tests.helpers import gaussian_kl, gaussian_log_density

B, T, L = 3, 5, 2


def ar1(a: float, s: float, like: torch.Tensor) -> MarkovTrajectory:
    """z_t = a z_{t−1} + s ε_t, z_0 = 0."""
    return MarkovTrajectory(
        step=lambda t, z_prev, state: (a * z_prev, torch.full_like(z_prev, s), None),
        parallel=lambda z: (a * shift(z), torch.full_like(z, s)),
        batch_size=B,
        T=T,
        L=L,
        like=like,
    )


def test_markov_log_prob_equals_dense_gaussian():
    """An AR(1) trajectory is a zero-mean Gaussian with a known covariance."""
    a, s = 0.8, 0.5
    p = ar1(a, s, torch.zeros(()))
    z = p.rsample()
    # Cov(z_i, z_j) = s² Σ_{k ≤ min(i,j)} a^{i−k} a^{j−k} for one coordinate.
    cov = torch.zeros(T, T)
    for i in range(T):
        for j in range(T):
            cov[i, j] = s**2 * sum(a ** (i - k) * a ** (j - k) for k in range(min(i, j) + 1))
    dense = torch.distributions.MultivariateNormal(torch.zeros(T), cov)
    expected = dense.log_prob(z.transpose(1, 2)).sum(-1)
    torch.testing.assert_close(p.log_prob(z), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.log_prob(z.clone()), expected, rtol=1e-5, atol=1e-5)


def test_draw_follows_the_recursion_and_caches_its_params():
    p = ar1(0.5, 0.3, torch.zeros(()))
    noise = torch.randn(B, T, L)
    z = p.draw_and_cache(noise)
    by_hand, prev = [], torch.zeros(B, L)
    for t in range(T):
        prev = 0.5 * prev + 0.3 * noise[:, t]
        by_hand.append(prev)
    torch.testing.assert_close(z, torch.stack(by_hand, 1))
    loc, scale = p.conditionals(z)
    ploc, pscale = p.params(z.clone())
    torch.testing.assert_close(loc, ploc)
    torch.testing.assert_close(scale, pscale)


def test_kl_independent_is_closed_form():
    mq, sq = torch.randn(B, T, L), torch.rand(B, T, L) + 0.5
    mp, sp = torch.randn(B, T, L), torch.rand(B, T, L) + 0.5
    kl = kl_divergence(IndependentTrajectory(mq, sq), IndependentTrajectory(mp, sp))
    assert kl.shape == (B,)
    torch.testing.assert_close(kl.sum(), gaussian_kl(mq, sq, mp, sp))
    standard = IndependentTrajectory.standard(B, T, L, mq)
    # KL(q ‖ N(0, I)) = ½ Σ (σ² + μ² − 1 − log σ²)
    by_hand = 0.5 * (sq**2 + mq**2 - 1 - torch.log(sq**2)).sum()
    torch.testing.assert_close(
        kl_divergence(IndependentTrajectory(mq, sq), standard).sum(), by_hand
    )


def test_kl_markov_uses_the_sampled_past():
    q = ar1(0.5, 0.3, torch.zeros(()))
    p = ar1(0.9, 1.0, torch.zeros(()))
    with pytest.raises(RuntimeError):
        kl_divergence(q, p)
    z = q.rsample()
    expected = gaussian_kl(
        0.5 * shift(z), torch.full_like(z, 0.3), 0.9 * shift(z), torch.ones_like(z)
    )
    torch.testing.assert_close(kl_divergence(q, p).sum(), expected)
    # log q − log p of the same sample differs from the KL: KL is its conditional expectation.
    lq = gaussian_log_density(z, 0.5 * shift(z), torch.full_like(z, 0.3))
    torch.testing.assert_close(q.log_prob(z).sum(), lq)


def test_posterior_mean_feeds_means_forward():
    q = ar1(0.5, 0.3, torch.zeros(()))

    def guide():
        import pyro

        return pyro.sample("z", q)

    z = PosteriorMean()(guide)()
    assert torch.equal(z, torch.zeros(B, T, L))  # mean of an AR(1) from z_0 = 0
    trace = poutine.trace(guide).get_trace()
    assert trace.nodes["z"]["value"].abs().sum() > 0


def test_expand_only_confirms_shape():
    q = IndependentTrajectory.standard(B, T, L, torch.zeros(()))
    assert q.expand(torch.Size([B])) is q
    with pytest.raises(ValueError):
        q.expand(torch.Size([B + 1]))

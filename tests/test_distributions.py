import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions import Laplace, Normal, StudentT, TransformedDistribution
from pyro.distributions.transforms import AffineTransform, ExpTransform
from torch.distributions import kl_divergence

from pyro_dvae.distributions import (
    IndependentTrajectory,
    PosteriorMean,
    Trajectory,
    diag_normal,
    markov_sites,
    point,
)
from tests.helpers import gaussian_kl, gaussian_log_density

B, T, L = 3, 5, 2


def ar1(a: float, s: float, like: torch.Tensor, b: float = 0.0) -> Trajectory:
    """z_t = a z_{t−1} + b + s ε_t, z_0 = 0."""

    def conditional(z_prev):
        return diag_normal(a * z_prev + b, torch.full_like(z_prev, s))

    return Trajectory(
        step=lambda t, z_prev, state: (conditional(z_prev), None),
        parallel=lambda z: conditional(torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], 1)),
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


def test_draw_follows_the_recursion_one_noise_draw_per_step():
    p = ar1(0.5, 0.3, torch.zeros(()), b=0.1)
    torch.manual_seed(2)
    z = p.rsample()
    torch.manual_seed(2)
    by_hand, prev = [], torch.zeros(B, L)
    for _ in range(T):
        prev = 0.5 * prev + 0.1 + 0.3 * torch.randn(B, L)
        by_hand.append(prev)
    torch.testing.assert_close(z, torch.stack(by_hand, 1))
    # the draw's own parameters are what scoring it uses, and equal the parallel ones
    drawn, parallel = p.conditionals(z), p.parallel(z.clone())
    torch.testing.assert_close(drawn.mean, parallel.mean)
    torch.testing.assert_close(drawn.stddev, parallel.stddev)


def test_kl_independent_is_closed_form():
    mq, sq = torch.randn(B, T, L), torch.rand(B, T, L) + 0.5
    mp, sp = torch.randn(B, T, L), torch.rand(B, T, L) + 0.5
    q, p = IndependentTrajectory(diag_normal, mq, sq), IndependentTrajectory(diag_normal, mp, sp)
    kl = kl_divergence(q, p)
    assert kl.shape == (B,)
    torch.testing.assert_close(kl.sum(), gaussian_kl(mq, sq, mp, sp))
    standard = IndependentTrajectory.standard(B, T, L, mq)
    # KL(q ‖ N(0, I)) = ½ Σ (σ² + μ² − 1 − log σ²)
    by_hand = 0.5 * (sq**2 + mq**2 - 1 - torch.log(sq**2)).sum()
    torch.testing.assert_close(kl_divergence(q, standard).sum(), by_hand)


def test_kl_markov_uses_the_sampled_past():
    q = ar1(0.5, 0.3, torch.zeros(()))
    p = ar1(0.9, 1.0, torch.zeros(()), b=0.2)
    with pytest.raises(RuntimeError):
        kl_divergence(q, p)
    z = q.rsample()
    z_prev = torch.cat([torch.zeros(B, 1, L), z[:, :-1]], 1)
    expected = gaussian_kl(
        0.5 * z_prev, torch.full_like(z, 0.3), 0.9 * z_prev + 0.2, torch.ones_like(z)
    )
    torch.testing.assert_close(kl_divergence(q, p).sum(), expected)
    lq = gaussian_log_density(z, 0.5 * z_prev, torch.full_like(z, 0.3))
    torch.testing.assert_close(q.log_prob(z).sum(), lq)


def test_kl_without_a_registered_pair_is_not_implemented():
    """A Student-t step has no KL with a Gaussian: the ELBO falls back to log q − log p."""
    q = ar1(0.5, 0.3, torch.zeros(()))
    loc, scale = torch.zeros(B, T, L), torch.ones(B, T, L)
    p = IndependentTrajectory(lambda m, s: StudentT(4.0, m, s).to_event(1), loc, scale)
    q.rsample()
    with pytest.raises(NotImplementedError):
        kl_divergence(q, p)


def test_posterior_mean_feeds_means_forward():
    """With a drift b the mean path is b, ab + b, a²b + ab + b, … (not zero)."""
    q = ar1(0.5, 0.3, torch.zeros(()), b=1.0)

    def guide():
        return pyro.sample("z", q)

    z = PosteriorMean()(guide)()
    expected = torch.tensor([1.0, 1.5, 1.75, 1.875, 1.9375])
    torch.testing.assert_close(z, expected[None, :, None].expand(B, T, L))
    markov = PosteriorMean()(lambda: markov_sites("z", q))()
    torch.testing.assert_close(markov, z)
    assert poutine.trace(guide).get_trace().nodes["z"]["value"].std() > 0


def test_markov_sites_are_one_site_per_step_with_the_step_distributions():
    q = ar1(0.5, 0.3, torch.zeros(()), b=0.1)
    trace = poutine.trace(lambda: markov_sites("z", q)).get_trace()
    names = [n for n, site in trace.nodes.items() if site["type"] == "sample"]
    assert names == [f"z_{t}" for t in range(1, T + 1)]
    trace.compute_log_prob()
    z = torch.stack([trace.nodes[n]["value"] for n in names], 1)
    total = sum(trace.nodes[n]["log_prob"] for n in names)
    torch.testing.assert_close(total, q.log_prob(z))
    z_2 = trace.nodes["z_2"]["fn"]
    torch.testing.assert_close(z_2.mean, 0.5 * z[:, 0] + 0.1)


def test_any_family_with_rsample_is_a_step():
    """A Laplace chain: sampled step by step, scored in parallel, each step's own density."""

    def conditional(z_prev):
        return Laplace(0.7 * z_prev, torch.full_like(z_prev, 0.4)).to_event(1)

    p = Trajectory(
        step=lambda t, z_prev, state: (conditional(z_prev), None),
        parallel=lambda z: conditional(torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], 1)),
        batch_size=B,
        T=T,
        L=L,
        like=torch.zeros(()),
    )
    z = p.rsample()
    z_prev = torch.cat([torch.zeros(B, 1, L), z[:, :-1]], 1)
    by_hand = (-(z - 0.7 * z_prev).abs() / 0.4 - math.log(2 * 0.4)).sum((1, 2))
    torch.testing.assert_close(p.log_prob(z), by_hand)


def test_point_of_a_flow_is_the_transformed_base_point():
    base = Normal(torch.tensor([0.5, -1.0]), torch.ones(2))
    flow = TransformedDistribution(base, [AffineTransform(1.0, 2.0), ExpTransform()])
    torch.testing.assert_close(point(flow.to_event(1)), torch.exp(1.0 + 2.0 * base.loc))
    torch.testing.assert_close(point(diag_normal(base.loc, base.scale)), base.loc)


def test_expand_only_confirms_shape():
    q = IndependentTrajectory.standard(B, T, L, torch.zeros(()))
    assert q.expand(torch.Size([B])) is q
    with pytest.raises(ValueError):
        q.expand(torch.Size([B + 1]))

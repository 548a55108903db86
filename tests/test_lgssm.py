"""The Kalman filter and smoother against dense Gaussian algebra on the stacked sequence."""

import pytest
import torch
from pyro.distributions import GaussianHMM, MultivariateNormal

from pyro_dvae.lgssm import LGSSM, kalman_filter, rts_smoother

Z, N, T, B = 3, 2, 5, 2


def random_spd(*shape: int, n: int) -> torch.Tensor:
    """Random well-conditioned covariances ``(*shape, n, n)``."""
    m = torch.randn(*shape, n, n, dtype=torch.float64)
    return m @ m.mT / n + 0.3 * torch.eye(n, dtype=torch.float64)


def random_lgssm(seed: int = 0) -> LGSSM:
    """A batch of B time-varying LGSSMs with random A, b, C, Q, R, m_0, P_0 (float64)."""
    torch.manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    return LGSSM(
        init_loc=torch.randn(B, Z, **f64),
        init_cov=random_spd(B, n=Z),
        A=torch.randn(B, T, Z, Z, **f64) / Z**0.5,
        b=torch.randn(B, T, Z, **f64),
        C=torch.randn(B, T, N, Z, **f64),
        Q=random_spd(n=Z),
        R=random_spd(n=N),
    )


def dense_joint(m: LGSSM) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Means and noise loadings of the stacked z_{1:T} and a_{1:T}, written out by hand.

    Every variable is an affine function of independent N(0, I) noises
    ``e = (e_0, ε_1..ε_T, δ_1..δ_T)``: z_0 = m_0 + L_0 e_0, z_t = A_t z_{t−1} + b_t + L_Q ε_t,
    a_t = C_t z_t + L_R δ_t. Returns ``(μ_z (B, T·Z), M_z (B, T·Z, E), μ_a (B, T·N),
    M_a (B, T·N, E))`` with covariances ``M Mᵀ``; shapes are read from ``m`` (batch of one
    dimension, float64).
    """
    n_batch, n_steps, n_obs, n_state = m.C.shape
    n_noise = n_state + n_steps * (n_state + n_obs)
    z_mean = m.init_loc
    z_load = torch.zeros(n_batch, n_state, n_noise, dtype=torch.float64)
    z_load[:, :, :n_state] = torch.linalg.cholesky(m.init_cov)
    lq, lr = torch.linalg.cholesky(m.Q), torch.linalg.cholesky(m.R)
    z_means, z_loads, a_means, a_loads = [], [], [], []
    for t in range(n_steps):
        z_mean = (m.A[:, t] @ z_mean[..., None])[..., 0] + m.b[:, t]
        z_load = m.A[:, t] @ z_load
        first = n_state * (t + 1)
        z_load[:, :, first : first + n_state] += lq
        a_load = m.C[:, t] @ z_load
        first = n_state * (n_steps + 1) + t * n_obs
        a_load[:, :, first : first + n_obs] += lr
        z_means.append(z_mean)
        z_loads.append(z_load.clone())
        a_means.append((m.C[:, t] @ z_mean[..., None])[..., 0])
        a_loads.append(a_load)
    return tuple(torch.cat(v, 1) for v in (z_means, z_loads, a_means, a_loads))


def dense_posterior(m: LGSSM, a: torch.Tensor, observed: torch.Tensor):
    """log p(a_observed) ``(B,)`` and the posterior means of z ``(B, T, Z)`` and a
    ``(B, T, N)`` and covariance of the stacked z ``(B, T·Z, T·Z)`` given the observed a, by
    dense Gaussian conditioning (one batch element at a time, as the observed sets differ)."""
    n_batch, n_steps, n_obs, n_state = m.C.shape
    z_mean, z_load, a_mean, a_load = dense_joint(m)
    log_p, z_means, z_covs, a_means = [], [], [], []
    for i in range(n_batch):
        keep = observed[i].repeat_interleave(n_obs)
        load_o = a_load[i][keep]
        cov_oo = load_o @ load_o.T
        value = a[i].reshape(-1)[keep]
        log_p.append(
            MultivariateNormal(a_mean[i][keep], cov_oo).log_prob(value)
            if keep.any()
            else a.new_zeros(())
        )
        weights = torch.linalg.solve(cov_oo, value - a_mean[i][keep])
        cov_zo = z_load[i] @ load_o.T
        z_means.append(z_mean[i] + cov_zo @ weights)
        z_covs.append(z_load[i] @ z_load[i].T - cov_zo @ torch.linalg.solve(cov_oo, cov_zo.T))
        a_means.append(a_mean[i] + a_load[i] @ load_o.T @ weights)
    return (
        torch.stack(log_p),
        torch.stack(z_means).reshape(n_batch, n_steps, n_state),
        torch.stack(z_covs),
        torch.stack(a_means).reshape(n_batch, n_steps, n_obs),
    )


def sample_a(m: LGSSM) -> torch.Tensor:
    """One draw of a_{1:T} ``(B, T, N)`` from the dense joint."""
    n_batch, n_steps, n_obs, _ = m.C.shape
    _, _, a_mean, a_load = dense_joint(m)
    noise = torch.randn(n_batch, a_load.shape[-1], 1, dtype=torch.float64)
    return (a_mean + (a_load @ noise)[..., 0]).reshape(n_batch, n_steps, n_obs)


ALL = torch.ones(B, T, dtype=torch.bool)
GAPS = torch.tensor([[True, False, False, True, True], [False, True, True, False, True]])


@pytest.mark.parametrize("observed", [ALL, GAPS], ids=["complete", "missing"])
def test_log_likelihood_equals_the_dense_gaussian(observed):
    m = random_lgssm()
    a = sample_a(m)
    expected = dense_posterior(m, a, observed)[0]
    filtered = kalman_filter(m, a, None if observed is ALL else observed)
    got = filtered.log_likelihood(a, None if observed is ALL else observed)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("observed", [ALL, GAPS], ids=["complete", "missing"])
def test_smoother_equals_dense_conditioning(observed):
    m = random_lgssm(seed=1)
    a = sample_a(m)
    _, means, covs, _ = dense_posterior(m, a, observed)
    loc, cov = rts_smoother(m, kalman_filter(m, a, observed))
    torch.testing.assert_close(loc, means, rtol=0, atol=1e-8)
    for t in range(T):
        block = covs[:, t * Z : (t + 1) * Z, t * Z : (t + 1) * Z]
        torch.testing.assert_close(cov[:, t], block, rtol=0, atol=1e-8)


def test_last_filtered_mean_is_the_smoothed_one_and_filtering_uses_only_the_past():
    """m_{t|t} depends on a_{≤t} only: changing a_T leaves every earlier filtered mean."""
    m = random_lgssm(seed=2)
    a = sample_a(m)
    changed = a.clone()
    changed[:, -1] += 1.0
    f, g = kalman_filter(m, a), kalman_filter(m, changed)
    torch.testing.assert_close(f.loc[:, :-1], g.loc[:, :-1])
    assert not torch.allclose(f.loc[:, -1], g.loc[:, -1])


def test_log_likelihood_equals_pyro_gaussian_hmm():
    """The same number from Pyro's information-form GaussianHMM (z_t = z_{t−1} @ Aᵀ there)."""
    m = random_lgssm(seed=3)
    a = sample_a(m)
    hmm = GaussianHMM(
        MultivariateNormal(m.init_loc, m.init_cov),
        m.A.mT,
        MultivariateNormal(m.b, m.Q),
        m.C.mT,
        MultivariateNormal(torch.zeros(N, dtype=torch.float64), m.R),
    )
    torch.testing.assert_close(kalman_filter(m, a).log_likelihood(a), hmm.log_prob(a))


@pytest.mark.parametrize("observed", [ALL, GAPS], ids=["complete", "missing"])
def test_gradients_equal_those_of_dense_conditioning(observed):
    """d/dθ (θ = A, b, C, a) of the log-likelihood plus a random weighting of the smoothed
    means equals the same derivative of dense conditioning: every step's matrices get their
    share of the gradient through the filter's and the smoother's per-step views."""
    m = random_lgssm(seed=4)
    a = sample_a(m)
    leaves = [x.requires_grad_() for x in (m.A, m.b, m.C, a)]
    weights = torch.randn(B, T, Z, dtype=torch.float64)
    log_p, means = dense_posterior(m, a, observed)[:2]
    expected = torch.autograd.grad(log_p.sum() + (weights * means).sum(), leaves)
    filtered = kalman_filter(m, a, observed)
    objective = filtered.log_likelihood(a, observed).sum()
    objective = objective + (weights * rts_smoother(m, filtered)[0]).sum()
    # float64 on O(10) gradients from sums of a few hundred terms: rounding ~1e-13; a step
    # whose gradient went missing or wrong is off by O(1)
    for got, want in zip(torch.autograd.grad(objective, leaves), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)

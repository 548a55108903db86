"""The latent priors, each by value against its density written out in float64: the standard
normal, the Markov chain of a transition (z_0 = 0 or learned), the gated transition's μ and σ
with its defaults and Pyro's DMM options, the linear-Gaussian and Student-t transitions; the
moments of their draws where a closed form exists; and ``build_transition``'s errors."""

import math

import pytest
import torch
from torch.nn import functional as F

from pyro_dvae.models.priors import (
    LinearTransition,
    StandardNormal,
    StudentTTransition,
    build_transition,
)

F64 = torch.float64
EPS = torch.finfo(F64).eps
LIKE = torch.zeros((), dtype=F64)  # the dtype (and device) a trajectory is built on
HALF_LOG_2PI = torch.tensor(0.5 * math.log(2 * math.pi), dtype=F64)


def assert_sums(got: torch.Tensor, *parts: torch.Tensor) -> None:
    """``got (B,)`` is the sum of ``parts`` (each broadcast to (B, ...)) per row, to float64
    rounding: each part is a few (at most 8) roundings off its exact value, relative to the O(1)
    numbers it is computed from, and summing n parts in any order adds at most
    (n − 1)·eps·Σ|parts|, so |got − Σ parts| ≤ (8 + n)·eps·Σ|parts|."""
    terms = torch.stack(torch.broadcast_tensors(*parts), -1).flatten(1)
    bound = (8 + terms.shape[1]) * EPS * terms.abs().sum(1)
    assert ((got - terms.sum(1)).abs() <= bound).all(), (got, terms.sum(1), bound)


def assert_moments(draws: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, fourth=None):
    """Sample mean and variance of ``draws (n, ...)`` within 5 standard errors of ``mean`` and
    ``var``: SE(mean) = √(var/n); SE(variance) = √((μ₄ − var²)/n), with the central fourth
    moment μ₄ = 3 var² (a Gaussian's) unless given."""
    n = draws.shape[0]
    fourth = 3 * var**2 if fourth is None else fourth
    assert ((draws.mean(0) - mean).abs() <= 5 * (var / n).sqrt()).all(), (draws.mean(0), mean)
    spread = ((fourth - var**2) / n).sqrt()
    assert ((draws.var(0) - var).abs() <= 5 * spread).all(), (draws.var(0), var)


def test_standard_normal_log_density_is_the_gaussian_written_out():
    B, T, L = 4, 5, 3
    z = torch.randn(B, T, L, dtype=F64)
    got = StandardNormal().trajectory(B, T, L, LIKE).log_prob(z)
    assert_sums(got, -0.5 * z**2, -HALF_LOG_2PI)


def test_standard_normal_draws_have_zero_mean_and_unit_variance():
    """10,000 trajectories of 10 steps: every (t, l) has mean 0 and variance 1."""
    B, T, L = 10_000, 10, 2
    z = StandardNormal().trajectory(B, T, L, LIKE).rsample()
    assert z.shape == (B, T, L) and z.dtype == F64
    assert_moments(z, torch.zeros(T, L, dtype=F64), torch.ones(T, L, dtype=F64))


def _linear(L: int, learn_initial: bool) -> LinearTransition:
    """A float64 linear transition with A, b, σ and the learned z_0 (if any) drawn at random,
    away from their start (log σ = 0, z_0 = 0)."""
    tr = LinearTransition(L)
    if learn_initial:
        tr.learn_initial_state(L)
    tr = tr.double()
    with torch.no_grad():
        for p in tr.parameters():
            p.normal_(0, 0.5)
    return tr


@pytest.mark.parametrize("learn_initial", [False, True])
def test_markov_log_density_is_the_sum_of_the_linear_gaussian_steps(learn_initial):
    """log p(z) = Σ_t log N(z_t; A z_{t−1} + b, diag σ²), from z_0 = 0 or the learned z_0
    (drawn at random)."""
    B, T, L = 4, 5, 3
    tr, z = _linear(L, learn_initial), torch.randn(B, T, L, dtype=F64)
    z_0 = tr.z_0 if learn_initial else torch.zeros(L, dtype=F64)
    with torch.no_grad():
        got = tr.trajectory(B, T, L, LIKE).log_prob(z)
        z_prev = torch.cat([z_0.expand(B, 1, L), z[:, :-1]], 1)
        loc, scale = z_prev @ tr.linear.weight.T + tr.linear.bias, tr.log_scale.exp()
        u = (z - loc) / scale
    assert_sums(got, -0.5 * u**2, -scale.log(), -HALF_LOG_2PI)


def test_markov_draws_have_the_linear_gaussian_chains_moments():
    """From a learned z_0: z_1 ~ N(A z_0 + b, S), z_2 ~ N(A E z_1 + b, A S Aᵀ + S), S = diag σ²
    (20,000 chains)."""
    B, L = 20_000, 2
    tr = _linear(L, learn_initial=True)
    with torch.no_grad():
        z = tr.trajectory(B, 2, L, LIKE).rsample()
        A, b, S = tr.linear.weight, tr.linear.bias, tr.log_scale.exp() ** 2
        mean_1 = A @ tr.z_0 + b
        assert_moments(z[:, 0], mean_1, S)
        assert_moments(z[:, 1], A @ mean_1 + b, A**2 @ S + S)  # diag(A S Aᵀ) = A² S


def test_the_initial_state_is_zero_until_learned():
    tr = LinearTransition(3)
    assert tr.z_0 is None and "z_0" not in dict(tr.named_parameters())
    tr.learn_initial_state(3)
    assert dict(tr.named_parameters())["z_0"] is tr.z_0
    torch.testing.assert_close(tr.z_0.data, torch.zeros(3), rtol=0, atol=0)


def _gated_by_hand(tr, z):
    """gate = sigmoid(W2 relu(W1 z)) and prop = W4 relu(W3 z) of the gated transition."""
    gate = torch.sigmoid(tr.gate_out(torch.relu(tr.gate_hidden(z))))
    prop = tr.prop_out(torch.relu(tr.prop_hidden(z)))
    return gate, prop


def test_gated_transition_defaults_are_the_dvae_specs():
    """Defaults: H = L hidden units, μ = (1 − gate) ⊙ W_μ z + gate ⊙ prop and the variance
    σ² = softplus(W_σ relu(prop)) + 1e-10 (the same float64 operations: equal exactly)."""
    tr = build_transition("gated", 3).double()
    z = torch.randn(5, 3, dtype=F64)
    assert (tr.gate_hidden.out_features, tr.prop_out.in_features) == (3, 3)
    with torch.no_grad():
        step, (gate, prop) = tr(z), _gated_by_hand(tr, z)
        loc = (1 - gate) * tr.loc_linear(z) + gate * prop
        scale = (F.softplus(tr.var_linear(torch.relu(prop))) + 1e-10).sqrt()
    assert (step.batch_shape, step.event_shape) == ((5,), (3,))
    torch.testing.assert_close(step.mean, loc, rtol=0, atol=0)
    torch.testing.assert_close(step.stddev, scale, rtol=0, atol=0)


def test_gated_transition_with_pyros_dmm_options():
    """hidden=7, scale=softplus, loc_init=identity (Pyro's GatedTransition): L→7→L gate and
    proposed-mean MLPs, μ = (1 − gate) ⊙ z + gate ⊙ prop, σ = softplus(W_σ relu(prop)) + 1e-10
    (W_μ = I, b_μ = 0 give W_μ z = z exactly: equal exactly)."""
    options = dict(hidden=7, scale="softplus", loc_init="identity")
    tr, z = build_transition("gated", 3, **options).double(), torch.randn(5, 3, dtype=F64)
    assert (tr.gate_hidden.out_features, tr.prop_out.in_features) == (7, 7)
    with torch.no_grad():
        step, (gate, prop) = tr(z), _gated_by_hand(tr, z)
        scale = F.softplus(tr.var_linear(torch.relu(prop))) + 1e-10
    torch.testing.assert_close(step.mean, (1 - gate) * z + gate * prop, rtol=0, atol=0)
    torch.testing.assert_close(step.stddev, scale, rtol=0, atol=0)


def _student_t(df: list[float]) -> StudentTTransition:
    """A float64 Student-t transition with ν = df per dimension."""
    tr = StudentTTransition(len(df)).double()
    with torch.no_grad():
        tr.log_df_minus_2.copy_(torch.tensor(df, dtype=F64).sub(2).log())
    return tr


def test_student_t_log_density_is_the_density_written_out():
    """log p(z_t | z_{t−1}) = Σ_l log t_ν(z_l; μ_l, σ_l), ν = 2 + exp(log_df_minus_2) set per
    dimension, μ and σ the gated transition's."""
    nu = torch.tensor([2.5, 6.0, 30.0], dtype=F64)
    tr, z_prev = _student_t(nu.tolist()), torch.randn(4, 3, dtype=F64)
    z = 3 * torch.randn(4, 3, dtype=F64)  # into the tails
    with torch.no_grad():
        step = tr(z_prev)
        loc, scale = tr.loc_scale(z_prev)
        got = step.log_prob(z)
    u = (z - loc) / scale
    assert (step.batch_shape, step.event_shape) == ((4,), (3,))
    assert_sums(
        got,
        torch.lgamma((nu + 1) / 2),
        -torch.lgamma(nu / 2),
        -0.5 * torch.log(nu * math.pi),
        -scale.log(),
        -(nu + 1) / 2 * torch.log1p(u**2 / nu),
    )


def test_student_t_draws_have_its_mean_and_variance():
    """ν = 5: mean μ, variance σ² ν/(ν − 2), central fourth moment 3 σ⁴ ν²/((ν − 2)(ν − 4))
    (finite for ν > 4); 100,000 draws from z_{t−1} = 0."""
    nu, n = 5.0, 100_000
    tr = _student_t([nu] * 2)
    with torch.no_grad():
        draws = tr(torch.zeros(n, 2, dtype=F64)).rsample()
        loc, scale = tr.loc_scale(torch.zeros(2, dtype=F64))
    var = scale**2 * nu / (nu - 2)
    assert_moments(draws, loc, var, fourth=3 * scale**4 * nu**2 / ((nu - 2) * (nu - 4)))


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("gated", {"hiden": 3}, r"prior\.options=\{'hiden': 3\}: not options of prior 'gated' "
                                r"\(got an unexpected keyword argument 'hiden'\)"),
        ("linear", {"hidden": 3}, r"prior\.options=\{'hidden': 3\}: not options of prior "
                                  r"'linear' \(got an unexpected keyword argument 'hidden'\)"),
        ("student_t", {"scale": "exp"}, r"prior\.options=\{'scale': 'exp'\}: not options of "
                                        r"prior 'student_t' \(got an unexpected keyword "
                                        r"argument 'scale'\)"),
        ("gated", {"hidden": 0}, r"prior\.options\.hidden=0: expected null \(z_dim\) or an "
                                 r"integer >= 1"),
        ("gated", {"hidden": True}, r"prior\.options\.hidden=True: expected null \(z_dim\) or "
                                    r"an integer >= 1"),
        ("gated", {"hidden": 2.0}, r"prior\.options\.hidden=2\.0: expected null \(z_dim\) or "
                                   r"an integer >= 1"),
        ("gated", {"scale": "exp"}, r"prior\.options\.scale='exp': expected one of "
                                    r"\['sqrt_softplus', 'softplus'\]"),
        ("gated", {"loc_init": "eye"}, r"prior\.options\.loc_init='eye': expected one of "
                                       r"\['torch', 'identity'\]"),
    ],
    ids=["gated", "linear", "student_t", "hidden=0", "hidden=True", "hidden=2.0", "scale",
         "loc_init"],
)  # fmt: skip
def test_bad_options_name_their_key_and_what_was_expected(name, options, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        build_transition(name, 3, **options)

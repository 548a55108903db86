"""KVAE: the LGSSM prior against dense Gaussian algebra, the ELBO by hand, imputation, learning."""

import json
import math

import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_dvae import runner
from pyro_dvae.lgssm import LGSSM, kalman_filter
from pyro_dvae.likelihoods import Bernoulli
from pyro_dvae.models import build_model
from pyro_dvae.models.kvae import LGSSMPrior
from tests.test_lgssm import dense_posterior
from tests.test_runner import compose_config

D, B, T = 8, 3, 5
TINY = dict(z_dim=3, a_dim=2, K=2, dim_rnn_alpha=5, dense_x_a=[6])


def tiny(**options):
    """A float64 KVAE on D = 8 binary pixels, B^k and C^k large enough to matter."""
    model = build_model("kvae", D, Bernoulli(), **{**TINY, "init_kf_mat": 0.7, **options})
    return model.double()


def binary(*shape: int) -> torch.Tensor:
    return (torch.rand(*shape) > 0.5).double()


def mixed_by_hand(prior: LGSSMPrior, a: torch.Tensor) -> LGSSM:
    """The LGSSM that generates ``a (B, T, N)``: α_t from the LSTM over a_{0:t−1} (a_0 = 0),
    then Σ_k α_t^k (A^k, B^k, C^k) term by term, and b_t = B_t a_{t−1}."""
    a_prev = torch.cat([torch.zeros_like(a[:, :1]), a[:, :-1]], dim=1)
    alpha = torch.softmax(prior.alpha_out(prior.alpha_rnn(a_prev)[0]), dim=-1)
    A = sum(alpha[..., k, None, None] * prior.A[k] for k in range(prior.K))
    C = sum(alpha[..., k, None, None] * prior.C[k] for k in range(prior.K))
    B_t = sum(alpha[..., k, None, None] * prior.B[k] for k in range(prior.K))
    n = a.shape[0]
    return LGSSM(
        init_loc=torch.zeros(n, prior.z_dim, dtype=a.dtype),
        init_cov=prior.init_cov.expand(n, -1, -1),
        A=A,
        b=(B_t @ a_prev[..., None])[..., 0],
        C=C,
        Q=prior.Q.scale_tril() @ prior.Q.scale_tril().mT,
        R=prior.R.scale_tril() @ prior.R.scale_tril().mT,
    )


def test_prior_log_density_equals_the_dense_gaussian_of_the_mixed_lgssm():
    """α_t, u_t depend on a_{<t} only, so Σ_t log p(a_t | a_{<t}) equals the dense log-density
    of a under the LGSSM with the matrices mixed along a itself."""
    prior = tiny().dynamics
    a = torch.randn(B, T, 2, dtype=torch.float64)
    expected = dense_posterior(mixed_by_hand(prior, a), a, torch.ones(B, T, dtype=torch.bool))[0]
    got = prior.trajectory(B, T, a).log_prob(a)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_step_by_step_conditionals_equal_the_parallel_ones():
    """The steps that generation and ``model.sites=markov`` walk score a like the filter."""
    prior = tiny().dynamics
    a = torch.randn(B, T, 2, dtype=torch.float64)
    parallel = prior.trajectory(B, T, a).conditionals(a)
    a_prev, state = torch.zeros_like(a[:, 0]), None
    for t in range(T):
        d, state = prior.step(t, a_prev, state)
        a_prev = a[:, t]
        torch.testing.assert_close(d.loc, parallel.loc[:, t])
        torch.testing.assert_close(d.scale_tril, parallel.scale_tril[:, t])


def test_markov_sites_and_the_trajectory_site_give_the_same_elbo():
    x = binary(B, T, D)
    markov, single = tiny(sites="markov"), tiny()
    single.load_state_dict(markov.state_dict())
    guide_trace = poutine.trace(markov.guide).get_trace(x, 0.6)
    a = torch.stack([guide_trace.nodes[f"a_{t + 1}"]["value"] for t in range(T)], dim=1)
    trace = poutine.Trace()
    trace.add_node("a", type="sample", value=a, is_observed=False, infer={})
    for elbo in (Trace_ELBO(), TraceMeanField_ELBO()):
        got = elbo.differentiable_loss(
            single.model, poutine.replay(single.guide, trace=trace), x, 0.6
        )
        expected = elbo.differentiable_loss(
            markov.model, poutine.replay(markov.guide, trace=guide_trace), x, 0.6
        )
        torch.testing.assert_close(got, expected)


def _gaussian_kl(mq, sq, mp, cov_p):
    """KL(N(mq, diag sq²) ‖ N(mp, cov_p)) over the last dimension, written out."""
    inv = torch.linalg.inv(cov_p)
    diff = (mp - mq)[..., None]
    trace = (inv.diagonal(dim1=-2, dim2=-1) * sq**2).sum(-1)
    mahalanobis = (diff.mT @ inv @ diff)[..., 0, 0]
    log_det = torch.logdet(cov_p) - 2 * sq.log().sum(-1)
    return 0.5 * (trace + mahalanobis - mq.shape[-1] + log_det)


@pytest.mark.parametrize("estimator", ["trace", "mean_field"])
def test_elbo_by_hand(estimator):
    """−ELBO / (B·T) with the latent term weighted 0.6: log Bernoulli(x | dec(a)) and
    log q(a | x) − log p(a) (Trace_ELBO), or Σ_t KL(q(a_t | x_t) ‖ p(a_t | a_{<t})) at the
    guide's draw (TraceMeanField_ELBO); p from dense Gaussian algebra."""
    model, x, weight = tiny(), binary(B, T, D), 0.6
    guide_trace = poutine.trace(model.guide).get_trace(x, weight)
    a = guide_trace.nodes["a"]["value"]
    elbo = Trace_ELBO() if estimator == "trace" else TraceMeanField_ELBO()
    loss = elbo.differentiable_loss(
        model.model, poutine.replay(model.guide, trace=guide_trace), x, weight
    )

    logits = model.decoder(a)
    recon = (x * logits - torch.nn.functional.softplus(logits)).sum()
    mq, logvar = model.encoder[1].linear(model.encoder[0](x)).chunk(2, -1)
    sq = (0.5 * logvar).exp()
    lgssm = mixed_by_hand(model.dynamics, a)
    if estimator == "trace":
        log_q = (-0.5 * ((a - mq) / sq) ** 2 - sq.log() - 0.5 * math.log(2 * math.pi)).sum()
        log_p = dense_posterior(lgssm, a, torch.ones(B, T, dtype=torch.bool))[0].sum()
        latent = log_q - log_p
    else:
        filtered = kalman_filter(lgssm, a)
        cov_p = filtered.obs_scale_tril @ filtered.obs_scale_tril.mT
        latent = _gaussian_kl(mq, sq, filtered.obs_loc, cov_p).sum()
    expected = -(recon - weight * latent) / (B * T)
    torch.testing.assert_close(loss, expected)


def test_kl_weight_zero_trains_the_vae_part_alone():
    """The paper's schedule via the KL warm-up: at weight 0 the LGSSM and α-network get no
    gradient while encoder and decoder do; at a positive weight everything learns."""
    model, x = tiny(), binary(B, T, D)
    for weight, dynamics_learns in ((0.0, False), (0.5, True)):
        model.zero_grad(set_to_none=True)
        TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, weight).backward()
        for name, p in model.named_parameters():
            learns = p.grad is not None and bool(p.grad.abs().sum() > 0)
            assert learns == (dynamics_learns or not name.startswith("dynamics.")), name


def test_imputation_fills_forward_then_smooths_like_dense_conditioning():
    """Missing a_t: the forward pass fills E[a_t | observed a_{<t}] (the input of α_{t+1} and
    u_{t+1}); given the filled sequence the estimate is E[a_t | every observed a], both by dense
    conditioning on the LGSSM mixed along the filled sequence."""
    prior = tiny().dynamics
    a = torch.randn(B, T, 2, dtype=torch.float64)
    observed = torch.tensor([[1, 0, 0, 1, 1], [1, 1, 0, 1, 0], [0, 1, 1, 0, 1]]).bool()
    filled = prior.fill(a, observed)
    lgssm = mixed_by_hand(prior, filled)
    for t in range(T):
        past = observed & (torch.arange(T) < t)
        expected = dense_posterior(lgssm, filled, past)[3][:, t]
        expected = torch.where(observed[:, t, None], a[:, t], expected)
        torch.testing.assert_close(filled[:, t], expected)
    smoothed, alpha = prior.smooth(a, observed)
    expected = torch.where(observed[..., None], a, dense_posterior(lgssm, filled, observed)[3])
    torch.testing.assert_close(smoothed, expected)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(B, T, dtype=torch.float64))


def test_impute_decodes_encoder_means_and_smoothed_estimates():
    model, x = tiny(), binary(B, T, D)
    observed = torch.tensor([[1, 0, 0, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 1]]).bool()
    a = model.encoder(x)[0]
    with torch.no_grad():
        expected = model.decoder(model.dynamics.smooth(a, observed)[0])
        torch.testing.assert_close(model.impute(x, observed), expected)
        torch.testing.assert_close(model.impute(x, observed)[1], model.decoder(a[1]))
        # a missing frame's content does not matter
        blanked = torch.where(observed[..., None], x, 1 - x)
        torch.testing.assert_close(model.impute(blanked, observed), expected)


def sample_lgssm(model: LGSSM, n: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """a ``(n, steps, N)`` from a time-invariant LGSSM (A, C of the first element and step)."""
    A, C = model.A[0, 0], model.C[0, 0]
    lq, lr = torch.linalg.cholesky(model.Q), torch.linalg.cholesky(model.R)
    l0 = torch.linalg.cholesky(model.init_cov[0])
    z = model.init_loc + torch.randn(n, A.shape[-1], generator=generator) @ l0.mT
    out = []
    for _ in range(steps):
        z = z @ A.mT + torch.randn(z.shape, generator=generator) @ lq.mT
        out.append(z @ C.mT + torch.randn(n, C.shape[-2], generator=generator) @ lr.mT)
    return torch.stack(out, 1)


def test_training_recovers_the_log_likelihood_of_a_known_lgssm():
    """Maximum likelihood (25 L-BFGS iterations, full batch) on 200 sequences from a known LGSSM
    (a damped rotation; Q and R unlike the prior's initial ones) brings the prior's held-out
    log-likelihood within 2 % of the true model's; untrained it is far off."""
    steps, n, angle = 10, 200, 0.3
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[cos, -sin], [sin, cos]])
    truth = LGSSM(
        init_loc=torch.zeros(n, 2),
        init_cov=16 * torch.eye(2).expand(n, 2, 2),
        A=(0.95 * rotation).expand(n, steps, 2, 2),
        b=torch.zeros(n, steps, 2),
        C=torch.tensor([[1.0, 0.5], [-0.3, 0.8]]).expand(n, steps, 2, 2),
        Q=0.5**2 * torch.eye(2),
        R=torch.diag(torch.tensor([0.6, 0.05]) ** 2),
    )
    generator = torch.Generator().manual_seed(0)
    train, test = (sample_lgssm(truth, n, steps, generator) for _ in range(2))
    true_ll = kalman_filter(truth, test).log_likelihood(test).mean()
    prior = LGSSMPrior(2, 2, K=1, dim_rnn_alpha=2, control="none", noise="learned", init_kf_mat=0.5)

    def held_out_gap() -> float:
        with torch.no_grad():
            ll = prior.trajectory(n, steps, test).log_prob(test).mean()
        return abs((ll - true_ll) / true_ll).item()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -prior.trajectory(n, steps, train).log_prob(train).mean()
        loss.backward()
        return loss

    assert held_out_gap() > 0.5
    optimizer = torch.optim.LBFGS(prior.parameters(), max_iter=25, line_search_fn="strong_wolfe")
    optimizer.step(closure)
    assert held_out_gap() < 0.02


def test_generate_draws_from_the_prior_and_decodes():
    model = tiny()
    torch.manual_seed(5)
    x = model.generate(4, T)
    torch.manual_seed(5)
    a = model.sample_a(4, T)
    torch.testing.assert_close(x, torch.sigmoid(model.decoder(a)))
    assert x.shape == (4, T, D) and a.std() > 0


@pytest.mark.parametrize("key,value", [("control", "input"), ("noise", "free")])
def test_bad_options_name_the_config_key(key, value):
    with pytest.raises(ValueError, match=f"model.{key}='{value}'"):
        tiny(**{key: value})


def test_fixed_noise_is_not_learned_and_is_the_default():
    learned = {n for n, _ in tiny(noise="learned").named_parameters()}
    fixed = {n for n, _ in tiny().named_parameters()}
    assert learned - fixed == {"dynamics.Q.raw", "dynamics.R.raw"}
    assert "dynamics.B" not in {n for n, _ in tiny(control="none").named_parameters()}


QUICK = ["model=kvae", "train.epochs=1", "train.batch_size=8", "train.progress=false",
         "train.warmup_every=0"]


def test_bouncing_balls_train_evaluate_generate(tmp_path):
    overrides = [*QUICK, "data=bouncing_ball", "data.n_train=16", "data.n_val=8",
                 "data.n_test=4", "data.seq_len=20"]
    run_dir = runner.train(compose_config(overrides), tmp_path)
    results = runner.evaluate(run_dir, torch.device("cpu"))
    assert 0 <= results["pixel_error"] <= 1 and results["nll_per_frame"] > 0
    assert json.loads((run_dir / "results.json").read_text())["model"] == "kvae"
    paths = runner.generate(run_dir, torch.device("cpu"), n=2, T=20)
    assert all(p.stat().st_size > 0 for p in paths)


@pytest.mark.parametrize("data", ["data=fsdd data.max_files=6", "data=cmu_mocap data.max_files=2"])
def test_speech_and_motion_train_and_evaluate(data_root, tmp_path, data):
    run_dir = runner.train(compose_config([*QUICK, *data.split()]), tmp_path)
    results = runner.evaluate(run_dir, torch.device("cpu"))
    metric = "si_sdr" if "fsdd" in data else "mpjpe_mm"
    assert math.isfinite(results[metric])

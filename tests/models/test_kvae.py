"""KVAE: the LGSSM prior against dense Gaussian algebra, the ELBO by hand, imputation, learning."""

import json
import math
import re

import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_dvae import cli, runner
from pyro_dvae.data import build_task
from pyro_dvae.lgssm import LGSSM, kalman_filter
from pyro_dvae.likelihoods import Bernoulli
from pyro_dvae.models import build_model
from pyro_dvae.models.kvae import LGSSMPrior
from pyro_dvae.train import load_checkpoint, seed_everything
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


def test_the_kalman_filter_and_its_steps_stay_float32_under_bfloat16_autocast():
    """``train.precision=bfloat16`` runs a step under autocast; the LGSSM prior's filter and
    step conditionals (covariances, Cholesky factors: :func:`~pyro_dvae.nn.float32_math`) give
    exactly their float32 values there."""
    prior = tiny().dynamics.float()
    a = torch.randn(B, T, 2)

    def conditionals() -> tuple[torch.Tensor, ...]:
        step, _ = prior.step(1, a[:, 0], prior.step(0, torch.zeros_like(a[:, 0]), None)[1])
        return prior.trajectory(B, T, a).log_prob(a), step.loc, step.scale_tril

    expected = conditionals()
    with torch.autocast("cpu", torch.bfloat16):
        got = conditionals()
    for value, reference in zip(got, expected, strict=True):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, reference, rtol=0, atol=0)


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


QUICK = [
    "model=kvae",
    "train.epochs=1",
    "train.batch_size=8",
    "train.progress=false",
    "train.warmup_every=0",
]


def test_bouncing_balls_train_evaluate_generate(tmp_path):
    overrides = [
        *QUICK,
        "data=bouncing_ball",
        "data.n_train=16",
        "data.n_val=8",
        "data.n_test=4",
        "data.seq_len=20",
    ]
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


# --- the paper's setup: convolutional frame networks, bounded q variance, λ, the recipe ---


def conv_kvae(**options):
    """A float64 KVAE on 4 × 4 binary frames with two conv layers of 3 channels."""
    sizes = dict(z_dim=3, a_dim=2, K=2, dim_rnn_alpha=5, encoder="conv", conv_channels=[3, 3])
    model = build_model("kvae", 16, Bernoulli(), **{**sizes, "activation": "relu", **options})
    return model.double()


def test_the_papers_kvae_has_the_authors_layers():
    """Parameters, counted by hand: encoder convs 1→32, 32→32, 32→32 (3 × 3): 320 + 2 · 9,248,
    head 512 → 2 + 2: 2,052; decoder linear 2 → 512: 1,536, convs 32 → 128 (3 × 3): 3 · 36,992,
    1 × 1 to one channel: 33; A^k, C^k: 3 · 16 + 3 · 8; LSTM(2, 50): 10,800, α head: 153 (no B:
    no control; Q, R fixed)."""
    cfg = compose_config(["+experiment=kvae_balls"])
    model = runner.build_model_for(cfg, build_task(**{**cfg.data, "n_train": 1, "n_test": 1}))
    assert sum(p.numel() for p in model.parameters()) == (
        320 + 2 * 9248 + 2052 + 1536 + 3 * 36992 + 33 + 3 * 16 + 3 * 8 + 10800 + 153
    )
    assert model.encoder[0].map_shape == (32, 4, 4) and model.encoder[0].out_dim == 512
    x = torch.rand(2, 20, 1024)
    assert model.decoder(model.encoder(x)[0]).shape == (2, 20, 1024)


def test_the_encoders_variance_is_bounded_as_the_authors():
    model = conv_kvae(a_var_max=0.03)
    head = model.encoder[1]
    h = torch.zeros(1, head.linear.in_features, dtype=torch.float64)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.zero_()
        assert torch.equal(
            head(h)[1] ** 2,
            torch.full((1, 2), 0.015, dtype=torch.float64),
        )  # 0.03 · sigmoid(0)
        head.linear.bias.fill_(50.0)
        scale = head(h)[1]
    assert torch.all(scale**2 <= 0.03) and torch.allclose(scale**2, torch.tensor(0.03).double())


def test_recon_scale_weighs_the_reconstruction_in_training_only():
    """With λ = 0.3, −ELBO in train mode minus −ELBO in eval mode (same draw of a) is
    0.7 · log p(x | a) / (B·T), log p(x | a) written out."""
    model, x = tiny(recon_scale=0.3), binary(B, T, D)
    guide_trace = poutine.trace(model.guide).get_trace(x, 1.0)
    losses = {}
    for mode in ("train", "eval"):
        getattr(model, mode)()
        losses[mode] = Trace_ELBO().differentiable_loss(
            model.model, poutine.replay(model.guide, trace=guide_trace), x, 1.0
        )
    logits = model.decoder(guide_trace.nodes["a"]["value"])
    recon = (x * logits - torch.nn.functional.softplus(logits)).sum()
    torch.testing.assert_close(losses["train"] - losses["eval"], 0.7 * recon / (B * T))


def test_the_fast_imputer_of_the_experiment_is_kvae_impute_on_missing_frames():
    """experiments/kvae_imputation.py encodes once and decodes only the missing frames."""
    from experiments.kvae_imputation import kvae_imputer

    model, x = conv_kvae(a_var_max=0.03).eval(), binary(4, T, 16)
    observed = torch.tensor([[1, 0, 0, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 1, 0], [1, 0, 1, 0, 1]])
    observed = observed.bool()
    for smooth in (True, False):
        expected = torch.sigmoid(model.impute(x, observed, smooth)).detach()
        got = kvae_imputer(model, x, smooth)(slice(1, 4), observed[1:])
        torch.testing.assert_close(got[~observed[1:]], expected[1:][~observed[1:]])
        assert torch.all(got[observed[1:]] == 0)


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(encoder="cnn"), "model.encoder='cnn'"),
        (dict(a_var_max=0.0), "model.a_var_max=0.0"),
        (dict(recon_scale=0.0), "model.recon_scale=0.0"),
        (dict(conv_channels=[3, 3, 3]), "model.<modality>.conv_channels has 3 layers"),
        (dict(kernel_size=2), "model.<modality>.kernel_size=2"),
    ],
)
def test_bad_frame_network_options_name_the_key(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        conv_kvae(**options)


def test_the_papers_recipe_trains_with_alpha_frozen_first(tmp_path):
    """``+experiment=kvae_balls`` for one epoch on a few videos: the authors' schedule (lr
    0.007, ×0.85 every 20 epochs, batch 32, clip 150, KL weight 1) and the α-network
    (``kf_update_steps``) still at its initial weights while the rest has learned."""
    overrides = [
        "+experiment=kvae_balls",
        "data.n_train=8",
        "data.n_val=4",
        "data.n_test=2",
        "train.epochs=1",
        "train.batch_size=4",
        "train.progress=false",
    ]
    cfg = compose_config(overrides)
    train = cfg.train
    assert (train.lr, train.lr_decay, train.lr_decay_every, train.batch_size) == (
        0.007,
        0.85,
        20,
        4,
    )
    assert (train.clip_norm, train.warmup_every, train.freeze_epochs) == (150.0, 0, 10)
    run_dir = runner.train(cfg, tmp_path)
    seed_everything(cfg.seed)  # as the runner did before building the model
    model = runner.build_model_for(cfg, build_task(**cfg.data))
    initial = {name: p.detach() for name, p in model.named_parameters()}
    trained = load_checkpoint(run_dir / "last.pt")["model"]
    alpha = {k for k in initial if k.startswith(("dynamics.alpha_rnn.", "dynamics.alpha_out."))}
    assert len(alpha) == 6
    assert all(torch.equal(initial[k], trained[k]) for k in alpha)
    assert all(not torch.equal(initial[k], trained[k]) for k in initial.keys() - alpha)


def test_the_experiments_own_keys_pass_the_command_line_check(capsys):
    """``+experiment=kvae_balls`` brings keys the default config lacks (data.wall,
    model.video.recon_scale); the check of the command line composes it before judging."""
    argv = ["+experiment=kvae_balls", "data.wall=1.0", "model.video.recon_scale=0.5"]
    cli.check_overrides(cli.CONFIG_DIR, "config", argv)
    with pytest.raises(SystemExit):
        cli.check_overrides(cli.CONFIG_DIR, "config", [*argv, "data.wal=1.0"])
    assert "data.wal: no such key; did you mean data.wall=1.0?" in capsys.readouterr().err

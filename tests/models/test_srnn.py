import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from benchmarks.reference_sequential import reference_loss_srnn
from pyro_dvae.feedback import Feedback
from pyro_dvae.likelihoods import ExponentialPower, build_likelihood
from pyro_dvae.models import build_model
from tests.helpers import exponential_nll, gaussian_kl, gaussian_log_density
from tests.models.by_hand import (
    assert_overfits,
    assert_reference_matches_pyro,
    gaussian,
    lstm_cell,
    lstm_outputs,
    stack,
)
from tests.models.feedback_checks import (
    assert_loss_and_gradients_match,
    assert_perfect_predictor_is_teacher_forcing,
    elbo_loss,
    guide_draw_and_coins,
)

SPEECH = dict(
    z_dim=16,
    dense_x_h=[256],
    dim_rnn_h=128,
    dense_hx_g=[256],
    dim_rnn_g=128,
    dense_gz_z=[64, 32],
    dense_hz_x=[256],
    dense_hz_z=[64, 32],
)
MOTION = dict(
    z_dim=10,
    dense_x_h=[64],
    dim_rnn_h=64,
    dense_hx_g=[64],
    dim_rnn_g=64,
    dense_gz_z=[32],
    dense_hz_x=[64],
    dense_hz_z=[32],
)
TINY = dict(
    z_dim=3,
    dense_x_h=[8],
    dim_rnn_h=5,
    dense_hx_g=[7],
    dim_rnn_g=6,
    dense_gz_z=[4, 5],
    dense_hz_x=[9],
    dense_hz_z=[4],
)
B, T, D = 4, 6, 10
BACKWARD = {"smoother": True, "filter": False}


@pytest.mark.parametrize(
    "modality,x_dim,params,count",
    [
        ("speech", 513, SPEECH, 884_993),
        ("motion", 96, MOTION, 100_232),
    ],
)
@pytest.mark.parametrize("guide", [None, "filter"])
def test_parameter_count_matches_spec(modality, x_dim, params, count, guide):
    likelihood = build_likelihood(None, modality, x_dim)
    model = build_model("srnn", x_dim, likelihood, guide=guide, **params)
    assert sum(p.numel() for p in model.parameters()) == count


def _by_hand(model, x, guide="smoother", z=None):
    """h_t from x_{t−1} one cell at a time; g backward (smoother) or forward (filter); then the
    combiner, prior and decoder at every t. Along z, or the posterior mean path if z is None."""
    inf, prior = model.inference, model.prior
    h = c = x.new_zeros(x.shape[0], model.rnn_h.hidden_size)
    x_prev, hs = torch.zeros_like(x[:, 0]), []
    for t in range(x.shape[1]):
        h, c = lstm_cell(model.rnn_h, model.mlp_x_h(x_prev), h, c)
        hs.append(h)
        x_prev = x[:, t]
    g = lstm_outputs(
        inf.rnn_g, inf.mlp_hx_g(torch.cat([torch.stack(hs, 1), x], -1)), reverse=BACKWARD[guide]
    )
    z_prev = x.new_zeros(x.shape[0], model.z_dim)
    mq, sq, mp, sp, ys = [], [], [], [], []
    for t in range(x.shape[1]):
        loc, scale = gaussian(inf.combiner.head, inf.combiner.mlp(torch.cat([g[:, t], z_prev], -1)))
        mq.append(loc)
        sq.append(scale)
        loc_p, scale_p = gaussian(prior.head, prior.mlp(torch.cat([hs[t], z_prev], -1)))
        mp.append(loc_p)
        sp.append(scale_p)
        z_prev = loc if z is None else z[:, t]
        ys.append(model.decoder(torch.cat([hs[t], z_prev], -1)))
    return stack(mq, sq, mp, sp), torch.stack(ys, 1)


def _loss_and_by_hand(elbo, x, seed, guide, *args):
    model = build_model("srnn", D, ExponentialPower(), guide=guide, **TINY)
    torch.manual_seed(seed)
    loss = elbo.differentiable_loss(model.model, model.guide, x, *args)
    torch.manual_seed(seed)
    z = poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
    return loss, z, _by_hand(model, x, guide, z)


@pytest.mark.parametrize("guide", ["smoother", "filter"])
def test_mean_field_loss_is_recon_plus_stepwise_kl(guide):
    x = torch.rand(B, T, D)
    loss, _, ((mq, sq, mp, sp), y) = _loss_and_by_hand(TraceMeanField_ELBO(), x, 3, guide, 0.6)
    expected = (exponential_nll(x, y) + 0.6 * gaussian_kl(mq, sq, mp, sp)) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_trace_elbo_is_log_ratio_of_the_sampled_trajectory():
    x = torch.rand(B, T, D)
    loss, z, ((mq, sq, mp, sp), y) = _loss_and_by_hand(Trace_ELBO(), x, 4, "smoother")
    log_ratio = gaussian_log_density(z, mq, sq) - gaussian_log_density(z, mp, sp)
    expected = (exponential_nll(x, y) + log_ratio) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("guide", ["smoother", "filter"])
def test_reference_loss_and_gradients_equal_pyro(guide):
    model = build_model("srnn", D, ExponentialPower(), guide=guide, **TINY)
    assert_reference_matches_pyro(model, reference_loss_srnn, torch.rand(B, T, D))


@pytest.mark.parametrize("guide", ["smoother", "filter"])
def test_overfits_a_tiny_batch(guide):
    model = build_model("srnn", D, ExponentialPower(), guide=guide, **TINY)
    assert_overfits(model, torch.exp(2 * torch.randn(3, 8, D)))


@pytest.mark.parametrize("hidden", [[4, 5], []])
def test_stepwise_sampling_and_parallel_scoring_agree(hidden):
    """Posterior and prior: a step-by-step draw has the parameters of parallel scoring
    (the step precomputes the context's share of the first layer, if there is a hidden one)."""
    sizes = {**TINY, "dense_gz_z": hidden, "dense_hz_z": hidden}
    model = build_model("srnn", D, ExponentialPower(), **sizes)
    x = torch.rand(B, T, D)
    h = model.deterministic(x)
    for trajectory in (model.inference(h, x), model.prior.trajectory(h)):
        z = trajectory.rsample()
        drawn, parallel = trajectory.conditionals(z), trajectory.parallel(z.clone())
        torch.testing.assert_close(drawn.mean, parallel.mean)
        torch.testing.assert_close(drawn.stddev, parallel.stddev)


@pytest.mark.parametrize("hidden", [[8, 5], []])
def test_split_first_layer_equals_the_concatenated_input(hidden):
    """MLP_hxg's first layer as W_h h + W_x x + b: values and gradients (parameters, h) of the
    layer on [h, x], in float64 (same products, summed in another order: ~1e-16 per entry;
    1e-12 leaves room). With no hidden layer the features are [h, x] itself."""
    torch.manual_seed(0)
    model = build_model("srnn", D, ExponentialPower(), **{**TINY, "dense_hx_g": hidden}).double()
    inf = model.inference
    x = torch.rand(B, T, D, dtype=torch.float64)
    h = torch.randn(B, T, TINY["dim_rnn_h"], dtype=torch.float64, requires_grad=True)
    inputs, weights = (
        [h, *inf.mlp_hx_g.parameters()],
        torch.randn(B, T, inf.mlp_hx_g.out_dim, dtype=torch.float64),
    )
    got, expected = inf.features(h, x), inf.mlp_hx_g(torch.cat([h, x], dim=-1))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad((got * weights).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * weights).sum(), inputs)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_model_recomputes_h_for_a_stale_or_gradient_free_guide_trace():
    model = build_model("srnn", D, ExponentialPower(), **TINY)
    x = torch.rand(B, T, D)
    trace = poutine.trace(model.guide).get_trace(x)
    with torch.no_grad():
        model.rnn_h.weight_hh_l0.add_(0.5)
    y = poutine.replay(model.model, trace=trace)(x)
    torch.testing.assert_close(y, _by_hand(model, x, z=trace.nodes["z"]["value"])[1])
    with torch.no_grad():
        trace = poutine.trace(model.guide).get_trace(x)
    poutine.replay(model.model, trace=trace)(x).sum().backward()
    assert model.rnn_h.weight_hh_l0.grad.abs().sum() > 0


def test_generation_feeds_back_the_predicted_frame():
    model = build_model("srnn", D, ExponentialPower(), **TINY)
    torch.manual_seed(6)
    generated = model.generate(2, 5)
    torch.manual_seed(6)
    h = c = torch.zeros(2, TINY["dim_rnn_h"])
    x_prev, z, frames = torch.zeros(2, D), torch.zeros(2, TINY["z_dim"]), []
    for _ in range(5):
        h, c = lstm_cell(model.rnn_h, model.mlp_x_h(x_prev), h, c)
        loc, scale = gaussian(model.prior.head, model.prior.mlp(torch.cat([h, z], -1)))
        z = loc + scale * torch.randn(2, TINY["z_dim"])
        x_prev = torch.exp(model.decoder(torch.cat([h, z], -1)))
        frames.append(x_prev)
    torch.testing.assert_close(generated, torch.stack(frames, 1))
    assert generated.shape == (2, 5, D) and torch.isfinite(generated).all()


@pytest.mark.parametrize("guide", ["smoother", "filter"])
def test_reconstruction_follows_the_posterior_mean_path(guide):
    model = build_model("srnn", D, ExponentialPower(), guide=guide, **TINY)
    x = torch.rand(2, 5, D)
    torch.testing.assert_close(model.reconstruct(x), _by_hand(model, x, guide)[1])
    assert torch.equal(model.reconstruct(x), model.reconstruct(x))


def test_unknown_guide_is_a_clear_error():
    with pytest.raises(ValueError, match="guide.name='dks'.*smoother.*filter"):
        build_model("srnn", D, ExponentialPower(), guide="dks", **TINY)


def _free_running_by_hand(model, x, z, coins):
    """Prior and decoder over h^gen, one cell at a time: LSTM_h reads x̂_{t−1} = exp(y_{t−1})
    (detached) where coins[:, t−1], else x_{t−1}. Returns the prior's (mean, std) and y."""
    prior = model.prior
    h = c = x.new_zeros(x.shape[0], model.rnn_h.hidden_size)
    x_prev, z_prev = torch.zeros_like(x[:, 0]), torch.zeros_like(z[:, 0])
    mp, sp, ys = [], [], []
    for t in range(x.shape[1]):
        h, c = lstm_cell(model.rnn_h, model.mlp_x_h(x_prev), h, c)
        loc, scale = gaussian(prior.head, prior.mlp(torch.cat([h, z_prev], -1)))
        mp.append(loc)
        sp.append(scale)
        ys.append(model.decoder(torch.cat([h, z[:, t]], -1)))
        x_prev = torch.where(coins[:, t, None], torch.exp(ys[-1]).detach(), x[:, t])
        z_prev = z[:, t]
    return stack(mp, sp, ys)


@pytest.mark.parametrize("guide", ["smoother", "filter"])
def test_generation_mode_fed_the_ground_truth_is_teacher_forcing(guide):
    model = build_model("srnn", D, ExponentialPower(), guide=guide, **TINY)
    assert_perfect_predictor_is_teacher_forcing(model, torch.rand(B, T, D))


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_generation_mode_and_scheduled_sampling_by_hand(p):
    """Encoder on the ground truth (h^inf), prior and decoder on h^gen, which reads the
    prediction where the per-sequence, per-step coin says so; gradients not through x̂."""
    model = build_model("srnn", D, ExponentialPower(), **TINY)
    x = torch.rand(B, T, D)
    loss = elbo_loss(model, x, Feedback(p), seed=7)
    z, coins = guide_draw_and_coins(model, x, p, seed=7)
    assert 0 < coins[:, :-1].sum() < coins[:, :-1].numel() or p == 1
    (mq, sq, _, _), _ = _by_hand(model, x, "smoother", z)
    mp, sp, y = _free_running_by_hand(model, x, z, coins)
    expected = (exponential_nll(x, y) + gaussian_kl(mq, sq, mp, sp)) / (B * T)
    assert_loss_and_gradients_match(model, loss, expected)


def test_generation_mode_differs_from_teacher_forcing():
    model = build_model("srnn", D, ExponentialPower(), **TINY)
    x = torch.rand(2, 5, D)
    teacher = model.reconstruct(x)
    model.set_feedback(1.0)
    assert not torch.allclose(model.reconstruct(x), teacher)
    torch.testing.assert_close(model.reconstruct(x)[:, 0], teacher[:, 0])  # both read x_0 = 0

import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from benchmarks.reference_sequential import reference_loss_storn
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
    dense_x_g=[256],
    dim_rnn_g=128,
    dense_g_z=[64, 32],
    dense_z_h=[32, 64],
    dense_xtm1_h=[256],
    dense_h_x=[256],
    dim_rnn_h=128,
)
MOTION = dict(
    z_dim=10,
    dense_x_g=[64],
    dim_rnn_g=64,
    dense_g_z=[32],
    dense_z_h=[32],
    dense_xtm1_h=[64],
    dense_h_x=[],
    dim_rnn_h=64,
)
TINY = dict(
    z_dim=3,
    dense_x_g=[8],
    dim_rnn_g=6,
    dense_g_z=[5],
    dense_z_h=[4],
    dense_xtm1_h=[7],
    dense_h_x=[9],
    dim_rnn_h=5,
)
B, T, D = 4, 6, 10


@pytest.mark.parametrize(
    "modality,x_dim,params,count",
    [
        ("speech", 513, SPEECH, 870_113),
        ("motion", 96, MOTION, 96_500),
    ],
)
def test_parameter_count_matches_spec(modality, x_dim, params, count):
    model = build_model("storn", x_dim, build_likelihood(None, modality, x_dim), **params)
    assert sum(p.numel() for p in model.parameters()) == count


def _by_hand(model, x, z):
    """q(z_t | x_{1:t}) and the decoder output, one time step at a time."""
    g = lstm_outputs(model.rnn_g, model.mlp_x_g(x))
    mlp_g_z, head = model.encoder
    h = c = x.new_zeros(x.shape[0], model.rnn_h.hidden_size)
    x_prev = torch.zeros_like(x[:, 0])
    mq, sq, ys = [], [], []
    for t in range(x.shape[1]):
        loc, scale = gaussian(head, mlp_g_z(g[:, t]))
        mq.append(loc)
        sq.append(scale)
        inputs = torch.cat([model.mlp_z_h(z[:, t]), model.mlp_xtm1_h(x_prev)], -1)
        h, c = lstm_cell(model.rnn_h, inputs, h, c)
        ys.append(model.decoder(h))
        x_prev = x[:, t]
    return stack(mq, sq, ys)


def _loss_and_by_hand(elbo, x, seed, *args):
    model = build_model("storn", D, ExponentialPower(), **TINY)
    torch.manual_seed(seed)
    loss = elbo.differentiable_loss(model.model, model.guide, x, *args)
    torch.manual_seed(seed)
    z = poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
    return loss, z, _by_hand(model, x, z)


def test_mean_field_loss_is_recon_plus_analytic_kl():
    x = torch.rand(B, T, D)
    loss, _, (mq, sq, y) = _loss_and_by_hand(TraceMeanField_ELBO(), x, 3, 0.6)
    kl = gaussian_kl(mq, sq, torch.zeros_like(mq), torch.ones_like(sq))
    expected = (exponential_nll(x, y) + 0.6 * kl) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_trace_elbo_is_log_ratio_of_the_sampled_trajectory():
    x = torch.rand(B, T, D)
    loss, z, (mq, sq, y) = _loss_and_by_hand(Trace_ELBO(), x, 4)
    log_ratio = gaussian_log_density(z, mq, sq) - gaussian_log_density(z, 0 * z, 1 + 0 * z)
    expected = (exponential_nll(x, y) + log_ratio) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_reference_loss_and_gradients_equal_pyro():
    model = build_model("storn", D, ExponentialPower(), **TINY)
    assert_reference_matches_pyro(model, reference_loss_storn, torch.rand(B, T, D))


def test_overfits_a_tiny_batch():
    model = build_model("storn", D, ExponentialPower(), **TINY)
    assert_overfits(model, torch.exp(2 * torch.randn(3, 8, D)))


def test_generation_feeds_back_the_predicted_frame():
    model = build_model("storn", D, ExponentialPower(), **TINY)
    torch.manual_seed(6)
    generated = model.generate(2, 5)
    torch.manual_seed(6)
    z = torch.randn(2, 5, TINY["z_dim"])
    h = c = torch.zeros(2, TINY["dim_rnn_h"])
    x_prev, frames = torch.zeros(2, D), []
    for t in range(5):
        inputs = torch.cat([model.mlp_z_h(z[:, t]), model.mlp_xtm1_h(x_prev)], -1)
        h, c = lstm_cell(model.rnn_h, inputs, h, c)
        x_prev = torch.exp(model.decoder(h))
        frames.append(x_prev)
    torch.testing.assert_close(generated, torch.stack(frames, 1))
    assert generated.shape == (2, 5, D) and torch.isfinite(generated).all()


def test_reconstruction_with_the_posterior_mean_is_deterministic():
    model = build_model("storn", D, ExponentialPower(), **TINY)
    x = torch.rand(2, 5, D)
    mq, _, y = _by_hand(model, x, model.posterior(x).mean)
    torch.testing.assert_close(model.reconstruct(x), y)
    assert torch.equal(model.reconstruct(x), model.reconstruct(x))


def test_storn_has_a_single_guide():
    with pytest.raises(ValueError, match="guide.name='filter'"):
        build_model("storn", D, ExponentialPower(), guide="filter", **TINY)


def _free_running_decoder_by_hand(model, x, z, coins):
    """y with LSTM_h reading x̂_{t−1} = exp(y_{t−1}) (detached) where coins[:, t−1], else
    x_{t−1}."""
    h = c = x.new_zeros(x.shape[0], model.rnn_h.hidden_size)
    x_prev, ys = torch.zeros_like(x[:, 0]), []
    for t in range(x.shape[1]):
        inputs = torch.cat([model.mlp_z_h(z[:, t]), model.mlp_xtm1_h(x_prev)], -1)
        h, c = lstm_cell(model.rnn_h, inputs, h, c)
        ys.append(model.decoder(h))
        x_prev = torch.where(coins[:, t, None], torch.exp(ys[-1]).detach(), x[:, t])
    return torch.stack(ys, 1)


def test_generation_mode_fed_the_ground_truth_is_teacher_forcing():
    model = build_model("storn", D, ExponentialPower(), **TINY)
    assert_perfect_predictor_is_teacher_forcing(model, torch.rand(B, T, D))


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_generation_mode_and_scheduled_sampling_by_hand(p):
    """The encoder reads the ground truth, the decoder recurrence the prediction where the
    per-sequence, per-step coin says so; the N(0, I) prior is unchanged."""
    model = build_model("storn", D, ExponentialPower(), **TINY)
    x = torch.rand(B, T, D)
    loss = elbo_loss(model, x, Feedback(p), seed=7)
    z, coins = guide_draw_and_coins(model, x, p, seed=7)
    assert 0 < coins[:, :-1].sum() < coins[:, :-1].numel() or p == 1
    mq, sq, _ = _by_hand(model, x, z)
    y = _free_running_decoder_by_hand(model, x, z, coins)
    kl = gaussian_kl(mq, sq, torch.zeros_like(mq), torch.ones_like(sq))
    assert_loss_and_gradients_match(model, loss, (exponential_nll(x, y) + kl) / (B * T))

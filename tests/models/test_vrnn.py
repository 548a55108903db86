import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from benchmarks.reference_sequential import reference_loss_vrnn
from pyro_dvae.distributions import Trajectory
from pyro_dvae.feedback import Feedback
from pyro_dvae.likelihoods import ExponentialPower, build_likelihood
from pyro_dvae.models import build_model
from tests.helpers import (
    assert_same_elbo_and_gradients,
    elbo_and_gradients,
    exponential_nll,
    gaussian_kl,
    gaussian_log_density,
)
from tests.models.by_hand import (
    assert_overfits,
    assert_reference_matches_pyro,
    gaussian,
    lstm_cell,
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
    dense_x=[256],
    dense_z=[32, 64],
    dense_hx_z=[],
    dense_hz_x=[],
    dense_h_z=[],
    dim_rnn=128,
)
MOTION = dict(
    z_dim=10, dense_x=[64], dense_z=[16, 32], dense_hx_z=[], dense_hz_x=[], dense_h_z=[], dim_rnn=64
)
TINY = dict(
    z_dim=3, dense_x=[8], dense_z=[4, 5], dense_hx_z=[6], dense_hz_x=[7], dense_h_z=[4], dim_rnn=5
)
B, T, D = 4, 6, 10


@pytest.mark.parametrize(
    "modality,x_dim,params,count",
    [
        ("speech", 513, SPEECH, 480_097),
        ("motion", 96, MOTION, 61_592),
    ],
)
def test_parameter_count_matches_spec(modality, x_dim, params, count):
    model = build_model("vrnn", x_dim, build_likelihood(None, modality, x_dim), **params)
    assert sum(p.numel() for p in model.parameters()) == count


def _by_hand(model, x, z=None):
    """The VRNN loop on paper: q, prior and decoder at every t, then h_{t+1}; h_1 = 0.
    Along z, or along the posterior mean path (z_t = μ_t) when z is None."""
    fx = model.phi_x(x)
    (enc_mlp, enc_head), (prior_mlp, prior_head) = model.encoder, model.prior_net
    h = c = x.new_zeros(x.shape[0], model.rnn.hidden_size)
    mq, sq, mp, sp, ys = [], [], [], [], []
    for t in range(x.shape[1]):
        loc, scale = gaussian(enc_head, enc_mlp(torch.cat([fx[:, t], h], -1)))
        mq.append(loc)
        sq.append(scale)
        loc_p, scale_p = gaussian(prior_head, prior_mlp(h))
        mp.append(loc_p)
        sp.append(scale_p)
        fz = model.phi_z(loc if z is None else z[:, t])
        ys.append(model.decoder(torch.cat([fz, h], -1)))
        h, c = lstm_cell(model.rnn, torch.cat([fx[:, t], fz], -1), h, c)
    return stack(mq, sq, mp, sp), torch.stack(ys, 1)


def _loss_and_by_hand(elbo, x, seed, *args):
    model = build_model("vrnn", D, ExponentialPower(), **TINY)
    torch.manual_seed(seed)
    loss = elbo.differentiable_loss(model.model, model.guide, x, *args)
    torch.manual_seed(seed)
    z = poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
    return loss, z, _by_hand(model, x, z)


def test_mean_field_loss_is_recon_plus_stepwise_kl():
    x = torch.rand(B, T, D)
    loss, _, ((mq, sq, mp, sp), y) = _loss_and_by_hand(TraceMeanField_ELBO(), x, 3, 0.6)
    expected = (exponential_nll(x, y) + 0.6 * gaussian_kl(mq, sq, mp, sp)) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_trace_elbo_is_log_ratio_of_the_sampled_trajectory():
    x = torch.rand(B, T, D)
    loss, z, ((mq, sq, mp, sp), y) = _loss_and_by_hand(Trace_ELBO(), x, 4)
    log_ratio = gaussian_log_density(z, mq, sq) - gaussian_log_density(z, mp, sp)
    expected = (exponential_nll(x, y) + log_ratio) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_reference_loss_and_gradients_equal_pyro():
    model = build_model("vrnn", D, ExponentialPower(), **TINY)
    assert_reference_matches_pyro(model, reference_loss_vrnn, torch.rand(B, T, D))


def test_overfits_a_tiny_batch():
    model = build_model("vrnn", D, ExponentialPower(), **TINY)
    assert_overfits(model, torch.exp(2 * torch.randn(3, 8, D)))


def test_stepwise_sampling_and_parallel_scoring_agree():
    """Both trajectories: the parameters of a step-by-step draw equal the parallel ones."""
    model = build_model("vrnn", D, ExponentialPower(), **TINY)
    x = torch.rand(B, T, D)
    fx = model.phi_x(x)

    def path(z):
        return model.phi_z(z), model.hidden(fx, model.phi_z(z))

    for trajectory in (model.posterior(fx, []), model.prior(x, path)):
        z = trajectory.rsample()
        drawn, parallel = trajectory.conditionals(z), trajectory.parallel(z.clone())
        torch.testing.assert_close(drawn.mean, parallel.mean)
        torch.testing.assert_close(drawn.stddev, parallel.stddev)


def _concatenated_posterior(model):
    """The guide's sampling loop in its straightforward form: the LSTM reads [φx(x_{t−1}),
    φz(z_{t−1})] and the encoder [φx(x_t), h_t], each frame sliced out of φx(x) per step."""

    def posterior(features_x, hs):
        def step(t, z_prev, state):
            state = model.advance(state, features_x[:, t - 1], z_prev)
            hs[t:] = [state[0]]
            return model.q_step(features_x[:, t], state[0]), state

        B, T, _ = features_x.shape
        return Trajectory(step, None, B, T, model.z_dim, like=features_x)

    return posterior


@pytest.mark.parametrize("dense_hx_z", [[6], []])
def test_split_sampling_loop_equals_the_concatenated_inputs(dense_hx_z):
    """The guide's loop with the φx(x) shares of the LSTM gates and the encoder's first layer
    computed before it (VRNN.sampler) gives the loss and every parameter's gradient of the
    loop on concatenated inputs, in float64: the same products summed in another order, so
    the two differ by rounding, ~1e-16 relative per operation over a few hundred operations;
    1e-10 leaves ample room, while a wrong column or a lost bias moves them by ~1e-2. With
    ``dense_hx_z=[]`` (the speech configuration) the split layer is the Gaussian head's."""
    model = build_model("vrnn", D, ExponentialPower(), **{**TINY, "dense_hx_z": dense_hx_z})
    model = model.double()
    x = torch.rand(B, T, D, dtype=torch.float64)
    got = elbo_and_gradients(model, x, seed=8, kl_weight=0.7)
    model.posterior = _concatenated_posterior(model)
    expected = elbo_and_gradients(model, x, seed=8, kl_weight=0.7)
    assert_same_elbo_and_gradients(model, got, expected, rtol=1e-10, atol=1e-12)


def test_model_recomputes_h_for_a_stale_guide_trace():
    model = build_model("vrnn", D, ExponentialPower(), **TINY)
    x = torch.rand(B, T, D)
    trace = poutine.trace(model.guide).get_trace(x)
    with torch.no_grad():
        model.rnn.weight_hh_l0.add_(0.5)
    y = poutine.replay(model.model, trace=trace)(x)
    torch.testing.assert_close(y, _by_hand(model, x, trace.nodes["z"]["value"])[1])


def test_generation_feeds_back_the_predicted_frame():
    model = build_model("vrnn", D, ExponentialPower(), **TINY)
    torch.manual_seed(6)
    generated = model.generate(2, 5)
    torch.manual_seed(6)
    (prior_mlp, prior_head), frames = model.prior_net, []
    h = c = torch.zeros(2, TINY["dim_rnn"])
    for _ in range(5):
        loc, scale = gaussian(prior_head, prior_mlp(h))
        fz = model.phi_z(loc + scale * torch.randn(2, TINY["z_dim"]))
        frames.append(torch.exp(model.decoder(torch.cat([fz, h], -1))))
        h, c = lstm_cell(model.rnn, torch.cat([model.phi_x(frames[-1]), fz], -1), h, c)
    torch.testing.assert_close(generated, torch.stack(frames, 1))
    assert generated.shape == (2, 5, D) and torch.isfinite(generated).all()


def test_reconstruction_follows_the_posterior_mean_path():
    model = build_model("vrnn", D, ExponentialPower(), **TINY)
    x = torch.rand(2, 5, D)
    torch.testing.assert_close(model.reconstruct(x), _by_hand(model, x)[1])
    assert torch.equal(model.reconstruct(x), model.reconstruct(x))


def test_guides():
    build_model("vrnn", D, ExponentialPower(), guide="filter", **TINY)
    with pytest.raises(ValueError, match="guide.name='smoother'.*filter"):
        build_model("vrnn", D, ExponentialPower(), guide="smoother", **TINY)


def _free_running_by_hand(model, x, z, coins):
    """Prior and decoder over h^gen, a second state of the same LSTM, which reads
    φx(x̂_t), x̂_t = exp(y_t) (detached), where coins[:, t], else φx(x_t). Returns the prior's
    (mean, std) and y."""
    prior_mlp, prior_head = model.prior_net
    h = c = x.new_zeros(x.shape[0], model.rnn.hidden_size)
    mp, sp, ys = [], [], []
    for t in range(x.shape[1]):
        loc, scale = gaussian(prior_head, prior_mlp(h))
        mp.append(loc)
        sp.append(scale)
        fz = model.phi_z(z[:, t])
        ys.append(model.decoder(torch.cat([fz, h], -1)))
        x_in = torch.where(coins[:, t, None], torch.exp(ys[-1]).detach(), x[:, t])
        h, c = lstm_cell(model.rnn, torch.cat([model.phi_x(x_in), fz], -1), h, c)
    return stack(mp, sp, ys)


def test_generation_mode_fed_the_ground_truth_is_teacher_forcing():
    model = build_model("vrnn", D, ExponentialPower(), **TINY)
    assert_perfect_predictor_is_teacher_forcing(model, torch.rand(B, T, D))


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_generation_mode_and_scheduled_sampling_by_hand(p):
    """Separate recurrences: the guide's h^inf reads the ground truth, the prior's and decoder's
    h^gen reads the prediction where the per-sequence, per-step coin says so."""
    model = build_model("vrnn", D, ExponentialPower(), **TINY)
    x = torch.rand(B, T, D)
    loss = elbo_loss(model, x, Feedback(p), seed=7)
    z, coins = guide_draw_and_coins(model, x, p, seed=7)
    assert 0 < coins[:, :-1].sum() < coins[:, :-1].numel() or p == 1
    (mq, sq, _, _), _ = _by_hand(model, x, z)
    mp, sp, y = _free_running_by_hand(model, x, z, coins)
    expected = (exponential_nll(x, y) + gaussian_kl(mq, sq, mp, sp)) / (B * T)
    assert_loss_and_gradients_match(model, loss, expected)

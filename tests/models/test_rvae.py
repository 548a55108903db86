from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from benchmarks.reference_rvae_dsae import rvae_loss
from pyro_dvae import scan
from pyro_dvae.likelihoods import ExponentialPower, build_likelihood
from pyro_dvae.models import build_model
from pyro_dvae.nn import lstm_step
from tests.helpers import (
    assert_same_elbo_and_gradients,
    elbo_and_gradients,
    exponential_nll,
    gaussian_kl,
    gaussian_log_density,
)
from tests.models.by_hand import gaussian, lstm_cell, lstm_outputs

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
TINY = dict(
    z_dim=3,
    dense_x_gx=[8],
    dim_rnn_g_x=5,
    dense_z_gz=[4],
    dim_rnn_g_z=6,
    dense_g_z=[7],
    dense_z_h=[4],
    dim_rnn_h=5,
    dense_h_x=[6],
)
X_DIM, B, T = 10, 4, 6


def config_params(name: str, modality: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml")[modality])


@pytest.mark.parametrize(
    "name,modality,x_dim,count",
    [
        ("rvae_causal", "speech", 513, 553_121),
        ("rvae_noncausal", "speech", 513, 1_026_849),
        ("rvae_causal", "motion", 96, 89_204),
        ("rvae_noncausal", "motion", 96, 157_556),
    ],
)
def test_parameter_count_matches_spec(name, modality, x_dim, count):
    likelihood = build_likelihood(None, modality, x_dim)
    model = build_model(name, x_dim, likelihood, **config_params(name, modality))
    assert sum(p.numel() for p in model.parameters()) == count


def _by_hand(model, x, z):
    """Posterior parameters along the sampled z and the decoder output, step by step."""
    inf, dec = model.inference, model.decoder
    hx = inf.mlp_x_gx(x)
    gx = lstm_outputs(inf.rnn_gx, hx, reverse=True)  # summary of x_{t:T}
    if inf.rnn_gx.bidirectional:  # second half: summary of x_{1:t}
        gx = torch.cat([gx, lstm_outputs(inf.rnn_gx, hx, suffix="_reverse")], -1)
    h = c = x.new_zeros(x.shape[0], inf.rnn_gz.hidden_size)
    z_prev, locs, scales = torch.zeros_like(z[:, 0]), [], []
    for t in range(x.shape[1]):
        h, c = lstm_cell(inf.rnn_gz, inf.mlp_z_gz(z_prev), h, c)
        loc, scale = gaussian(inf.head, inf.mlp_g_z(torch.cat([gx[:, t], h], -1)))
        locs.append(loc)
        scales.append(scale)
        z_prev = z[:, t]
    hz = dec.mlp_z_h(z)
    h = lstm_outputs(dec.rnn_h, hz)
    if dec.rnn_h.bidirectional:
        h = torch.cat([h, lstm_outputs(dec.rnn_h, hz, reverse=True, suffix="_reverse")], -1)
    return torch.stack(locs, 1), torch.stack(scales, 1), dec.gen_out(dec.mlp_h_x(h))


def tiny(name, guide=None):
    return build_model(name, X_DIM, ExponentialPower(), guide=guide, **TINY)


def sample_z(model, x, seed):
    torch.manual_seed(seed)
    return poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]


@pytest.mark.parametrize("min_step_input", [0, B * X_DIM + 1], ids=["scan", "torch_lstm"])
@pytest.mark.parametrize("guide", ["causal", "noncausal"])
@pytest.mark.parametrize("name", ["rvae_causal", "rvae_noncausal"])
def test_mean_field_loss_is_recon_plus_stepwise_kl(name, guide, min_step_input, monkeypatch):
    """Either way of running the LSTM over x (the scan, or torch's LSTM for small steps)."""
    monkeypatch.setattr(scan, "SCAN_MIN_STEP_INPUT", min_step_input)
    model, x = tiny(name, guide), torch.rand(B, T, X_DIM)
    torch.manual_seed(5)
    loss = TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, 0.4)
    mq, sq, y = _by_hand(model, x, sample_z(model, x, 5))
    kl = gaussian_kl(mq, sq, torch.zeros_like(mq), torch.ones_like(sq))
    expected = (exponential_nll(x, y) + 0.4 * kl) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_trace_elbo_is_log_ratio_of_the_sampled_trajectory():
    model, x = tiny("rvae_noncausal", "causal"), torch.rand(B, T, X_DIM)
    torch.manual_seed(6)
    loss = Trace_ELBO().differentiable_loss(model.model, model.guide, x)
    z = sample_z(model, x, 6)
    mq, sq, y = _by_hand(model, x, z)
    log_ratio = gaussian_log_density(z, mq, sq) - gaussian_log_density(z, 0 * z, 1 + 0 * z)
    expected = (exponential_nll(x, y) + log_ratio) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["rvae_causal", "rvae_noncausal"])
def test_reference_step_equals_pyro_loss(name):
    model, x = tiny(name), torch.rand(B, T, X_DIM)
    torch.manual_seed(7)
    loss = TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, 1.0)
    torch.manual_seed(7)
    torch.testing.assert_close(rvae_loss(model, x), loss, rtol=1e-5, atol=1e-5)


def test_default_guides_and_decoders():
    causal, noncausal = tiny("rvae_causal"), tiny("rvae_noncausal")
    assert not causal.inference.rnn_gx.bidirectional and not causal.decoder.rnn_h.bidirectional
    assert noncausal.inference.rnn_gx.bidirectional and noncausal.decoder.rnn_h.bidirectional
    with pytest.raises(ValueError, match="guide.name='dks'"):
        tiny("rvae_causal", "dks")
    with pytest.raises(ValueError, match="single prior"):
        build_model("rvae_causal", X_DIM, ExponentialPower(), prior="gated", **TINY)


@pytest.mark.parametrize("name", ["rvae_causal", "rvae_noncausal"])
def test_posterior_mean_path_and_generation(name):
    model, x = tiny(name), torch.rand(2, 5, X_DIM)
    y = model.reconstruct(x)
    torch.testing.assert_close(model.reconstruct(x), y, rtol=0, atol=0)
    z = torch.zeros(2, 5, 3)
    for _ in range(5):  # the mean path is the fixed point: pass k fixes step k
        z = _by_hand(model, x, z)[0]
    assert z.abs().sum() > 0
    torch.testing.assert_close(y, _by_hand(model, x, z)[2])
    torch.manual_seed(4)
    generated = model.generate(3, 8)
    torch.manual_seed(4)
    _, _, by_hand = _by_hand(model, torch.zeros(3, 8, X_DIM), torch.randn(3, 8, 3))
    torch.testing.assert_close(generated, torch.exp(by_hand))


def excess_loss(model, x, elbo, kl_weight=1.0):
    """Per-frame loss above its floor Σ(log x + 1)/(B·T): Itakura–Saito + KL, ≥ 0."""
    floor = (torch.log(x) + 1).sum() / x.shape[:2].numel()
    return elbo(model.model, model.guide, x, kl_weight) - floor


def overfit(model, x, steps, lr=2e-2):
    """Excess loss before and after ``steps`` Adam steps on one batch (the latter averaged over
    4 posterior samples), on one thread: tiny networks only lose from more."""
    elbo = TraceMeanField_ELBO().differentiable_loss
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = excess_loss(model, x, elbo).item()
        for _ in range(steps):
            optimizer.zero_grad()
            excess_loss(model, x, elbo).backward()
            optimizer.step()
        with torch.no_grad():
            return first, sum(excess_loss(model, x, elbo).item() for _ in range(4)) / 4
    finally:
        torch.set_num_threads(threads)


def smooth_batch(b, t, d):
    """Power spectra with a smooth structure: exp of a few sinusoids, (b, t, d)."""
    phase = torch.linspace(0, 3, t)[None, :, None] + torch.arange(b)[:, None, None]
    return torch.exp(torch.sin(phase + torch.linspace(0, 2, d)) + 0.5)


@pytest.mark.parametrize("name", ["rvae_causal", "rvae_noncausal"])
def test_overfits_a_tiny_batch(name):
    model = tiny(name)
    first, last = overfit(model, smooth_batch(B, T, X_DIM), steps=100)
    assert last < first / 2


@pytest.mark.parametrize("dense_g_z", [[], [7]])
@pytest.mark.parametrize("guide", ["causal", "noncausal"])
def test_split_first_layer_equals_the_concatenated_layer(guide, dense_g_z):
    """W^x g^x_t + b (precomputed for all t) + W^z g^z_t gives the q(z_t | ·) of the layer
    over [g^x_t, g^z_t], with MLP_gz empty (the head splits) or not; float64, so any
    difference beyond round-off (1e-16 per operation, a few dozen operations) is a bug."""
    model = build_model(
        "rvae_causal", X_DIM, ExponentialPower(), guide=guide, **{**TINY, "dense_g_z": dense_g_z}
    ).double()
    inference = model.inference
    gx = torch.randn(B, T, inference.gx_dim, dtype=torch.float64)
    gz = torch.randn(B, T, inference.rnn_gz.hidden_size, dtype=torch.float64)
    split = inference.posterior_from_parts(inference.x_part(gx), gz).base_dist
    whole = inference.posterior(gx, gz).base_dist
    torch.testing.assert_close(split.loc, whole.loc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(split.scale, whole.scale, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dense_g_z", [[], [7]])
@pytest.mark.parametrize("guide", ["causal", "noncausal"])
def test_sampling_loop_equals_the_concatenated_layer(guide, dense_g_z):
    """The guide's loop (RVAEInference.sampler: the frames of W^x g^x + b taken apart once,
    W^z g^z_t added per step) gives the loss and every parameter's gradient of a loop over
    the layer on [g^x_t, g^z_t] with g^x sliced per step, in float64: the same products summed
    in another order differ by rounding, ~1e-16 relative per operation over a few hundred
    operations; 1e-10 leaves ample room, while a wrong column or a lost bias moves them by
    ~1e-2. ``dense_g_z=[]``: the split layer is the Gaussian head's."""
    model = build_model(
        "rvae_causal", X_DIM, ExponentialPower(), guide=guide, **{**TINY, "dense_g_z": dense_g_z}
    ).double()
    inference = model.inference
    x = torch.rand(B, T, X_DIM, dtype=torch.float64)
    got = elbo_and_gradients(model, x, seed=8)

    def concatenated(gx):
        def step(t, z_prev, state):
            state = lstm_step(inference.rnn_gz, inference.mlp_z_gz(z_prev), state)
            return inference.posterior(gx[:, t], state[0]), state

        return step

    inference.sampler = concatenated
    expected = elbo_and_gradients(model, x, seed=8)
    assert_same_elbo_and_gradients(model, got, expected, rtol=1e-10, atol=1e-12)

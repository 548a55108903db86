import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from benchmarks.reference_rvae_dsae import reference_loss_dsae
from pyro_dvae import scan
from pyro_dvae.likelihoods import ExponentialPower, build_likelihood
from pyro_dvae.models import build_model
from tests.helpers import (
    assert_same_elbo_and_gradients,
    elbo_and_gradients,
    exponential_nll,
    gaussian_kl,
    gaussian_log_density,
)
from tests.models.by_hand import gaussian, lstm_cell, lstm_outputs
from tests.models.test_rvae import config_params, overfit, smooth_batch

TINY = dict(
    z_dim=3,
    v_dim=2,
    dense_x=[8],
    dim_rnn_gv=5,
    dense_gv_v=[4],
    dense_xv_gxv=[6],
    dim_rnn_gxv=5,
    dense_gxv_gz=[4],
    dim_rnn_gz=6,
    dim_rnn_prior=5,
    dense_vz_x=[7],
)
X_DIM, B, T = 10, 4, 6


@pytest.mark.parametrize(
    "modality,x_dim,count",
    [
        ("speech", 513, 1_650_241),
        ("motion", 96, 217_084),
    ],
)
def test_parameter_count_matches_spec(modality, x_dim, count):
    likelihood = build_likelihood(None, modality, x_dim)
    model = build_model("dsae", x_dim, likelihood, **config_params("dsae", modality))
    assert sum(p.numel() for p in model.parameters()) == count


def tanh_rnn_scan(rnn, xs):
    """States (B, T, H) of a one-layer tanh ``nn.RNN``, looping over t:
    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh)."""
    h, out = xs.new_zeros(xs.shape[0], rnn.hidden_size), []
    for t in range(xs.shape[1]):
        h = torch.tanh(
            xs[:, t] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
        )
        out.append(h)
    return torch.stack(out, 1)


def bidirectional(rnn, xs):
    return torch.cat(
        [lstm_outputs(rnn, xs), lstm_outputs(rnn, xs, reverse=True, suffix="_reverse")], -1
    )


def _by_hand(model, x, v, z):
    """q(v) params, q(z) and prior params along the sampled (v, z), and the decoder output."""
    inf, prior, dec = model.inference, model.prior, model.decoder
    phi = inf.mlp_x(x)
    states = bidirectional(inf.rnn_gv, phi)
    H = inf.rnn_gv.hidden_size
    gv = torch.cat([states[:, -1, :H], states[:, 0, H:]], -1)  # h→ after x_T, h← after x_1
    mv, sv = gaussian(inf.head_v, inf.mlp_gv_v(gv))
    v_t = v[:, None].expand(-1, x.shape[1], -1)
    gxv = bidirectional(inf.rnn_gxv, inf.mlp_xv_gxv(torch.cat([phi, v_t], -1)))
    mq, sq = gaussian(inf.head_z, tanh_rnn_scan(inf.rnn_gz, inf.mlp_gxv_gz(gxv)))
    h = c = x.new_zeros(x.shape[0], prior.rnn.hidden_size)
    z_prev, mp, sp = torch.zeros_like(z[:, 0]), [], []
    for t in range(x.shape[1]):
        h, c = lstm_cell(prior.rnn, z_prev, h, c)
        loc, scale = gaussian(prior.head, h)
        mp.append(loc)
        sp.append(scale)
        z_prev = z[:, t]
    y = dec.gen_out(dec.mlp_vz_x(torch.cat([v_t, z], -1)))
    return (mv, sv), (mq, sq, torch.stack(mp, 1), torch.stack(sp, 1)), y


def tiny(**options):
    return build_model("dsae", X_DIM, ExponentialPower(), **TINY, **options)


def sample_latents(model, x, seed):
    torch.manual_seed(seed)
    nodes = poutine.trace(model.guide).get_trace(x).nodes
    return nodes["v"]["value"], nodes["z"]["value"]


def mean_field_loss(model, x, kl_weight, seed):
    torch.manual_seed(seed)
    return TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, kl_weight)


def test_mean_field_loss_is_recon_plus_kl_z_plus_kl_v():
    model, x = tiny(), torch.rand(B, T, X_DIM)
    loss = mean_field_loss(model, x, 0.6, seed=3)
    (mv, sv), (mq, sq, mp, sp), y = _by_hand(model, x, *sample_latents(model, x, 3))
    kl_v = gaussian_kl(mv, sv, torch.zeros_like(mv), torch.ones_like(sv))
    expected = (exponential_nll(x, y) + 0.6 * (gaussian_kl(mq, sq, mp, sp) + kl_v)) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.kl_v(x).sum(), kl_v)


def test_trace_elbo_is_log_ratio_of_the_sampled_latents():
    model, x = tiny(), torch.rand(B, T, X_DIM)
    torch.manual_seed(4)
    loss = Trace_ELBO().differentiable_loss(model.model, model.guide, x)
    v, z = sample_latents(model, x, 4)
    (mv, sv), (mq, sq, mp, sp), y = _by_hand(model, x, v, z)
    log_ratio = (
        gaussian_log_density(v, mv, sv)
        - gaussian_log_density(v, 0 * v, 1 + 0 * v)
        + gaussian_log_density(z, mq, sq)
        - gaussian_log_density(z, mp, sp)
    )
    torch.testing.assert_close(
        loss, (exponential_nll(x, y) + log_ratio) / (B * T), rtol=1e-5, atol=1e-5
    )


def test_free_bits_floor_kl_v_per_sequence():
    model, x = tiny(), torch.rand(B, T, X_DIM)
    kl_v = model.kl_v(x).detach()
    floor = kl_v.median().item() + 1e-3  # some sequences below the floor, some above
    assert (kl_v < floor).any() and (kl_v > floor).any()
    free = tiny(kl_v_free_bits=floor)
    free.load_state_dict(model.state_dict())
    paper, floored = (mean_field_loss(m, x, 0.6, seed=8) for m in (model, free))
    shortfall = torch.relu(floor - kl_v).sum()
    torch.testing.assert_close(floored - paper, 0.6 * shortfall / (B * T), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean_field_loss(free, x, 0.0, 8), mean_field_loss(model, x, 0.0, 8))


@pytest.mark.parametrize("free_bits", [0.0, 1.0])
def test_reference_step_equals_pyro_loss(free_bits):
    model, x = tiny(kl_v_free_bits=free_bits), torch.rand(B, T, X_DIM)
    loss = mean_field_loss(model, x, 1.0, seed=9)
    torch.manual_seed(9)
    torch.testing.assert_close(reference_loss_dsae(model, x), loss, rtol=1e-5, atol=1e-5)


def test_v_is_sampled_before_z_in_guide_and_model():
    model, x = tiny(), torch.rand(B, T, X_DIM)
    guide_trace = poutine.trace(model.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x)
    for trace in (guide_trace, model_trace):
        names = [n for n, site in trace.nodes.items() if site["type"] == "sample"]
        assert names.index("v") < names.index("z")
    assert model_trace.nodes["v"]["value"].shape == (B, TINY["v_dim"])


def test_posterior_mean_path_and_generation():
    model, x = tiny(), torch.rand(2, 5, X_DIM)
    y = model.reconstruct(x)
    torch.testing.assert_close(model.reconstruct(x), y, rtol=0, atol=0)
    phi = model.inference.features(x)
    v, _ = model.inference.static(phi)
    z, _ = model.inference.dynamic(phi, v)
    torch.testing.assert_close(y, model.decoder(v, z))
    generated = model.generate(3, 8)
    assert generated.shape == (3, 8, X_DIM) and torch.isfinite(generated).all()


def test_single_guide_and_prior():
    with pytest.raises(ValueError, match="single guide"):
        tiny(guide="causal")
    with pytest.raises(ValueError, match="single prior"):
        tiny(prior="gated")
    with pytest.raises(ValueError, match="kl_v_free_bits"):
        tiny(kl_v_free_bits=-1.0)


def test_overfits_a_tiny_batch():
    first, last = overfit(tiny(), smooth_batch(B, T, X_DIM), steps=60)
    assert last < first / 2


def test_shared_phi_gates_equal_the_rnns_run_alone(monkeypatch):
    """One product for the φ projections of bi-LSTM_gv and bi-LSTM_gxv plus W^v v per sequence
    gives q(v) and q(z | v) of the RNNs run on φ and on [φ_t, v]; float64 (round-off ~1e-16
    per operation)."""
    model = build_model("dsae", X_DIM, ExponentialPower(), **{**TINY, "dense_xv_gxv": []})
    model = model.double()
    inference = model.inference
    phi = inference.features(torch.rand(B, T, X_DIM, dtype=torch.float64))
    assert inference.phi_gates(phi) is None  # a small step: torch's LSTMs are faster
    monkeypatch.setattr(scan, "SCAN_MIN_STEP_INPUT", B * phi.shape[-1])  # B·D of φ: reached
    gates = inference.phi_gates(phi)
    assert gates is not None
    v = torch.randn(B, 2, dtype=torch.float64)
    for shared, alone in [
        (inference.static(phi, gates), inference.static(phi)),
        (inference.dynamic(phi, v, gates), inference.dynamic(phi, v)),
    ]:
        for s, a in zip(shared, alone, strict=True):
            torch.testing.assert_close(s, a, rtol=1e-12, atol=1e-12)
    assert tiny().inference.phi_gates(phi.float()) is None  # MLP_xvgxv in between: not shared


def test_shared_phi_gates_give_the_loss_and_gradients_of_the_rnns_run_alone(monkeypatch):
    """The guide with the φ projections of both bi-LSTMs from one time-major copy of φ, W^v v
    once per sequence and the scans (DSAEInference.phi_gates) gives the loss and every
    parameter's gradient of nn.LSTM run on φ and on [φ_t, v], in float64: the same products
    summed in another order differ by rounding, ~1e-16 relative per operation over a few
    hundred operations; 1e-10 leaves ample room, while a wrong column, gate or direction moves
    them by ~1e-2."""
    model = build_model("dsae", X_DIM, ExponentialPower(), **{**TINY, "dense_xv_gxv": []})
    model = model.double()
    x = torch.rand(B, T, X_DIM, dtype=torch.float64)
    monkeypatch.setattr(scan, "SCAN_MIN_STEP_INPUT", 0)  # the tiny batch takes the scans too
    assert model.inference.phi_gates(model.inference.features(x)) is not None
    got = elbo_and_gradients(model, x, seed=8)
    model.inference.phi_gates = lambda phi: None
    expected = elbo_and_gradients(model, x, seed=8)
    assert_same_elbo_and_gradients(model, got, expected, rtol=1e-10, atol=1e-12)

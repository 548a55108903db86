import math

import pytest
import torch
from pyro import poutine
from pyro.distributions.transforms import AffineAutoregressive
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_dvae.likelihoods import ExponentialPower, build_likelihood
from pyro_dvae.models import build_model
from pyro_dvae.nn import shift
from tests.helpers import (
    assert_same_elbo_and_gradients,
    elbo_and_gradients,
    exponential_nll,
    gaussian_kl,
    gaussian_log_density,
)

SPEECH = dict(
    z_dim=16,
    dense_x_gx=[256],
    dim_rnn_gx=128,
    dense_ztm1_g=[32],
    dense_g_z=[32],
    dense_z_x=[32, 64, 128, 256],
)
MOTION = dict(
    z_dim=10, dense_x_gx=[64], dim_rnn_gx=64, dense_ztm1_g=[16], dense_g_z=[32], dense_z_x=[32, 64]
)
TINY = dict(z_dim=3, dense_x_gx=[8], dim_rnn_gx=6, dense_ztm1_g=[4], dense_g_z=[5], dense_z_x=[7])


@pytest.mark.parametrize(
    "modality,x_dim,params,count",
    [
        ("speech", 513, SPEECH, 516_641),
        ("motion", 96, MOTION, 52_856),
    ],
)
def test_parameter_count_matches_spec(modality, x_dim, params, count):
    model = build_model("dkf", x_dim, build_likelihood(None, modality, x_dim), **params)
    assert sum(p.numel() for p in model.parameters()) == count


def _transition_by_hand(tr, z_prev):
    """(μ, σ) of p(z_t | z_{t−1}): the gated transition's equations, or the linear one's."""
    if hasattr(tr, "linear"):
        return tr.linear(z_prev), tr.log_scale.exp().expand_as(z_prev)
    gate = torch.sigmoid(tr.gate_out(torch.relu(tr.gate_hidden(z_prev))))
    prop = tr.prop_out(torch.relu(tr.prop_hidden(z_prev)))
    loc = (1 - gate) * tr.loc_linear(z_prev) + gate * prop
    return loc, torch.nn.functional.softplus(tr.var_linear(torch.relu(prop))).sqrt()


def _initial_state(rnn, h_0, B):
    """The guide RNN's initial state: 0, or h_0 (H,) for every sequence (an LSTM's c_0 = 0)."""
    if h_0 is None:
        return None
    h = h_0.expand(1, B, -1).contiguous()
    return (h, torch.zeros_like(h)) if isinstance(rnn, torch.nn.LSTM) else h


def _by_hand(model, x, z):
    """Networks' outputs along the sampled trajectory, step by step as on paper, from the
    initial states z_0 (prior), z_q_0 and h_0 (guide): 0, or the learned ones."""
    inf = model.inference
    h = inf.mlp_x_gx(x)
    if inf.bidirectional:
        out = inf.rnn_gx(h)[0]
        H = out.shape[-1] // 2
        gx, n_terms = out[..., :H] + out[..., H:], 3
    else:
        state = _initial_state(inf.rnn_gx, inf.h_0, x.shape[0])
        gx, n_terms = inf.rnn_gx(h.flip(1), state)[0].flip(1), 2
    mq, sq, mp, sp = [], [], [], []
    zero = torch.zeros_like(z[:, 0])
    q_prev = zero if inf.z_q_0 is None else inf.z_q_0.expand_as(zero)
    p_prev = zero if model.prior.z_0 is None else model.prior.z_0.expand_as(zero)
    for t in range(x.shape[1]):
        g = (inf.mlp_ztm1_g(q_prev) + gx[:, t]) / n_terms
        loc, s = inf.head.linear(inf.mlp_g_z(g)).chunk(2, -1)
        mq.append(loc)
        softplus = torch.nn.functional.softplus(s)
        scales = {"exp": torch.exp(0.5 * s), "softplus": softplus, "sqrt_softplus": softplus.sqrt()}
        sq.append(scales[inf.head.scale])
        ploc, pscale = _transition_by_hand(model.prior, p_prev)
        mp.append(ploc)
        sp.append(pscale)
        q_prev = p_prev = z[:, t]
    return [torch.stack(v, 1) for v in (mq, sq, mp, sp)], model.decoder(z)


def _mean_field_loss_by_hand(**choices):
    """TraceMeanField_ELBO loss (KL weight 0.6) of a tiny DKF on x (4, 6, 10), with the guide's
    draw z and the hand-written step outputs along it. Learned initial states are drawn at
    random (they start at 0, where a missing one would go unnoticed)."""
    model = build_model("dkf", 10, ExponentialPower(), **choices, **TINY)
    with torch.no_grad():
        for initial in (model.prior.z_0, model.inference.z_q_0, model.inference.h_0):
            if initial is not None:
                initial.normal_()
    x = torch.rand(4, 6, 10)
    torch.manual_seed(3)
    loss = TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, 0.6)
    torch.manual_seed(3)
    z = poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
    return (loss, x, z, *_by_hand(model, x, z))


@pytest.mark.parametrize("guide", ["dks", "st_lr"])
@pytest.mark.parametrize("prior", ["gated", "linear"])
def test_mean_field_loss_is_recon_plus_stepwise_kl(guide, prior):
    B, T = 4, 6
    loss, x, z, (mq, sq, mp, sp), y = _mean_field_loss_by_hand(guide=guide, prior=prior)
    expected = (exponential_nll(x, y) + 0.6 * gaussian_kl(mq, sq, mp, sp)) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rnn", ["lstm", "relu"])
@pytest.mark.parametrize("prior", ["gated", "linear"])
def test_pyros_learned_initial_states_and_softplus_scale(rnn, prior):
    """learn_initial=true, guide_scale=softplus (Pyro's DMM): the loss is the hand-written one
    with p(z_1 | z_0), q(z_1 | z_q_0, g^x_1), the backward RNN started from h_0 (each drawn at
    random) and σ_q = softplus; the gradient reaches all three initial states."""
    B, T = 4, 6
    options = dict(rnn=rnn, prior=prior, learn_initial=True, guide_scale="softplus")
    loss, x, z, (mq, sq, mp, sp), y = _mean_field_loss_by_hand(**options)
    expected = (exponential_nll(x, y) + 0.6 * gaussian_kl(mq, sq, mp, sp)) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    model = build_model("dkf", 10, ExponentialPower(), **options, **TINY)
    TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x).backward()
    for initial in (model.prior.z_0, model.inference.z_q_0, model.inference.h_0):
        assert initial.grad is not None and initial.grad.abs().sum() > 0


def test_the_dmm_authors_guide_options():
    """guide_scale=sqrt_softplus (σ_q² = softplus, the DMM authors'): the loss is the
    hand-written one; input_activation=relu makes the MLP before the RNN ReLU while the
    combiner's stays tanh."""
    B, T = 4, 6
    options = dict(guide_scale="sqrt_softplus", input_activation="relu")
    loss, x, z, (mq, sq, mp, sp), y = _mean_field_loss_by_hand(**options)
    expected = (exponential_nll(x, y) + 0.6 * gaussian_kl(mq, sq, mp, sp)) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    inference = build_model("dkf", 10, ExponentialPower(), **options, **TINY).inference
    assert (inference.mlp_x_gx.activation, inference.mlp_ztm1_g.activation) == ("relu", "tanh")
    with pytest.raises(ValueError, match=r"model\.<modality>\.input_activation='elu'"):
        build_model("dkf", 10, ExponentialPower(), input_activation="elu", **TINY)


def test_rnn_dropout_acts_on_the_summary_while_training_only():
    """rnn_dropout=0.5: in eval mode g^x is that of the same weights without dropout; in train
    mode each element is 0 or twice that, about half of them 0 (144 elements: 5 binomial
    standard deviations are ±0.21)."""
    model = build_model("dkf", 10, ExponentialPower(), rnn_dropout=0.5, **TINY).eval()
    plain = build_model("dkf", 10, ExponentialPower(), **TINY).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.rand(4, 6, 10)
    clean = model.inference.summary(x)
    torch.testing.assert_close(clean, plain.inference.summary(x), rtol=0, atol=0)
    model.train()
    torch.manual_seed(0)
    noisy = model.inference.summary(x)
    kept = noisy != 0
    torch.testing.assert_close(noisy, torch.where(kept, 2 * clean, 0.0), rtol=1e-6, atol=0)
    assert abs(kept.double().mean().item() - 0.5) < 0.21
    with pytest.raises(ValueError, match=r"model\.<modality>\.rnn_dropout=1\.0: expected"):
        build_model("dkf", 10, ExponentialPower(), rnn_dropout=1.0, **TINY)


def test_trace_elbo_is_log_ratio_of_the_sampled_trajectory():
    x_dim, B, T = 10, 4, 6
    model = build_model("dkf", x_dim, ExponentialPower(), **TINY)
    x = torch.rand(B, T, x_dim)
    torch.manual_seed(4)
    loss = Trace_ELBO().differentiable_loss(model.model, model.guide, x)
    torch.manual_seed(4)
    z = poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
    (mq, sq, mp, sp), y = _by_hand(model, x, z)
    log_ratio = gaussian_log_density(z, mq, sq) - gaussian_log_density(z, mp, sp)
    expected = (exponential_nll(x, y) + log_ratio) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "guide,dense_g_z,options",
    [
        ("dks", [5], {}),
        ("st_lr", [5], {}),
        ("dks", [], {}),
        ("iaf", [5], {}),
        ("dks", [], {"guide_scale": "softplus", "learn_initial": True}),
    ],
)
def test_split_combiner_step_equals_the_averaged_summary(guide, dense_g_z, options):
    """The guide's step with the layer after the average split, (W/n) MLP(z_{t−1}) + ((W/n) g^x_t
    + b) with the g^x share computed for all t (DKFInference.sampler), gives the loss and every
    parameter's gradient of the step on the average (MLP(z_{t−1}) + g^x_t) / n, in float64: the
    same products and sums in another order differ by rounding, ~1e-16 relative per operation
    over a few hundred operations; 1e-10 leaves ample room, while a wrong n or a lost bias moves
    them by ~1e-2. ``dense_g_z=[]``: the split layer is the Gaussian head's (its σ exp or
    softplus); ``iaf``: the step's Gaussian goes through the flows."""
    model = build_model(
        "dkf", 10, ExponentialPower(), guide=guide, **{**TINY, "dense_g_z": dense_g_z, **options}
    )
    model = model.double()
    if model.inference.z_q_0 is not None:
        torch.nn.init.normal_(model.inference.z_q_0)
    inf = model.inference
    x = torch.rand(4, 6, 10, dtype=torch.float64)
    got = elbo_and_gradients(model, x, seed=9)
    inf.sampler = lambda gx: lambda t, z_prev, state: (inf.combine(z_prev, gx[:, t]), None)
    expected = elbo_and_gradients(model, x, seed=9)
    assert_same_elbo_and_gradients(model, got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("prior", ["gated", "linear"])
def test_transition_equations(prior):
    model = build_model("dkf", 10, ExponentialPower(), prior=prior, **TINY)
    z = torch.randn(5, 3)
    step = model.prior(z)
    loc, scale = _transition_by_hand(model.prior, z)
    torch.testing.assert_close(step.mean, loc)
    torch.testing.assert_close(step.variance, scale**2, rtol=1e-5, atol=1e-8)
    assert step.event_shape == (3,) and step.batch_shape == (5,)


@pytest.mark.parametrize("guide", ["dks", "st_lr"])
def test_posterior_mean_path(guide):
    """z_t = E[z_t | z_{<t}] fed forward: the fixed point of T passes of the hand-written
    step equations (pass k fixes step k)."""
    model = build_model("dkf", 10, ExponentialPower(), guide=guide, **TINY)
    x = torch.rand(2, 5, 10)
    z = torch.zeros(2, 5, 3)
    for _ in range(5):
        z = _by_hand(model, x, z)[0][0]
    assert z.abs().sum() > 0
    torch.testing.assert_close(model.reconstruct(x), _by_hand(model, x, z)[1])


@pytest.mark.parametrize("learn_initial", [False, True])
def test_generation_is_ancestral_sampling_by_hand(learn_initial):
    """z_t = μ(z_{t−1}) + σ(z_{t−1}) ε_t with ε_t drawn one step at a time, from z_0 = 0 or the
    learned z_0 (drawn at random); x̂ = exp(decoder(z))."""
    model = build_model("dkf", 10, ExponentialPower(), learn_initial=learn_initial, **TINY)
    z_0 = torch.zeros(3) if not learn_initial else torch.nn.init.normal_(model.prior.z_0)
    torch.manual_seed(11)
    generated = model.generate(3, 8)
    torch.manual_seed(11)
    z_prev, zs = z_0.expand(3, 3), []
    for _ in range(8):
        loc, scale = _transition_by_hand(model.prior, z_prev)
        z_prev = loc + scale * torch.randn(3, 3)
        zs.append(z_prev)
    torch.testing.assert_close(generated, torch.exp(model.decoder(torch.stack(zs, 1))))
    assert torch.equal(shift(torch.ones(1, 2, 1))[:, 0], torch.zeros(1, 1))


def test_unknown_guide_and_prior_are_clear_errors():
    with pytest.raises(ValueError, match="guide.name='smoother'"):
        build_model("dkf", 10, ExponentialPower(), guide="smoother", **TINY)
    with pytest.raises(ValueError, match="prior.name='lstm'"):
        build_model("dkf", 10, ExponentialPower(), prior="lstm", **TINY)


def test_student_t_prior_falls_back_to_the_sampled_log_ratio():
    """No KL(Normal ‖ Student-t) is registered: TraceMeanField_ELBO scores the prior with
    log q(z) − log p(z) of the guide's draw; p is the Student-t density written out."""
    B, T = 4, 6
    loss, x, z, (mq, sq, mp, sp), y = _mean_field_loss_by_hand(prior="student_t")
    nu = torch.tensor(5.0)  # the initial degrees of freedom
    u = (z - mp) / sp
    log_p = (
        torch.lgamma((nu + 1) / 2)
        - torch.lgamma(nu / 2)
        - 0.5 * torch.log(nu * math.pi)
        - torch.log(sp)
        - (nu + 1) / 2 * torch.log1p(u**2 / nu)
    ).sum()
    expected = (exponential_nll(x, y) + 0.6 * (gaussian_log_density(z, mq, sq) - log_p)) / (B * T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


# --- Pyro's DMM options: ReLU RNN, decoder activation, gated-transition options, IAF guide ------


@pytest.fixture
def float64():
    """Build and run in float64, so that hand-written and library numbers agree to ~1e-12."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("learn_initial", [False, True])
def test_relu_rnn_guide_runs_the_elman_recursion_backward_within_each_sequence(
    float64, learn_initial
):
    """rnn=relu: g^x_t = relu(W_ih u_t + b_ih + W_hh g^x_{t+1} + b_hh), g^x_{L_b+1} = 0 (or the
    learned h_0, drawn at random), with u = MLP(x), from each sequence's own last step in a
    padded batch (padding set to 50)."""
    model = build_model(
        "dkf", 10, ExponentialPower(), rnn="relu", learn_initial=learn_initial, **TINY
    )
    inference, lengths = model.inference, [5, 2, 4]
    h_0 = torch.zeros(6) if inference.h_0 is None else torch.nn.init.normal_(inference.h_0)
    rnn = inference.rnn_gx
    x = torch.rand(3, 5, 10)
    mask = torch.arange(5) < torch.tensor(lengths)[:, None]
    x[~mask] = 50.0
    with model.step_mask(mask):
        gx = inference.summary(x)
    for b, length in enumerate(lengths):
        u, h = inference.mlp_x_gx(x[b, :length]), h_0
        for t in reversed(range(length)):
            h = torch.relu(
                rnn.weight_ih_l0 @ u[t] + rnn.bias_ih_l0 + rnn.weight_hh_l0 @ h + rnn.bias_hh_l0
            )
            torch.testing.assert_close(gx[b, t], h)


def test_the_decoder_has_its_own_activation():
    """decoder_activation=relu with activation=tanh: y = W2 relu(W1 z + b1) + b2, while the
    combiner's z_{t−1} layer stays tanh; without it the decoder takes ``activation``."""
    model = build_model(
        "dkf", 10, ExponentialPower(), activation="tanh", decoder_activation="relu", **TINY
    )
    z = torch.randn(4, 3)
    (hidden, _), out = model.decoder
    torch.testing.assert_close(model.decoder(z), out(torch.relu(hidden(z))))
    assert isinstance(model.inference.mlp_ztm1_g[1], torch.nn.Tanh)
    tanh = build_model("dkf", 10, ExponentialPower(), activation="tanh", **TINY)
    (hidden, _), out = tanh.decoder
    torch.testing.assert_close(tanh.decoder(z), out(torch.tanh(hidden(z))))


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(prior_options={"hiden": 3}), r"prior.options=\{'hiden': 3\}: not options of prior"),
        (dict(prior_options={"hidden": 0}), "prior.options.hidden=0: expected null"),
        (dict(prior_options={"scale": "exp"}), "prior.options.scale='exp': expected one of"),
        (dict(prior_options={"loc_init": "eye"}), "prior.options.loc_init='eye': expected"),
        (dict(prior="linear", prior_options={"hidden": 3}), "not options of prior 'linear'"),
        (dict(rnn="gru"), r"model.<modality>.rnn='gru': expected one of \['lstm', 'relu'"),
        (dict(decoder_activation="elu"), "model.<modality>.decoder_activation='elu'"),
        (dict(guide="iaf", iaf_flows=0), "model.<modality>.iaf_flows=0: expected an integer"),
        (dict(learn_initial="yes"), "model.<modality>.learn_initial='yes': expected a bool"),
        (dict(guide_scale="abs"), r"model.<modality>.guide_scale='abs': expected one of \['exp'"),
        (dict(guide="st_lr", learn_initial=True), "learn_initial=true: not with a bidirectional"),
    ],
)
def test_bad_dmm_options_name_their_key(options, message):
    with pytest.raises(ValueError, match=message):
        build_model("dkf", 10, ExponentialPower(), **{**TINY, **options})


def test_prior_options_for_a_model_without_them_are_refused():
    with pytest.raises(ValueError, match=r"prior.options=\{'hidden': 3\}: model 'vae' has no"):
        build_model("vae", 10, ExponentialPower(), prior_options={"hidden": 3}, z_dim=3,
                    dense_x_z=[4])  # fmt: skip


def _iaf_draw_by_hand(model, x, seed):
    """The IAF guide's draw with the noise of ``seed``, step by step as on paper: u ~ N(μ_t,
    σ_t²) from the combiner, z_t = f_2(f_1(u)), f_k(v) = v ⊙ exp(s_k(v)) + m_k(v); and
    log q(z_t | ·) = log N(u; μ_t, σ_t²) − Σ_k Σ_l s_k(·)_l. Returns z (B, T, L), log q (B, T)."""
    inference = model.inference
    torch.manual_seed(seed)
    gx = inference.summary(x)
    z_prev, zs, log_qs = torch.zeros(x.shape[0], 3), [], []
    for t in range(x.shape[1]):
        g = (inference.mlp_ztm1_g(z_prev) + gx[:, t]) / 2
        loc, logvar = inference.head.linear(inference.mlp_g_z(g)).chunk(2, -1)
        scale = torch.exp(0.5 * logvar)
        v = loc + scale * torch.randn_like(loc)
        log_q = -0.5 * ((v - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)
        log_q = log_q.sum(-1)
        for flow in inference.flows:
            m, s = flow.arn(v)
            assert s.abs().max() < 3  # inside the flow's clamp [-5, 3]: no clipping to write
            v = v * s.exp() + m
            log_q = log_q - s.sum(-1)
        zs.append(v)
        log_qs.append(log_q)
        z_prev = v
    return torch.stack(zs, 1), torch.stack(log_qs, 1)


def _iaf_model():
    return build_model("dkf", 10, ExponentialPower(), guide="iaf", iaf_hidden=9, **TINY)


def test_iaf_guide_log_q_is_the_change_of_variables_formula(float64):
    """The guide's draw and its log q (scored as drawn, through the flows' cache) are the
    formula's; so is log q of the same values scored afresh (the flows inverted)."""
    model, x = _iaf_model(), torch.rand(4, 6, 10)
    assert len(model.inference.flows) == 2
    torch.manual_seed(5)
    site = poutine.trace(model.guide).get_trace(x).nodes["z"]
    z, log_q = _iaf_draw_by_hand(model, x, seed=5)
    torch.testing.assert_close(site["value"], z)
    torch.testing.assert_close(site["fn"].log_prob(site["value"]), log_q.sum(-1))
    torch.testing.assert_close(site["fn"].log_prob(site["value"].clone()), log_q.sum(-1))


@pytest.mark.parametrize("elbo", [TraceMeanField_ELBO(), Trace_ELBO()], ids=["mean_field", "trace"])
def test_iaf_elbo_scores_the_prior_with_the_sampled_log_ratio(float64, elbo):
    """No KL between a flow and the Gaussian transition: both ELBOs take log q(z) − log p(z) of
    the guide's draw (KL weight 0.6), per frame."""
    B, T = 4, 6
    model, x = _iaf_model(), torch.rand(B, T, 10)
    torch.manual_seed(5)
    loss = elbo.differentiable_loss(model.model, model.guide, x, 0.6)
    z, log_q = _iaf_draw_by_hand(model, x, seed=5)
    mp, sp = _transition_by_hand(model.prior, shift(z))
    log_ratio = log_q.sum() - gaussian_log_density(z, mp, sp)
    expected = (exponential_nll(x, model.decoder(z)) + 0.6 * log_ratio) / (B * T)
    torch.testing.assert_close(loss, expected)


def test_the_iaf_guides_own_draw_is_scored_without_inverting_the_flows(monkeypatch):
    """The walk scores each step as it is drawn, from the flows' cache: an autoregressive
    flow's inverse (L sequential passes of its MADE) is never needed for the guide's draw."""
    model, x = _iaf_model(), torch.rand(4, 6, 10)
    site = poutine.trace(model.guide).get_trace(x).nodes["z"]

    def no_inverse(self, y):
        raise AssertionError("the flow was inverted")

    monkeypatch.setattr(AffineAutoregressive, "_inverse", no_inverse)
    assert site["fn"].log_prob(site["value"]).isfinite().all()
    with pytest.raises(AssertionError, match="inverted"):  # a value not drawn: inverted
        site["fn"].log_prob(site["value"].clone())

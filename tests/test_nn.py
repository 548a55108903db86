import math

import pytest
import torch
from torch import nn

from pyro_dvae.likelihoods import build_likelihood
from pyro_dvae.models import build_model
from pyro_dvae.models.priors import GatedTransition
from pyro_dvae.nn import (
    MIN_ROWS,
    MLP,
    GaussianHead,
    OutputLinear,
    activation_class,
    final_state,
    full_precision,
    identical_copies,
    initialise,
    lstm,
    lstm_cell,
    lstm_step,
    recurrent,
    run_rnn,
    run_rnn_fast,
    sequence_lengths,
)


def test_mlp_applies_the_activation_after_every_layer():
    mlp = MLP(3, [4, 2], "tanh")
    x = torch.randn(5, 3)
    first, second = mlp[0], mlp[2]
    expected = torch.tanh(second(torch.tanh(first(x))))
    torch.testing.assert_close(mlp(x), expected)
    assert mlp.out_dim == 2 and len(MLP(3, [])) == 0


def test_an_unknown_activation_names_the_key():
    with pytest.raises(ValueError, match=r"^model\.<modality>\.activation='gelu': expected one "):
        MLP(3, [4], "gelu")
    with pytest.raises(ValueError, match=r"^model\.<modality>\.decoder_activation='elu': "):
        activation_class("elu", "model.<modality>.decoder_activation")


def test_glorot_redraws_only_mlp_layers_with_the_activation_gain():
    torch.manual_seed(0)
    net = nn.ModuleDict({"mlp": MLP(200, [300], "tanh"), "head": GaussianHead(300, 4)})
    head_before = net["head"].linear.weight.clone()
    initialise(net, "glorot")
    layer = net["mlp"][0]
    bound = 5 / 3 * math.sqrt(6 / (200 + 300))  # tanh gain 5/3
    assert layer.weight.abs().max() <= bound
    # uniform on ±bound: std = bound/√3 (60,000 draws)
    assert abs(layer.weight.std().item() - bound / math.sqrt(3)) < 0.01 * bound
    assert torch.count_nonzero(layer.bias) == 0
    torch.testing.assert_close(net["head"].linear.weight, head_before)


def test_dmm_authors_init_is_their_uniform_orthogonal_and_laplace_draws():
    torch.manual_seed(0)
    H = 100
    net = nn.ModuleDict(
        {
            "mlp": MLP(200, [300], "relu"),
            "lstm": nn.LSTM(88, H, batch_first=True),
            "rnn": nn.RNN(6, 5),
            "transition": GatedTransition(4, hidden=8, loc_init="identity"),
        }
    )
    initialise(net, "dmm_authors")
    layer = net["mlp"][0]
    for p in (layer.weight, net["lstm"].weight_ih_l0, *net["rnn"].parameters()):
        assert p.abs().max() <= 0.1
    # U(-0.1, 0.1): std 0.1/√3; 60,000 draws give it to well under 1 %
    assert abs(layer.weight.std().item() - 0.1 / math.sqrt(3)) < 0.01 * 0.1
    assert layer.bias.abs().max() <= 0.1 and torch.count_nonzero(layer.bias) == 300
    for block in net["lstm"].weight_hh_l0.detach().double().chunk(4):
        # float32 entries: Q Qᵀ = I to H·eps ≈ 1e-5 (a U(±0.1) block has diagonal ≈ 0.33)
        eye = torch.eye(H, dtype=torch.float64)
        torch.testing.assert_close(block @ block.T, eye, atol=1e-4, rtol=0)
    # Laplace(0, 1): E|b| = 1 and sd |b| = 1, so 4H = 400 draws give the mean to ±0.05 (1 sd)
    assert abs(net["lstm"].bias_ih_l0.abs().mean().item() - 1) < 0.25
    assert torch.count_nonzero(net["lstm"].bias_hh_l0) == 0
    loc = net["transition"].loc_linear  # W_μ = I belongs to the transition: kept
    torch.testing.assert_close(loc.weight, torch.eye(4))
    assert torch.count_nonzero(loc.bias) == 0
    assert net["transition"].gate_hidden.weight.abs().max() <= 0.1


def test_torch_init_is_untouched_and_unknown_scheme_names_the_key():
    torch.manual_seed(0)
    mlp = MLP(3, [4])
    before = mlp[0].weight.clone()
    initialise(mlp, "torch")
    torch.testing.assert_close(mlp[0].weight, before)
    with pytest.raises(ValueError, match="model.init='he'"):
        initialise(mlp, "he")


def test_glorot_keeps_the_deep_dkf_decoder_sensitive_to_z():
    """Over z ~ N(0, I) the paper's decoder output barely moves under the default init."""
    spread = {}
    for init in ("torch", "glorot"):
        torch.manual_seed(0)
        likelihood = build_likelihood(None, "speech", 513)
        model = build_model("dkf", 513, likelihood, init=init, z_dim=16)
        with torch.no_grad():
            spread[init] = model.decoder(torch.randn(2000, 16)).std(0).mean().item()
    assert spread["torch"] < 0.1 < 0.2 < spread["glorot"]


LENGTHS = [5, 2, 4]


@pytest.mark.parametrize(
    "bidirectional,backward", [(False, True), (True, False), (True, True), (False, False)]
)
def test_rnn_over_padded_sequences_equals_each_sequence_alone(bidirectional, backward):
    """Under sequence_lengths, every valid output step and the final states of a padded batch
    are those of the sequence run on its own: no direction reads the padding."""
    rnn = lstm(3, 4, bidirectional)
    x = torch.randn(3, 5, 3)
    mask = torch.arange(5) < torch.tensor(LENGTHS)[:, None]
    x[~mask] = 50.0
    with sequence_lengths(mask):
        padded, state = run_rnn(rnn, x, backward), final_state(rnn, x)
    for b, length in enumerate(LENGTHS):
        alone = x[b : b + 1, :length]
        torch.testing.assert_close(padded[b : b + 1, :length], run_rnn(rnn, alone, backward))
        torch.testing.assert_close(state[:, b : b + 1], final_state(rnn, alone))
    assert padded.isfinite().all()


@pytest.fixture
def rnn_batches(monkeypatch):
    """The batch sizes the RNN helpers of pyro_dvae.nn run their RNNs on, in call order."""
    import pyro_dvae.nn as nn_module

    seen, active = [], nn_module._active_lengths

    def spy(x):
        seen.append(x.shape[0])
        return active(x)

    monkeypatch.setattr(nn_module, "_active_lengths", spy)
    return seen


COPIES = [
    (lambda rnn, x: run_rnn(rnn, x, backward=True), "lstm", False),
    (lambda rnn, x: run_rnn(rnn, x, h_0=torch.ones(4, dtype=x.dtype)), "relu", False),
    (lambda rnn, x: run_rnn_fast(rnn, x), "lstm", True),
    (run_rnn, "tanh", True),
    (final_state, "lstm", True),
]


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("run,kind,bidirectional", COPIES)
def test_an_rnn_over_k_copies_runs_once_and_repeats_its_outputs(
    rnn_batches, run, kind, bidirectional, padded
):
    """identical_copies(k) without gradients: an RNN over k stacked copies of a batch (and of
    its mask) runs on the first copy only, and its outputs are those of the whole batch."""
    rnn = recurrent(kind, 3, 4, bidirectional).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64).repeat(3, 1, 1)
    mask = (torch.arange(5) < torch.tensor([5, 3])[:, None]).repeat(3, 1) if padded else None
    with torch.no_grad(), sequence_lengths(mask):
        whole = run(rnn, x)
        whole_batches = rnn_batches.copy()
        with identical_copies(3):
            once = run(rnn, x)
    assert set(whole_batches) == {6} and set(rnn_batches[len(whole_batches) :]) == {2}
    torch.testing.assert_close(once, whole, rtol=1e-12, atol=1e-12)  # float64: rounding only


@pytest.mark.parametrize("case", ["different rows", "gradients", "dropout", "mask differs"])
def test_an_rnn_runs_on_the_whole_batch_unless_it_is_copies_without_gradients(rnn_batches, case):
    """Inputs that differ between the copies (they depend on z), a step that records gradients
    (training), an RNN with dropout in force, or masks that are not copies: no shortcut."""
    rnn = nn.LSTM(3, 4, num_layers=2, batch_first=True, dropout=0.5 if case == "dropout" else 0)
    rnn.train(case == "dropout")
    x = torch.randn(2, 5, 3).repeat(3, 1, 1)
    mask = (torch.arange(5) < torch.tensor([5, 3])[:, None]).repeat(3, 1)
    if case == "different rows":
        x[4, 2, 1] += 1.0
    if case == "mask differs":
        mask[4, 4:] = False  # a copy of the first sequence, one step shorter
    with torch.set_grad_enabled(case == "gradients"), identical_copies(3):
        with sequence_lengths(mask if case == "mask differs" else None):
            run_rnn(rnn, x) if case != "mask differs" else final_state(lstm(3, 4), x)
    assert rnn_batches == [6]


def test_backward_rnn_without_lengths_summarises_the_future():
    rnn, x = lstm(3, 4), torch.randn(2, 5, 3)
    torch.testing.assert_close(run_rnn(rnn, x, backward=True), rnn(x.flip(1))[0].flip(1))


@pytest.mark.parametrize("mask", [[[True, False, True]], [[False, False, False]], [True, False]])
def test_a_mask_with_holes_or_no_valid_step_is_a_clear_error(mask):
    with pytest.raises(ValueError, match="padding at the end"):
        with sequence_lengths(torch.tensor(mask)):
            pass


def test_lengths_for_another_batch_name_both_shapes():
    with sequence_lengths(torch.ones(2, 4, dtype=torch.bool)):
        with pytest.raises(ValueError, match=r"2 sequences of up to 4 steps.*\(3, 4, 3\)"):
            run_rnn(lstm(3, 4), torch.randn(3, 4, 3))


def test_output_linear_pads_its_rows_and_equals_linear_in_value_and_gradient():
    torch.manual_seed(0)
    layer = OutputLinear(7, 21).double()
    h = torch.randn(4, MIN_ROWS // 4, 7, dtype=torch.float64, requires_grad=True)
    y = layer(h)
    assert y.shape == (4, MIN_ROWS // 4, 21) and y.stride() == (MIN_ROWS // 4 * 32, 32, 1)
    expected = nn.functional.linear(h, layer.weight, layer.bias)
    # float64 sums of 7 products in another order: within a few ulp of values of size ~3
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-14)
    dy = torch.randn_like(y)
    inputs = (h, layer.weight, layer.bias)
    got = torch.autograd.grad(y, inputs, dy)
    for g, e in zip(got, torch.autograd.grad(expected, inputs, dy), strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)  # sums of up to 1,024 terms


def test_output_linear_stays_plain_where_padding_does_not_pay():
    layer = OutputLinear(7, 21)
    few_rows = layer(torch.randn(MIN_ROWS - 1, 7))
    aligned = OutputLinear(7, 32)(torch.randn(MIN_ROWS, 7))
    assert few_rows.is_contiguous() and aligned.is_contiguous()


@pytest.mark.parametrize("first_step", [False, True])
def test_lstm_step_equals_torchs_lstm_cell_in_value_and_gradient(first_step):
    torch.manual_seed(0)
    rnn = lstm(5, 4).double()
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    state = None if first_step else tuple(torch.randn(2, 3, 4, dtype=torch.float64))
    h, c = lstm_step(rnn, x, state)
    zeros = torch.zeros(3, 4, dtype=torch.float64)
    weights = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
    h_ref, c_ref = torch.lstm_cell(x, state or (zeros, zeros), *weights)
    # float64: the same cell, its gates summed in another order (two products, not one), a few
    # ulp of 1; the gradients sum ≤ 16 terms of size ~1 through it: 1e-13 leaves a margin.
    torch.testing.assert_close((h, c), (h_ref, c_ref), rtol=0, atol=1e-14)
    d_h, d_c = torch.randn(2, 3, 4, dtype=torch.float64)
    for kept in ((0, 1), (0,), (1,)):  # both gradients, or one of them None
        outputs, ref, seeds = (
            [pair[k] for k in kept] for pair in ((h, c), (h_ref, c_ref), (d_h, d_c))
        )
        got = torch.autograd.grad(
            outputs, (x, *weights), seeds, retain_graph=True, materialize_grads=True
        )  # W_hh unused at the first step: a zero gradient
        expected = torch.autograd.grad(ref, (x, *weights), seeds, retain_graph=True)
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=0, atol=1e-13)


def test_lstm_cell_keeps_its_state_in_float32_under_autocast():
    """Under ``train.precision=bfloat16`` the gates' products are bfloat16, the cell's
    arithmetic float32: h and c are the cell of the gates lifted to float32, bit for bit."""
    torch.manual_seed(0)
    gates, c = torch.randn(3, 16).bfloat16(), torch.randn(3, 4)
    with torch.autocast("cpu", torch.bfloat16):
        h, c_next = lstm_cell(gates, c)
    assert h.dtype == c_next.dtype == torch.float32
    torch.testing.assert_close((h, c_next), lstm_cell(gates.float(), c), rtol=0, atol=0)


def test_full_precision_lifts_only_autocasts_low_precision_outputs():
    h, w = torch.randn(4, 3), torch.randn(2, 3)
    assert full_precision(h) is h
    with torch.autocast("cpu", torch.bfloat16):
        y = h @ w.t()
        assert y.dtype == torch.bfloat16
        lifted = full_precision(y)
        assert lifted.dtype == torch.float32 and torch.equal(lifted, y.float())
        assert full_precision(h.double()).dtype == torch.float64
    assert full_precision(y) is y  # outside autocast: left as it is


def test_a_mask_for_another_batch_is_named_under_copies_too():
    with torch.no_grad(), identical_copies(2), sequence_lengths(torch.ones(3, 4, dtype=torch.bool)):
        with pytest.raises(ValueError, match=r"3 sequences of up to 4 steps.*\(4, 4, 3\)"):
            run_rnn(lstm(3, 4), torch.randn(2, 4, 3).repeat(2, 1, 1))

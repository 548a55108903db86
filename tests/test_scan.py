"""The whole-sequence scans of pyro_dvae.scan against PyTorch's own RNNs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_dvae import scan
from pyro_dvae.nn import run_rnn, run_rnn_fast, sequence_lengths
from pyro_dvae.scan import input_gates, lstm_scan_pays

# float64: both sides round at ~1e-16 per operation over T = 6 steps of width ≤ 7, and
# tanh = 2σ(2·) − 1 costs a few ulp more; 1e-12 leaves three orders of magnitude.
TOL = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture(autouse=True)
def _scan_every_lstm(monkeypatch):
    """The tiny batches here take the LSTM scan too (run_rnn_fast gives small steps to torch's
    LSTM: :func:`~pyro_dvae.scan.lstm_scan_pays`)."""
    monkeypatch.setattr(scan, "SCAN_MIN_STEP_INPUT", 0)


def make(kind: str, bidirectional: bool) -> nn.RNNBase:
    torch.manual_seed(0)
    if kind == "lstm":
        return nn.LSTM(7, 5, batch_first=True, bidirectional=bidirectional).double()
    return nn.RNN(7, 5, nonlinearity=kind, batch_first=True, bidirectional=bidirectional).double()


def torchs(rnn: nn.RNNBase, x: torch.Tensor, backward: bool, h_0=None) -> torch.Tensor:
    """``rnn``'s outputs from torch's own kernel (``backward``: on reversed x, re-reversed)."""
    h = None if h_0 is None else h_0.expand(1, x.shape[0], -1).contiguous()
    if backward:
        return rnn(x.flip(1), h)[0].flip(1)
    return rnn(x, h)[0]


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "tanh", "relu"])
@pytest.mark.parametrize("run", [run_rnn_fast, run_rnn])
def test_scan_equals_torch_rnn_values_and_gradients(run, kind, bidirectional, backward):
    rnn = make(kind, bidirectional)
    x = torch.randn(3, 6, 7, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 6, rnn.hidden_size * (1 + bidirectional), dtype=torch.float64)
    inputs = [x, *rnn.parameters()]
    expected = torchs(rnn, x, backward)
    got = run(rnn, x, backward)
    torch.testing.assert_close(got, expected, **TOL)
    grads = torch.autograd.grad((got * weights).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * weights).sum(), inputs)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, **TOL)


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("kind", ["tanh", "relu"])
def test_elman_scan_from_a_learned_h0_over_padded_sequences_equals_torch_per_sequence(
    kind, backward
):
    """run_rnn on the CPU runs a one-directional Elman RNN as a scan: from h_0 (H,), over a
    padded batch, its outputs at the valid steps and the gradients of x, the weights and h_0
    equal torch's RNN run on each sequence alone."""
    rnn = make(kind, False)
    h_0 = torch.randn(5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 6, 7, dtype=torch.float64, requires_grad=True)
    lengths = [6, 4, 1]
    mask = torch.arange(6) < torch.tensor(lengths)[:, None]
    probe = torch.randn(3, 6, 5, dtype=torch.float64) * mask[..., None]
    inputs = [x, h_0, *rnn.parameters()]
    with sequence_lengths(mask):
        got = run_rnn(rnn, x, backward, h_0=h_0) * mask[..., None]
    expected = torch.zeros_like(got)
    for b, L in enumerate(lengths):
        expected[b, :L] = torchs(rnn, x[b : b + 1, :L], backward, h_0)[0]
    torch.testing.assert_close(got, expected, **TOL)
    grads = torch.autograd.grad((got * probe).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * probe).sum(), inputs)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, **TOL)


def test_padded_batches_take_the_packed_path():
    rnn = make("lstm", True)
    x = torch.randn(2, 6, 7, dtype=torch.float64)
    mask = torch.arange(6) < torch.tensor([[6], [3]])
    with sequence_lengths(mask):
        torch.testing.assert_close(run_rnn_fast(rnn, x, True), run_rnn(rnn, x, True), **TOL)


def test_input_gates_of_several_weights_equal_one_linear_each():
    """Several (W_k, b_k) on one u: each a_k is W_k u_t + b_k, time-major, with the gradients of
    u, W_k and b_k of a linear layer per weight."""
    torch.manual_seed(1)
    u = torch.randn(3, 6, 7, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(g, 7, dtype=torch.float64, requires_grad=True) for g in (8, 4)]
    biases = [torch.randn(g, dtype=torch.float64, requires_grad=True) for g in (8, 4)]
    got = input_gates(u, weights, biases)
    expected = [F.linear(u, w, b).transpose(0, 1) for w, b in zip(weights, biases, strict=True)]
    probes = [torch.randn_like(e) for e in expected]
    inputs = [u, *weights, *biases]

    def probed(outputs):
        return sum((a * p).sum() for a, p in zip(outputs, probes, strict=True))

    grads = torch.autograd.grad(probed(got), inputs)
    expected_grads = torch.autograd.grad(probed(expected), inputs)
    for g, e in zip([*got, *grads], [*expected, *expected_grads], strict=True):
        torch.testing.assert_close(g, e, **TOL)


def test_an_lstm_runs_as_a_scan_from_the_step_size_threshold_with_the_same_outputs(monkeypatch):
    """run_rnn_fast runs an LSTM over x (B, T, D) as the scan when B·D reaches
    SCAN_MIN_STEP_INPUT, and as torch's LSTM below it; both give the same outputs."""
    calls = []
    lstm_scan = scan.LSTMScan.apply
    monkeypatch.setattr(scan.LSTMScan, "apply", lambda *a: calls.append(1) or lstm_scan(*a))
    rnn = make("lstm", False)
    x = torch.randn(3, 6, 7, dtype=torch.float64)  # B·D = 21
    monkeypatch.setattr(scan, "SCAN_MIN_STEP_INPUT", 22)
    below = run_rnn_fast(rnn, x, True)
    assert calls == []
    monkeypatch.setattr(scan, "SCAN_MIN_STEP_INPUT", 21)
    at = run_rnn_fast(rnn, x, True)
    assert calls == [1]
    torch.testing.assert_close(at, below, **TOL)


def test_the_shipped_threshold_scans_the_speech_shape_only(monkeypatch):
    """At the shipped threshold, the paper's speech batch (B = 128, D = 513) takes the scan;
    a speech batch of 8 and the motion shape (B = 128, D = 96) take torch's LSTM, which is
    faster there (benchmarks/README.md)."""
    monkeypatch.undo()
    assert lstm_scan_pays(torch.empty(128, 50, 513))
    assert not lstm_scan_pays(torch.empty(8, 50, 513))
    assert not lstm_scan_pays(torch.empty(128, 50, 96))
    assert lstm_scan_pays(torch.empty(8, 50, 513, device="meta"))  # off the CPU: unchanged

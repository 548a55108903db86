"""The whole-sequence scans of pyro_dvae.scan against PyTorch's own RNNs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyro_dvae.nn import run_rnn, sequence_lengths
from pyro_dvae.scan import input_gates, run_rnn_fast

# float64: both sides round at ~1e-16 per operation over T = 6 steps of width ≤ 7, and
# tanh = 2σ(2·) − 1 costs a few ulp more; 1e-12 leaves three orders of magnitude.
TOL = dict(rtol=1e-12, atol=1e-12)


def make(kind: str, bidirectional: bool) -> nn.RNNBase:
    torch.manual_seed(0)
    cls = nn.LSTM if kind == "lstm" else nn.RNN
    return cls(7, 5, batch_first=True, bidirectional=bidirectional).double()


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "tanh"])
def test_scan_equals_torch_rnn_values_and_gradients(kind, bidirectional, backward):
    rnn = make(kind, bidirectional)
    x = torch.randn(3, 6, 7, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 6, rnn.hidden_size * (1 + bidirectional), dtype=torch.float64)
    inputs = [x, *rnn.parameters()]
    expected = run_rnn(rnn, x, backward)
    got = run_rnn_fast(rnn, x, backward)
    torch.testing.assert_close(got, expected, **TOL)
    grads = torch.autograd.grad((got * weights).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * weights).sum(), inputs)
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

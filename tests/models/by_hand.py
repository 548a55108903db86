"""Step-by-step re-implementations of the recurrent pieces, for the sequential models' tests."""

import torch
from pyro.infer import TraceMeanField_ELBO
from torch import nn

from pyro_dvae.nn import GaussianHead


def lstm_cell(rnn: nn.LSTM, x_t, h, c, suffix: str = ""):
    """One LSTM step with rnn's weights, written out: gates i, f, g, o. ``suffix="_reverse"``
    takes the backward direction's weights of a bidirectional LSTM."""
    w_ih, w_hh = getattr(rnn, "weight_ih_l0" + suffix), getattr(rnn, "weight_hh_l0" + suffix)
    bias = getattr(rnn, "bias_ih_l0" + suffix) + getattr(rnn, "bias_hh_l0" + suffix)
    i, f, g, o = (x_t @ w_ih.T + h @ w_hh.T + bias).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def lstm_outputs(rnn: nn.LSTM, xs, reverse: bool = False, suffix: str = ""):
    """Outputs of rnn over xs (B, T, D) from zero state, one cell at a time; ``reverse`` walks
    t = T..1 so that output t summarises x_{t:T}; ``suffix`` as in :func:`lstm_cell`."""
    B, T, _ = xs.shape
    h = c = xs.new_zeros(B, rnn.hidden_size)
    out = [None] * T
    for t in reversed(range(T)) if reverse else range(T):
        h, c = lstm_cell(rnn, xs[:, t], h, c, suffix)
        out[t] = h
    return torch.stack(out, 1)


def gaussian(head: GaussianHead, features):
    """(mean, std) from a head: mean and log-variance halves of one Linear."""
    loc, logvar = head.linear(features).chunk(2, dim=-1)
    return loc, torch.exp(0.5 * logvar)


def stack(*columns):
    """Stack lists of (B, ·) tensors over time."""
    return [torch.stack(c, 1) for c in columns]


def assert_reference_matches_pyro(model, reference, x, seed: int = 5):
    """The hand-written benchmark loss equals the Pyro ELBO (KL weight 1) for the same noise,
    and so do their gradients."""
    torch.manual_seed(seed)
    loss = TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, 1.0)
    torch.manual_seed(seed)
    expected = reference(model, x)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    params = list(model.parameters())
    grads, expected_grads = torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def assert_overfits(model, x, steps: int = 80, factor: float = 0.5):
    """Adam (lr 1e-2) on one batch brings the mean of the last 5 losses below factor × the first."""
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    elbo, losses = TraceMeanField_ELBO(), []
    for _ in range(steps):
        optim.zero_grad()
        loss = elbo.differentiable_loss(model.model, model.guide, x, 1.0)
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < factor * losses[0], (losses[0], losses[-5:])

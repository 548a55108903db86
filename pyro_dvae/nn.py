"""Shared neural building blocks: MLPs, Gaussian heads and recurrent helpers.

Every network in the DVAE family is made of these pieces. Conventions (as in the original
implementation, see the spec §1): an ``MLP`` applies ``Linear`` + activation for every entry of
its hidden-size list, the activation included after the last entry; an empty list is the
identity. Heads are plain ``Linear`` layers. Sequences are batch-first ``(B, T, D)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
LOGVAR_BOUND = 30.0
"""Log-variances are clamped to ``[-LOGVAR_BOUND, LOGVAR_BOUND]`` so ``exp`` never overflows."""


class MLP(nn.Sequential):
    """``Linear(d_in→h_1)+act, …, Linear(h_{k−1}→h_k)+act``; identity for an empty list.

    Args:
        in_dim: input size.
        hidden: hidden sizes, in order.
        activation: ``"tanh"`` (every config of the paper) or ``"relu"``.
        dropout: dropout probability after every activation (0 in every config).
    """

    def __init__(
        self, in_dim: int, hidden: Sequence[int], activation: str = "tanh", dropout: float = 0.0
    ) -> None:
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(d_in, d_out), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        super().__init__(*layers)
        self.out_dim = dims[-1]
        self.activation = activation


INITS = ("torch", "glorot")
"""Weight initialisations of :func:`initialise` (``model.init``)."""


def initialise(module: nn.Module, scheme: str) -> None:
    """Re-initialise the ``Linear`` layers of every :class:`MLP` inside ``module``.

    ``torch`` keeps PyTorch's default (U(±1/√fan_in), as in the paper). ``glorot`` draws
    Glorot-uniform weights with the gain of the MLP's activation and zero biases, which keeps
    the signal's scale through deep tanh stacks: over z ~ N(0, I), the output of the paper's
    DKF speech decoder (four tanh layers, then the output layer) varies by 0.04 (std, in
    log-variance units) under the default and by 0.32 under ``glorot``. Heads, output layers
    and RNNs keep their default.
    """
    if scheme not in INITS:
        raise ValueError(f"model.init={scheme!r} is not known; expected one of {list(INITS)}")
    if scheme == "torch":
        return
    for mlp in (m for m in module.modules() if isinstance(m, MLP)):
        gain = nn.init.calculate_gain(mlp.activation)
        for layer in (m for m in mlp if isinstance(m, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight, gain=gain)
            nn.init.zeros_(layer.bias)


class GaussianHead(nn.Module):
    """Affine map to the mean and log-variance of a diagonal Gaussian.

    One ``Linear(in_dim → 2·out_dim)``: the same parameters as the paper's two heads.
    ``forward(h (..., in_dim)) -> (loc (..., out_dim), scale (..., out_dim))``.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, 2 * out_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, logvar = self.linear(h).chunk(2, dim=-1)
        return loc, scale_from_logvar(logvar)


def scale_from_logvar(logvar: torch.Tensor) -> torch.Tensor:
    """Standard deviation ``exp(½·logσ²)`` with the log-variance clamped to a safe range."""
    return torch.exp(0.5 * logvar.clamp(-LOGVAR_BOUND, LOGVAR_BOUND))


def shift(z: torch.Tensor) -> torch.Tensor:
    """The previous step of a sequence: ``(B, T, D) -> (B, T, D)`` holding ``z_{t−1}``, z_0 = 0."""
    return torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], dim=1)


def run_rnn(rnn: nn.RNNBase, x: torch.Tensor, backward: bool = False) -> torch.Tensor:
    """Run a batch-first RNN over ``x (B, T, D)`` from zero state; ``backward`` runs it on the
    time-reversed input and re-reverses the output, so step t summarises ``x_{t:T}``."""
    if backward:
        return rnn(x.flip(1))[0].flip(1)
    return rnn(x)[0]


def lstm(in_dim: int, hidden: int, bidirectional: bool = False) -> nn.LSTM:
    """A one-layer, batch-first ``nn.LSTM`` (every recurrent net of the family)."""
    return nn.LSTM(in_dim, hidden, num_layers=1, batch_first=True, bidirectional=bidirectional)


LSTMState = tuple[torch.Tensor, torch.Tensor]


def lstm_step(rnn: nn.LSTM, x_t: torch.Tensor, state: LSTMState | None) -> LSTMState:
    """One step of a one-layer ``nn.LSTM`` with its own weights: ``x_t (B, D) -> (h_t, c_t)``.

    Uses the fused cell kernel, so a Python loop over time costs one call per step.
    """
    if state is None:
        zeros = x_t.new_zeros(x_t.shape[0], rnn.hidden_size)
        state = (zeros, zeros)
    return torch.lstm_cell(
        x_t, state, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0
    )

"""VRNN: the variational recurrent neural network (Chung et al. 2015; spec §2.4).

Notation: x_t (B, T, D) observed frame, z_t (B, T, L) latent, φx(x_t) (B, T, F_x) and φz(z_t)
(B, T, F_z) their feature extractors, h_t (B, T, H) the one LSTM state that model and guide
share, y_t (B, T, D) decoder output. h_1 = c_1 = 0 (not an LSTM step from zero).

    h_{t+1} = LSTM([φx(x_t), φz(z_t)], h_t)
    p(x, z) = ∏_t p(x_t | z_t, h_t) p(z_t | h_t)
        p(z_t | h_t) = N(heads(MLP_hz(h_t))),          y_t = Lin(MLP_hzx([φz(z_t), h_t]))
    q(z | x) = ∏_t q(z_t | x_t, h_t) = N(heads(MLP_hxz([φx(x_t), h_t])))

h_t depends on the sampled z_{<t}, so the guide samples step by step, advancing the LSTM one
cell per step; the φx(x) shares of the LSTM's gates and of the encoder's first layer are
computed for all t before the loop (:meth:`VRNN.sampler`). Given z, every h_t is known: the
model takes the h path that the guide's draw produced (a
:class:`~pyro_dvae.models.handoff.Handoff`), or recomputes it with one LSTM call over
[φx(x), φz(z)], and scores the prior and the emission in parallel over time.

Generation mode and scheduled sampling (:mod:`pyro_dvae.feedback`, spec §7) split the shared
state in two copies of the same LSTM: the guide's h^inf reads the ground truth as above; the
prior and the decoder use h^gen_{t+1} = LSTM([φx(x^in_t), φz(z_t)], h^gen_t), where x^in_t is
x̂_t = E[x_t | y_t] or x_t as the feedback's coins say. ``generate`` is generation mode from
the prior.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.distributions import Distribution
from torch.nn import functional as F

from pyro_dvae.distributions import Parallel, Step, Trajectory, diag_normal
from pyro_dvae.feedback import Feedback, FreeRunning
from pyro_dvae.likelihoods import Likelihood
from pyro_dvae.models.base import DVAE
from pyro_dvae.models.handoff import Handoff
from pyro_dvae.nn import (
    MLP,
    GaussianHead,
    LSTMState,
    OutputLinear,
    lstm,
    lstm_cell,
    lstm_step,
    run_rnn,
    scale_from_logvar,
    shift,
)

Path = tuple[torch.Tensor, torch.Tensor]
"""``(φz(z), h)`` along a trajectory z, each ``(B, T, ·)``."""

GUIDES = {"filter": None}


class VRNN(DVAE):
    """VRNN with its filtering guide q(z_t | x_{1:t}, z_{1:t−1}).

    Args:
        x_dim, z_dim, likelihood: see :class:`DVAE`.
        guide: ``filter`` or None (the same, the only one).
        dense_x, dense_z: feature extractors φx, φz.
        dense_hx_z, dense_hz_x, dense_h_z: hidden sizes of the encoder, decoder and prior MLPs.
        dim_rnn: LSTM size H.
        activation: ``tanh``.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        likelihood: Likelihood,
        guide: str | None = None,
        dense_x: Sequence[int] = (256,),
        dense_z: Sequence[int] = (32, 64),
        dense_hx_z: Sequence[int] = (),
        dense_hz_x: Sequence[int] = (),
        dense_h_z: Sequence[int] = (),
        dim_rnn: int = 128,
        activation: str = "tanh",
    ) -> None:
        super().__init__(x_dim, z_dim, likelihood)
        self.choose_guide(guide, GUIDES, default="filter")
        self.feedback = Feedback()
        self.handoff: Handoff[torch.Tensor] = Handoff()
        self.phi_x = MLP(x_dim, dense_x, activation)
        self.phi_z = MLP(z_dim, dense_z, activation)
        fx, fz = self.phi_x.out_dim, self.phi_z.out_dim
        self.rnn = lstm(fx + fz, dim_rnn)
        self.encoder = _head(GaussianHead, fx + dim_rnn, dense_hx_z, z_dim, activation)
        self.decoder = _head(OutputLinear, fz + dim_rnn, dense_hz_x, x_dim, activation)
        self.prior_net = _head(GaussianHead, dim_rnn, dense_h_z, z_dim, activation)

    def hidden(self, features_x: torch.Tensor, features_z: torch.Tensor) -> torch.Tensor:
        """h (B, T, H) along a trajectory from φx(x), φz(z) in one LSTM call: h_1 = 0 and
        h_{t+1} the LSTM output after [φx(x_t), φz(z_t)] (the output after step T is unused)."""
        return shift(run_rnn(self.rnn, torch.cat([features_x, features_z], dim=-1)))

    def advance(
        self, state: LSTMState | None, features_x: torch.Tensor | None, z_prev: torch.Tensor
    ) -> LSTMState:
        """(h_t, c_t) from (h_{t−1}, c_{t−1}), φx(x_{t−1}) and z_{t−1}; state None (t = 1)
        gives h_1 = c_1 = 0."""
        if state is None:
            zeros = z_prev.new_zeros(z_prev.shape[0], self.rnn.hidden_size)
            return zeros, zeros
        return lstm_step(self.rnn, torch.cat([features_x, self.phi_z(z_prev)], dim=-1), state)

    def posterior(self, features_x: torch.Tensor, hs: list[torch.Tensor]) -> Trajectory:
        """q(z_t | x_t, h_t): sampled one LSTM cell at a time (:meth:`sampler`; the h_t of the
        draw are written to ``hs``), scored along a given z with one LSTM call."""
        sample_step = self.sampler(features_x)

        def step(t: int, z_prev: torch.Tensor, state: LSTMState | None):
            d, state = sample_step(t, z_prev, state)
            hs[t:] = [state[0]]  # hs[t] = h_t, dropping any earlier draw's
            return d, state

        def parallel(z: torch.Tensor) -> Distribution:
            return self.q_step(features_x, self.hidden(features_x, self.phi_z(z)))

        return _trajectory(step, parallel, features_x, self.z_dim)

    def sampler(self, features_x: torch.Tensor) -> Step:
        """The guide's sampling step along φx(x) (B, T, F_x): h_t = :meth:`advance` and
        q(z_t | x_t, h_t) = :meth:`q_step`, with the two layers that read φx(x) in a
        concatenation split by columns. Their φx shares are one product each over all t:
        W^x_ih φx(x_t) + b_ih + b_hh of the LSTM's gates (B, T − 1, 4H; h_{T+1} is not needed)
        and W^x φx(x_t) + b of the encoder's first affine layer (B, T, ·). A step adds
        W^z_ih φz(z_{t−1}) + W_hh h_{t−1}, runs the LSTM cell on the gates
        (:func:`~pyro_dvae.nn.lstm_cell`), and adds W^h h_t. Same parameters and values, and
        no concatenation or slice of φx(x) (whose backward fills a (B, T, F_x) tensor) per
        step."""
        fx, rnn, first = self.phi_x.out_dim, self.rnn, _first_linear(self.encoder)
        w_ih_x, w_ih_z = rnn.weight_ih_l0.split([fx, rnn.input_size - fx], dim=1)
        w_q_x, w_q_h = first.weight.split([fx, first.in_features - fx], dim=1)
        rnn_x = F.linear(features_x[:, :-1], w_ih_x, rnn.bias_ih_l0 + rnn.bias_hh_l0).unbind(1)
        q_x = F.linear(features_x, w_q_x, first.bias).unbind(1)
        w_ih_z, w_hh, w_q_h = w_ih_z.t(), rnn.weight_hh_l0.t(), w_q_h.t()

        def step(t: int, z_prev: torch.Tensor, state: LSTMState | None):
            if state is None:
                state = self.advance(None, None, z_prev)
            else:
                gates = torch.addmm(rnn_x[t - 1], self.phi_z(z_prev), w_ih_z)
                state = lstm_cell(torch.addmm(gates, state[0], w_hh), state[1])
            pre = torch.addmm(q_x[t], state[0], w_q_h)
            return diag_normal(*_after_first_linear(self.encoder, pre)), state

        return step

    def q_step(self, features_x: torch.Tensor, h: torch.Tensor) -> Distribution:
        """q(z_t | x_t, h_t) = N(heads(MLP_hxz([φx(x_t), h_t]))); any leading dims."""
        return diag_normal(*self.encoder(torch.cat([features_x, h], dim=-1)))

    def p_step(self, h: torch.Tensor) -> Distribution:
        """p(z_t | h_t) = N(heads(MLP_hz(h_t))); any leading dims."""
        return diag_normal(*self.prior_net(h))

    def prior(self, x: torch.Tensor, path: Callable[[torch.Tensor], Path]) -> Trajectory:
        """p(z_t | h_t), teacher-forced on x; ``path(z)`` gives (φz(z), h) for scoring."""

        def step(t: int, z_prev: torch.Tensor, state: LSTMState | None):
            state = self.advance(state, self.phi_x(x[:, t - 1]) if t else None, z_prev)
            return self.p_step(state[0]), state

        return _trajectory(step, lambda z: self.p_step(path(z)[1]), x, self.z_dim)

    def emit(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y = Lin(MLP_hzx([φz(z), h])), any leading dims."""
        return self.decoder(torch.cat([self.phi_z(z), h], dim=-1))

    def free_running(self, x: torch.Tensor, feedback: Feedback) -> tuple[Trajectory, FreeRunning]:
        """The prior p(z_t | h^gen_t) over the free-running state h^gen, whose frames are read per
        ``feedback`` against the ground truth x (B, T, D), and the recurrence itself."""

        def advance(state: LSTMState | None, x_prev: torch.Tensor, z_prev: torch.Tensor):
            return self.advance(state, None if state is None else self.phi_x(x_prev), z_prev)

        run = FreeRunning(advance, self.emit, x, feedback.coins(x), feedback, self.likelihood)

        def step(t: int, z_prev: torch.Tensor, state: LSTMState | None):
            state = run.step(t, z_prev, state)
            return self.p_step(state[0]), state

        return _trajectory(step, lambda z: self.p_step(run.along(z)), x, self.z_dim), run

    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
        if not self.feedback.teacher_forcing:
            prior, run = self.free_running(x, self.feedback)
            with self.sequences(x):
                z = self.latent("z", prior, kl_weight)
                return self.observe(self.emit(run.along(z), z), x)

        def along(z: torch.Tensor) -> Path:
            features_z = self.phi_z(z)
            h = self.handoff.take(z, self, lambda: self.hidden(self.phi_x(x), features_z))
            return features_z, h

        path = _LastCall(along)
        with self.sequences(x):
            z = self.latent("z", self.prior(x, path), kl_weight)
            return self.observe(self.decoder(torch.cat(path(z), dim=-1)), x)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        hs: list[torch.Tensor] = []
        with self.sequences(x):
            z = self.latent("z", self.posterior(self.phi_x(x), hs), kl_weight)
        if hs:
            self.handoff.put(z, self, torch.stack(hs, dim=1))

    @torch.no_grad()
    def generate(self, n: int, T: int) -> torch.Tensor:
        """Generation mode from the prior: φx(x̂_{t−1}), x̂_{t−1} = E[x_{t−1} | y_{t−1}], fed back."""
        like = next(self.parameters())
        prior, run = self.free_running(like.new_zeros(n, T, self.x_dim), Feedback(1.0))
        z = prior.rsample()
        return self.likelihood.mean(self.emit(run.along(z), z))


def _head(
    out: type[nn.Module], in_dim: int, hidden: Sequence[int], out_dim: int, activation: str
) -> nn.Sequential:
    """MLP[hidden] followed by ``out(·, out_dim)`` (a Gaussian head or a Linear)."""
    mlp = MLP(in_dim, hidden, activation)
    return nn.Sequential(mlp, out(mlp.out_dim, out_dim))


def _first_linear(head: nn.Sequential) -> nn.Linear:
    """The affine layer that reads the input of a :func:`_head`: its MLP's first, or the output
    layer (a Gaussian head's linear map) when the MLP is empty."""
    mlp, out = head
    if len(mlp):
        return mlp[0]
    return out.linear if isinstance(out, GaussianHead) else out


def _after_first_linear(
    head: nn.Sequential, pre: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc, scale) of a Gaussian :func:`_head` from the output ``pre`` of its
    :func:`_first_linear`; any leading dims."""
    mlp, out = head
    if len(mlp) == 0:
        loc, logvar = pre.chunk(2, dim=-1)
        return loc, scale_from_logvar(logvar)
    for layer in list(mlp)[1:]:
        pre = layer(pre)
    return out(pre)


def _trajectory(step: Step, parallel: Parallel, like: torch.Tensor, z_dim: int) -> Trajectory:
    B, T, _ = like.shape
    return Trajectory(step, parallel, batch_size=B, T=T, L=z_dim, like=like)


class _LastCall:
    """``fn`` remembering its last argument (by identity) and result: the model decodes the
    guide's z and scores it under the prior with a single computation of h."""

    def __init__(self, fn: Callable[[torch.Tensor], Path]) -> None:
        self.fn = fn
        self.last: tuple[torch.Tensor, Path] | None = None

    def __call__(self, z: torch.Tensor) -> Path:
        if self.last is None or self.last[0] is not z:
            self.last = (z, self.fn(z))
        return self.last[1]

"""SRNN: the stochastic recurrent neural network (Fraccaro et al. 2016; spec §2.5).

Notation: x_t (B, T, D) observed frame, z_t (B, T, L) latent, h_t (B, T, H_h) the
deterministic forward state, g_t (B, T, H_g) the inference state, y_t (B, T, D) decoder
output; x_0 = 0, z_0 = 0.

    h_t = LSTM_h(MLP_xh(x_{t−1}), h_{t−1})                  (depends on x_{1:t−1} only)
    p(x, z) = ∏_t p(x_t | z_t, h_t) p(z_t | z_{t−1}, h_t)
        p(z_t | z_{t−1}, h_t) = N(heads(MLP_hzz([h_t, z_{t−1}]))),   y_t = Lin(MLP_hzx([h_t, z_t]))
    q(z | x) = ∏_t q(z_t | z_{t−1}, g_t) = N(heads(MLP_gzz([g_t, z_{t−1}])))

The inference network is swappable:

* ``guide=smoother`` (default): g = backward LSTM over MLP_hxg([h_t, x_t]), so g_t summarises
  x_{t:T} and h_t, i.e. all of x: q(z_t | z_{t−1}, x_{1:T}).
* ``guide=filter``: g = forward LSTM over the same input: q(z_t | z_{t−1}, x_{1:t}).

h and g are computed in one LSTM call each; only the small combiner MLP_gzz runs step by step
on the sampled z_{t−1}. The prior (a component, :class:`SRNNPrior`) and the emission are
scored in parallel over time; the model reuses the h that the guide computed (a
:class:`~pyro_dvae.models.handoff.Handoff`).

Generation mode and scheduled sampling (:mod:`pyro_dvae.feedback`, spec §7): the encoder keeps
the teacher-forced h^inf_t = LSTM_h(MLP_xh(x_{t−1})), while the prior and the decoder use a
second, free-running state of the same LSTM, h^gen_t = LSTM_h(MLP_xh(x^in_{t−1})), which reads
x̂_{t−1} = E[x_{t−1} | y_{t−1}] or x_{t−1} as the feedback's coins say; the model then walks
h^gen along z step by step. ``generate`` is generation mode from the prior.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Distribution
from torch.nn import functional as F

from pyro_dvae.distributions import Step, Trajectory, diag_normal
from pyro_dvae.feedback import Feedback, FreeRunning
from pyro_dvae.likelihoods import Likelihood
from pyro_dvae.models.base import DVAE
from pyro_dvae.models.handoff import Handoff
from pyro_dvae.nn import MLP, GaussianHead, LSTMState, OutputLinear, lstm, lstm_step, run_rnn, shift


class Combiner(nn.Module):
    """``N(heads(MLP([c_t, z_{t−1}])))``: a Gaussian over z_t from a context c_t and z_{t−1}.

    ``forward(c (..., C), z_prev (..., L)) -> distribution`` (event (L,)), any leading dims;
    :meth:`trajectory` chains it over a context sequence c (B, T, C) from z_0 = 0.
    """

    def __init__(
        self, context_dim: int, z_dim: int, hidden: Sequence[int], activation: str
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.mlp = MLP(context_dim + z_dim, hidden, activation)
        self.head = GaussianHead(self.mlp.out_dim, z_dim)

    def forward(self, c: torch.Tensor, z_prev: torch.Tensor) -> Distribution:
        return diag_normal(*self.head(self.mlp(torch.cat([c, z_prev], dim=-1))))

    def trajectory(self, c: torch.Tensor) -> Trajectory:
        """The chain over T steps: sampled one step at a time, scored in parallel."""
        B, T, _ = c.shape
        return Trajectory(
            step=self.stepper(c),
            parallel=lambda z: self(c, shift(z)),
            batch_size=B,
            T=T,
            L=self.z_dim,
            like=c,
        )

    def stepper(self, c: torch.Tensor) -> Step:
        """The sampling step along c (B, T, C). The context's share of the first layer,
        W_c c_t + b, is computed for all t in one product, so that a step only adds W_z z_{t−1}
        (same parameters and values as :meth:`forward`, fewer operations in the loop). The
        frames are taken apart once (``unbind``): a slice per step would fill a (B, T, ·)
        gradient per step in the backward pass."""
        if len(self.mlp) == 0:
            frames = c.unbind(1)
            return lambda t, z_prev, state: (self(frames[t], z_prev), None)
        first, rest = self.mlp[0], nn.Sequential(*list(self.mlp)[1:])
        w_c, w_z = first.weight.split([c.shape[-1], self.z_dim], dim=1)
        context, w_z = F.linear(c, w_c, first.bias).unbind(1), w_z.t()

        def step(t: int, z_prev: torch.Tensor, state: None):
            return diag_normal(*self.head(rest(torch.addmm(context[t], z_prev, w_z)))), None

        return step


class SRNNPrior(Combiner):
    """The prior component p(z_t | z_{t−1}, h_t) = N(heads(MLP_hzz([h_t, z_{t−1}])));
    ``trajectory(h (B, T, H_h))`` is the chain p(z_{1:T} | h_{1:T})."""


class SRNNInference(nn.Module):
    """q(z_t | z_{t−1}, g_t), g = LSTM_g over MLP_hxg([h_t, x_t]), backward or forward.

    ``forward(h (B, T, H_h), x (B, T, D)) -> Trajectory`` over z (B, T, L).
    """

    def __init__(
        self,
        x_dim: int,
        h_dim: int,
        z_dim: int,
        dense_hx_g: Sequence[int],
        dim_rnn_g: int,
        dense_gz_z: Sequence[int],
        backward: bool,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.backward = backward
        self.mlp_hx_g = MLP(h_dim + x_dim, dense_hx_g, activation)
        self.rnn_g = lstm(self.mlp_hx_g.out_dim, dim_rnn_g)
        self.combiner = Combiner(dim_rnn_g, z_dim, dense_gz_z, activation)

    def summary(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """g (B, T, H_g) in one LSTM call."""
        return run_rnn(self.rnn_g, self.features(h, x), self.backward)

    def features(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """MLP_hxg([h_t, x_t]) ``(B, T, ·)`` with its first layer split, W_h h_t + (W_x x_t + b):
        the same values without the concatenation, and the backward pass computes no gradient
        for x (as wide as the layer's whole input on speech: 513 of 641 columns)."""
        if len(self.mlp_hx_g) == 0:
            return torch.cat([h, x], dim=-1)
        first, *rest = self.mlp_hx_g
        w_h, w_x = first.weight.split([h.shape[-1], x.shape[-1]], dim=1)
        out = F.linear(h, w_h) + F.linear(x, w_x, first.bias)
        for layer in rest:
            out = layer(out)
        return out

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> Trajectory:
        return self.combiner.trajectory(self.summary(h, x))


GUIDES = {"smoother": True, "filter": False}
"""Guide name → backward LSTM_g."""


class SRNN(DVAE):
    """SRNN with a swappable inference network.

    Args:
        x_dim, z_dim, likelihood: see :class:`DVAE`.
        guide: ``smoother`` (default) or ``filter``.
        dense_x_h, dim_rnn_h: the deterministic chain (MLP_xh, LSTM_h).
        dense_hx_g, dim_rnn_g, dense_gz_z: the inference network (MLP_hxg, LSTM_g, MLP_gzz).
        dense_hz_x: decoder hidden sizes (MLP_hzx).
        dense_hz_z: prior hidden sizes (MLP_hzz).
        activation: ``tanh``.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        likelihood: Likelihood,
        guide: str | None = None,
        dense_x_h: Sequence[int] = (256,),
        dim_rnn_h: int = 128,
        dense_hx_g: Sequence[int] = (256,),
        dim_rnn_g: int = 128,
        dense_gz_z: Sequence[int] = (64, 32),
        dense_hz_x: Sequence[int] = (256,),
        dense_hz_z: Sequence[int] = (64, 32),
        activation: str = "tanh",
    ) -> None:
        super().__init__(x_dim, z_dim, likelihood)
        smoother = self.choose_guide(guide, GUIDES, default="smoother")
        self.feedback = Feedback()
        self.handoff: Handoff[torch.Tensor] = Handoff()
        self.mlp_x_h = MLP(x_dim, dense_x_h, activation)
        self.rnn_h = lstm(self.mlp_x_h.out_dim, dim_rnn_h)
        self.prior = SRNNPrior(dim_rnn_h, z_dim, dense_hz_z, activation)
        mlp_hz_x = MLP(dim_rnn_h + z_dim, dense_hz_x, activation)
        self.decoder = nn.Sequential(mlp_hz_x, OutputLinear(mlp_hz_x.out_dim, x_dim))
        self.inference = SRNNInference(
            x_dim, dim_rnn_h, z_dim, dense_hx_g, dim_rnn_g, dense_gz_z, smoother, activation
        )

    def deterministic(self, x: torch.Tensor) -> torch.Tensor:
        """h (B, T, H_h): h_t from x_{1:t−1}, one LSTM call over the shifted sequence."""
        return run_rnn(self.rnn_h, self.mlp_x_h(shift(x)))

    def decode(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y = Lin(MLP_hzx([h, z])), any leading dims."""
        return self.decoder(torch.cat([h, z], dim=-1))

    def advance(
        self, state: LSTMState | None, x_prev: torch.Tensor, z_prev: torch.Tensor
    ) -> LSTMState:
        """One step of LSTM_h reading the frame x_prev (B, D); z_prev is not read."""
        return lstm_step(self.rnn_h, self.mlp_x_h(x_prev), state)

    def free_running(self, x: torch.Tensor, feedback: Feedback) -> tuple[Trajectory, FreeRunning]:
        """The prior p(z_t | z_{t−1}, h^gen_t) over the free-running h^gen, whose frames are read
        per ``feedback`` against the ground truth x (B, T, D), and the recurrence itself."""
        run = FreeRunning(
            self.advance, self.decode, x, feedback.coins(x), feedback, self.likelihood
        )

        def step(t: int, z_prev: torch.Tensor, state: LSTMState | None):
            state = run.step(t, z_prev, state)
            return self.prior(state[0], z_prev), state

        B, T, _ = x.shape
        trajectory = Trajectory(
            step, lambda z: self.prior(run.along(z), shift(z)), B, T, self.z_dim, like=x
        )
        return trajectory, run

    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
        if not self.feedback.teacher_forcing:
            prior, run = self.free_running(x, self.feedback)
            with self.sequences(x):
                z = self.latent("z", prior, kl_weight)
                return self.observe(self.decode(run.along(z), z), x)
        h = self.handoff.take(x, self, lambda: self.deterministic(x))
        with self.sequences(x):
            z = self.latent("z", self.prior.trajectory(h), kl_weight)
            return self.observe(self.decode(h, z), x)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        h = self.deterministic(x)
        self.handoff.put(x, self, h)
        with self.sequences(x):
            self.latent("z", self.inference(h, x), kl_weight)

    @torch.no_grad()
    def generate(self, n: int, T: int) -> torch.Tensor:
        """Generation mode from the prior: x̂_{t−1} = E[x_{t−1} | y_{t−1}] fed to LSTM_h."""
        like = next(self.parameters())
        prior, run = self.free_running(like.new_zeros(n, T, self.x_dim), Feedback(1.0))
        z = prior.rsample()
        return self.likelihood.mean(self.decode(run.along(z), z))

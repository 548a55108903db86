"""STORN: the stochastic recurrent network (Bayer & Osendorfer 2014; spec §2.3).

Notation: x_t (B, T, D) observed frame, z_t (B, T, L) latent, h_t (B, T, H_h) the decoder's
LSTM state, g_t (B, T, H_g) the encoder's, y_t (B, T, D) decoder output; x_0 = 0.

    p(x, z) = ∏_t p(x_t | x_{1:t−1}, z_{1:t}) p(z_t),        p(z_t) = N(0, I)
        h_t = LSTM_h([MLP_zh(z_t), MLP_xh(x_{t−1})], h_{t−1}),   y_t = Lin(MLP_hx(h_t))
    q(z | x) = ∏_t q(z_t | x_{1:t}) = N(heads(MLP_gz(g_t))),  g_t = LSTM_g(MLP_xg(x_t), g_{t−1})

Neither side feeds a sampled z back into a recurrence, so teacher-forced training is fully
parallel over time: one LSTM call in the guide, one in the model.

Generation mode and scheduled sampling (:mod:`pyro_dvae.feedback`, spec §7): the encoder keeps
reading x; LSTM_h reads x̂_{t−1} = E[x_{t−1} | y_{t−1}] or x_{t−1} as the feedback's coins say,
one step at a time. The prior N(0, I) does not depend on x, so only the decoder changes.
``generate`` is generation mode from the prior.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_dvae.distributions import IndependentTrajectory, diag_normal
from pyro_dvae.feedback import Feedback
from pyro_dvae.likelihoods import Likelihood
from pyro_dvae.models.base import DVAE
from pyro_dvae.models.priors import StandardNormal
from pyro_dvae.nn import MLP, GaussianHead, OutputLinear, lstm, lstm_step, run_rnn, shift


class STORN(DVAE):
    """STORN with the spec's filtering guide q(z_t | x_{1:t}).

    Args:
        x_dim, z_dim, likelihood: see :class:`DVAE`.
        dense_x_g, dim_rnn_g, dense_g_z: encoder sizes (MLP_xg, LSTM_g, MLP_gz).
        dense_z_h, dense_xtm1_h, dim_rnn_h, dense_h_x: decoder sizes (MLP_zh, MLP_xh, LSTM_h,
            MLP_hx).
        activation: ``tanh``.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        likelihood: Likelihood,
        dense_x_g: Sequence[int] = (256,),
        dim_rnn_g: int = 128,
        dense_g_z: Sequence[int] = (64, 32),
        dense_z_h: Sequence[int] = (32, 64),
        dense_xtm1_h: Sequence[int] = (256,),
        dense_h_x: Sequence[int] = (256,),
        dim_rnn_h: int = 128,
        activation: str = "tanh",
    ) -> None:
        super().__init__(x_dim, z_dim, likelihood)
        self.feedback = Feedback()
        self.prior = StandardNormal()
        self.mlp_x_g = MLP(x_dim, dense_x_g, activation)
        self.rnn_g = lstm(self.mlp_x_g.out_dim, dim_rnn_g)
        mlp_g_z = MLP(dim_rnn_g, dense_g_z, activation)
        self.encoder = nn.Sequential(mlp_g_z, GaussianHead(mlp_g_z.out_dim, z_dim))
        self.mlp_z_h = MLP(z_dim, dense_z_h, activation)
        self.mlp_xtm1_h = MLP(x_dim, dense_xtm1_h, activation)
        self.rnn_h = lstm(self.mlp_z_h.out_dim + self.mlp_xtm1_h.out_dim, dim_rnn_h)
        mlp_h_x = MLP(dim_rnn_h, dense_h_x, activation)
        self.decoder = nn.Sequential(mlp_h_x, OutputLinear(mlp_h_x.out_dim, x_dim))

    def posterior(self, x: torch.Tensor) -> IndependentTrajectory:
        """q(z_t | x_{1:t}) for every t from one forward LSTM call over x (B, T, D)."""
        features = self.encoder(run_rnn(self.rnn_g, self.mlp_x_g(x)))
        return IndependentTrajectory(diag_normal, *features)

    def decode(self, z: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        """y (B, T, D) from z_t and x_{t−1} (both (B, T, ·)), teacher-forced, one LSTM call."""
        inputs = torch.cat([self.mlp_z_h(z), self.mlp_xtm1_h(x_prev)], dim=-1)
        return self.decoder(run_rnn(self.rnn_h, inputs))

    def decode_free(self, z: torch.Tensor, x: torch.Tensor, feedback: Feedback) -> torch.Tensor:
        """y (B, T, D) from z (B, T, L), LSTM_h stepped one frame at a time, reading x_{t−1} or
        x̂_{t−1} as the coins of ``feedback`` say (x (B, T, D) is the ground truth)."""
        coins, features_z = feedback.coins(x), self.mlp_z_h(z)
        x_prev, state, ys = torch.zeros_like(x[:, 0]), None, []
        for t in range(x.shape[1]):
            inputs = torch.cat([features_z[:, t], self.mlp_xtm1_h(x_prev)], dim=-1)
            state = lstm_step(self.rnn_h, inputs, state)
            ys.append(self.decoder(state[0]))
            x_prev = feedback.read(self.likelihood, ys[-1], x[:, t], coins[:, t])
        return torch.stack(ys, dim=1)

    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
        B, T, _ = x.shape
        with self.sequences(x):
            z = self.latent("z", self.prior.trajectory(B, T, self.z_dim, x), kl_weight)
            if self.feedback.teacher_forcing:
                return self.observe(self.decode(z, shift(x)), x)
            return self.observe(self.decode_free(z, x, self.feedback), x)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        with self.sequences(x):
            self.latent("z", self.posterior(x), kl_weight)

    @torch.no_grad()
    def generate(self, n: int, T: int) -> torch.Tensor:
        """Generation mode from the prior: x̂_{t−1} = E[x_{t−1} | y_{t−1}] fed to LSTM_h."""
        like = next(self.parameters())
        x = like.new_zeros(n, T, self.x_dim)
        z = self.prior.trajectory(n, T, self.z_dim, like).rsample()
        return self.likelihood.mean(self.decode_free(z, x, Feedback(1.0)))

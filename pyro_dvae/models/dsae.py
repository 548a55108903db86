"""DSAE: the disentangled sequential autoencoder (Li & Mandt ICML 2018, "full q"; spec §2.7, §6).

Notation: x_t (B, T, D) observed frame, v (B, V) the static latent (one per sequence),
z_t (B, T, L) the dynamic latent, φ_t = MLP_x(x_t) (B, T, D_φ), y_t (B, T, D) decoder output.

Generative model (v broadcast over time, concat order [v, z_t])::

    p(x, z, v) = p(v) ∏_t p(x_t | z_t, v) p(z_t | z_{1:t−1}),     p(v) = N(0, I)
    p(z_t | z_{1:t−1}) = N(μ^p_t, σ^p_t²),  [μ^p_t, log σ^p_t²] = Lin(r_t),
    r = LSTM_prior(z_{0:T−1}) with z_0 = 0                              (:class:`LSTMPrior`)
    y_t = Lin(MLP_vzx([v, z_t]))

Inference model (v first, then z given v; no sampled-z feedback)::

    q(v | x_{1:T}) = N(μ_v, σ_v²),  [μ_v, log σ_v²] = Lin(MLP_gvv([h^→_T, h^←_1])),
        h^→_T, h^←_1 (B, H_v each): final states of the bi-LSTM_gv over φ_{1:T}
    q(z | x, v) = ∏_t q(z_t | x_{1:T}, v) = N(μ_t, σ_t²),  [μ_t, log σ_t²] = Lin(g^z_t),
        u_t = MLP_xvgxv([φ_t, v]),  g^z = RNN_gz(MLP_gxvgz(bi-LSTM_gxv(u)))  (RNN_gz: tanh RNN)

Loss per frame (spec §4.3): [−log p(x | z, v) + β·w·(KL_z + KL_v)] / (T·B), KL_z the analytic
per-step KL given the sampled z_{<t}, KL_v = KL(q(v | x) ‖ N(0, I)) once per sequence. The
``sequences`` plate's 1/(T·B) scale gives exactly this normalisation.

Against the collapse of v to its prior (spec §6), ``kl_v_free_bits = λ > 0`` (nats per
sequence; 0, the default, is the paper) replaces KL_v by max(KL_v, λ) for every sequence: the
model adds the factor −β·w·max(0, λ − KL_v), with KL_v computed from q(v | x) analytically.
Below λ nats the v-encoder feels no pull towards the prior. Reported KLs (``kl_v``, the
trainer's KL) stay the true ones.

Speed: everything is one RNN call over time except sampling z from the LSTM prior in
:meth:`DSAE.generate`; the prior scores a given z with one LSTM call over shift(z). Both
bi-LSTMs of the guide read φ (bi-LSTM_gxv through [φ_t, v] when MLP_xvgxv is empty): their four
input projections share one time-major copy of φ, each one product over all frames, and the v
part of bi-LSTM_gxv's, W^v v, is computed once per sequence and broadcast over time
(:meth:`DSAEInference.phi_gates`).
Both then run through the whole-sequence scans of :mod:`pyro_dvae.scan`, which skip the
gradient of φ = x that oneDNN's LSTM would compute. The RNNs over z keep ``nn.LSTM`` and
``nn.RNN``: on inputs of width 16 oneDNN is faster than the scans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import torch
from pyro.distributions import TorchDistribution
from torch import nn
from torch.distributions import Distribution

from pyro_dvae.distributions import IndependentTrajectory, Trajectory, diag_normal, normal_kl
from pyro_dvae.likelihoods import Likelihood
from pyro_dvae.models.base import DVAE
from pyro_dvae.nn import (
    MLP,
    GaussianHead,
    LSTMState,
    OutputLinear,
    _active_lengths,
    final_state,
    lstm,
    lstm_step,
    run_rnn,
    shift,
)
from pyro_dvae.scan import (
    direction_weights,
    input_gates,
    is_scannable,
    lstm_scan_pays,
    scan_directions,
)


def over_time(v: torch.Tensor, T: int) -> torch.Tensor:
    """Broadcast a static ``v (B, V)`` to every frame: ``(B, T, V)``."""
    return v.unsqueeze(1).expand(-1, T, -1)


class LSTMPrior(nn.Module):
    """``p(z_t | z_{1:t−1})``: ``[μ^p_t, log σ^p_t²] = Lin(LSTM(z_{0:T−1})_t)``, z_0 = 0."""

    def __init__(self, z_dim: int, dim_rnn_prior: int) -> None:
        super().__init__()
        self.rnn = lstm(z_dim, dim_rnn_prior)
        self.head = GaussianHead(dim_rnn_prior, z_dim)

    def step(self, z_prev: torch.Tensor, state: LSTMState | None) -> tuple[Distribution, LSTMState]:
        """One frame: advance the LSTM on z_{t−1} (B, L), then (p(z_t | z_{<t}), state)."""
        state = lstm_step(self.rnn, z_prev, state)
        return diag_normal(*self.head(state[0])), state

    def parallel(self, z: torch.Tensor) -> Distribution:
        """All frames' p(z_t | z_{<t}) along a given z (B, T, L): one LSTM call over shift(z)."""
        return diag_normal(*self.head(run_rnn(self.rnn, shift(z))))

    def trajectory(self, B: int, T: int, L: int, like: torch.Tensor) -> Trajectory:
        return Trajectory(
            step=lambda t, z_prev, state: self.step(z_prev, state),
            parallel=self.parallel,
            batch_size=B,
            T=T,
            L=L,
            like=like,
        )


class DSAEInference(nn.Module):
    """q(v | x) and q(z | x, v), sharing the features φ = MLP_x(x)."""

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        v_dim: int,
        dense_x: Sequence[int],
        dim_rnn_gv: int,
        dense_gv_v: Sequence[int],
        dense_xv_gxv: Sequence[int],
        dim_rnn_gxv: int,
        dense_gxv_gz: Sequence[int],
        dim_rnn_gz: int,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.mlp_x = MLP(x_dim, dense_x, activation)
        self.rnn_gv = lstm(self.mlp_x.out_dim, dim_rnn_gv, bidirectional=True)
        self.mlp_gv_v = MLP(2 * dim_rnn_gv, dense_gv_v, activation)
        self.head_v = GaussianHead(self.mlp_gv_v.out_dim, v_dim)
        self.mlp_xv_gxv = MLP(self.mlp_x.out_dim + v_dim, dense_xv_gxv, activation)
        self.rnn_gxv = lstm(self.mlp_xv_gxv.out_dim, dim_rnn_gxv, bidirectional=True)
        self.mlp_gxv_gz = MLP(2 * dim_rnn_gxv, dense_gxv_gz, activation)
        self.rnn_gz = nn.RNN(self.mlp_gxv_gz.out_dim, dim_rnn_gz, batch_first=True)
        self.head_z = GaussianHead(dim_rnn_gz, z_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """φ = MLP_x(x) (B, T, D_φ)."""
        return self.mlp_x(x)

    def phi_gates(self, phi: torch.Tensor) -> PhiGates | None:
        """The input gates of both directions of bi-LSTM_gv and of the φ part of bi-LSTM_gxv's,
        each one product over all frames of one time-major copy of φ
        (:func:`~pyro_dvae.scan.input_gates`), each ``(T, B, 4H)``; None where they cannot be
        shared (padded batch, or MLP_xvgxv between [φ, v] and bi-LSTM_gxv) or where torch's
        LSTMs are faster (small steps, :func:`~pyro_dvae.scan.lstm_scan_pays`): :meth:`static`
        and :meth:`dynamic` then run the RNNs alone."""
        rnns = (self.rnn_gv, self.rnn_gxv)
        if len(self.mlp_xv_gxv) or not all(map(is_scannable, rnns)):
            return None
        if _active_lengths(phi) is not None or not lstm_scan_pays(phi):
            return None
        D = phi.shape[-1]
        weights = [direction_weights(rnn, k) for rnn in rnns for k in (0, 1)]
        a = input_gates(phi, [w[0][:, :D] for w in weights], [w[2] for w in weights])
        return PhiGates(gv=a[:2], gxv=a[2:])

    def static(
        self, phi: torch.Tensor, gates: PhiGates | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of q(v | x), each (B, V), from the bi-LSTM's final states [h^→_T, h^←_1];
        ``gates``: :meth:`phi_gates` of ``phi``, if computed."""
        if gates is None:
            h_n = final_state(self.rnn_gv, phi)
            h_last = torch.cat([h_n[0], h_n[1]], dim=-1)
        else:
            hs = scan_directions(self.rnn_gv, gates.gv)
            H = self.rnn_gv.hidden_size
            h_last = torch.cat([hs[:, -1, :H], hs[:, 0, H:]], dim=-1)
        return self.head_v(self.mlp_gv_v(h_last))

    def dynamic(
        self, phi: torch.Tensor, v: torch.Tensor, gates: PhiGates | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of q(z_t | x, v), each (B, T, L); ``gates`` as in :meth:`static`."""
        if gates is None:
            u = self.mlp_xv_gxv(torch.cat([phi, over_time(v, phi.shape[1])], dim=-1))
            h = run_rnn(self.rnn_gxv, u)
        else:  # W [φ_t, v] + b = (W^φ φ_t + b) + W^v v
            D = phi.shape[-1]
            w_v = [direction_weights(self.rnn_gxv, k)[0][:, D:] for k in (0, 1)]
            a = [a_k + (v @ w.t()).unsqueeze(0) for a_k, w in zip(gates.gxv, w_v, strict=True)]
            h = scan_directions(self.rnn_gxv, a)
        return self.head_z(run_rnn(self.rnn_gz, self.mlp_gxv_gz(h)))


@dataclass
class PhiGates:
    """Input gates from φ, each ``(T, B, 4H)`` (:meth:`DSAEInference.phi_gates`): ``gv`` of
    bi-LSTM_gv's two directions, ``gxv`` of the φ part of bi-LSTM_gxv's (bias included)."""

    gv: list[torch.Tensor]
    gxv: list[torch.Tensor]


class DSAEDecoder(nn.Module):
    """``y_t = Lin(MLP_vzx([v, z_t]))``: ``forward(v (B, V), z (B, T, L)) -> y (B, T, D)``."""

    def __init__(
        self, x_dim: int, z_dim: int, v_dim: int, dense_vz_x: Sequence[int], activation: str
    ) -> None:
        super().__init__()
        self.mlp_vz_x = MLP(v_dim + z_dim, dense_vz_x, activation)
        self.gen_out = OutputLinear(self.mlp_vz_x.out_dim, x_dim)

    def forward(self, v: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.gen_out(self.mlp_vz_x(torch.cat([over_time(v, z.shape[1]), z], dim=-1)))


class DSAE(DVAE):
    """Disentangled sequential autoencoder with a static v and a dynamic z.

    Args:
        x_dim, z_dim, likelihood: see :class:`DVAE`.
        v_dim: static latent size V.
        dense_x, dim_rnn_gv, dense_gv_v, dense_xv_gxv, dim_rnn_gxv, dense_gxv_gz, dim_rnn_gz:
            inference-network sizes.
        dim_rnn_prior: LSTM size of the prior p(z_t | z_{1:t−1}).
        dense_vz_x: decoder hidden sizes.
        kl_v_free_bits: λ ≥ 0, free nats of KL_v per sequence (0: the paper's loss).
        activation: ``tanh``.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        likelihood: Likelihood,
        v_dim: int = 16,
        dense_x: Sequence[int] = (),
        dim_rnn_gv: int = 128,
        dense_gv_v: Sequence[int] = (),
        dense_xv_gxv: Sequence[int] = (),
        dim_rnn_gxv: int = 128,
        dense_gxv_gz: Sequence[int] = (),
        dim_rnn_gz: int = 128,
        dim_rnn_prior: int = 128,
        dense_vz_x: Sequence[int] = (32, 64, 128, 256),
        kl_v_free_bits: float = 0.0,
        activation: str = "tanh",
    ) -> None:
        super().__init__(x_dim, z_dim, likelihood)
        if kl_v_free_bits < 0:
            raise ValueError(f"kl_v_free_bits={kl_v_free_bits} must be ≥ 0")
        self.v_dim, self.kl_v_free_bits = v_dim, kl_v_free_bits
        self.prior = LSTMPrior(z_dim, dim_rnn_prior)
        self.decoder = DSAEDecoder(x_dim, z_dim, v_dim, dense_vz_x, activation)
        self.inference = DSAEInference(
            x_dim,
            z_dim,
            v_dim,
            dense_x,
            dim_rnn_gv,
            dense_gv_v,
            dense_xv_gxv,
            dim_rnn_gxv,
            dense_gxv_gz,
            dim_rnn_gz,
            activation,
        )

    def prior_v(self, n: int, like: torch.Tensor) -> TorchDistribution:
        """p(v) = N(0, I), batch (n,), event (V,)."""
        zeros = like.new_zeros(n, self.v_dim)
        return diag_normal(zeros, torch.ones_like(zeros))

    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
        B, T, _ = x.shape
        with self.sequences(x):
            v = self.latent("v", self.prior_v(B, x), kl_weight)
            z = self.latent("z", self.prior.trajectory(B, T, self.z_dim, x), kl_weight)
            self.free_bits(x, kl_weight)
            return self.observe(self.decoder(v, z), x)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        phi = self.inference.features(x)
        gates = self.inference.phi_gates(phi)
        with self.sequences(x):
            q_v = diag_normal(*self.inference.static(phi, gates))
            v = self.latent("v", q_v, kl_weight)
            q_z = IndependentTrajectory(diag_normal, *self.inference.dynamic(phi, v, gates))
            self.latent("z", q_z, kl_weight)

    def free_bits(self, x: torch.Tensor, kl_weight: float) -> None:
        """With λ > 0, the factor −β·w·max(0, λ − KL_v) per sequence: KL_v becomes max(KL_v, λ)."""
        if self.kl_v_free_bits > 0 and kl_weight > 0:
            shortfall = torch.relu(self.kl_v_free_bits - self.kl_v(x))
            pyro.factor("kl_v_free_bits", -kl_weight * shortfall)

    def kl_v(self, x: torch.Tensor) -> torch.Tensor:
        """KL(q(v | x) ‖ N(0, I)) in nats per sequence, ``(B,)`` (analytic; with the −1 term, so
        without the paper's +½·V offset). Differentiable; wrap in ``torch.no_grad`` to report."""
        loc, scale = self.inference.static(self.inference.features(x))
        return normal_kl(loc, scale, torch.zeros_like(loc), torch.ones_like(scale)).sum(-1)

    def generate(self, n: int, T: int) -> torch.Tensor:
        like = next(self.parameters())
        v = self.prior_v(n, like).sample()
        z = self.prior.trajectory(n, T, self.z_dim, like).rsample()
        return self.likelihood.mean(self.decoder(v, z))

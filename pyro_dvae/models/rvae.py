"""RVAE: the recurrent VAE (Leglaive et al. ICASSP 2020; spec §2.6), causal and non-causal.

Notation: x_t (B, T, D) observed frame, z_t (B, T, L) latent, h_t (B, T, H_h or 2·H_h) the
decoder's LSTM state, g^x_t (B, T, H_x or 2·H_x) and g^z_t (B, T, H_z) the guide's summaries
of x and of the sampled past of z, y_t (B, T, D) decoder output.

Generative model: an i.i.d. standard-normal prior and an LSTM decoder over all the latents::

    p(x, z) = ∏_t p(x_t | z_{1:t}) p(z_t)      causal       (bidir_h=False: LSTM_h forward)
    p(x, z) = ∏_t p(x_t | z_{1:T}) p(z_t)      non-causal   (bidir_h=True: LSTM_h bidirectional)
    p(z_t) = N(0, I),   h = LSTM_h(MLP_zh(z_{1:T})),   y_t = Lin(MLP_hx(h_t))

Inference model, with g^z_t = LSTM_gz(MLP_zgz(z_{t−1})) summarising z_{1:t−1} (z_0 = 0)::

    q(z | x) = ∏_t q(z_t | z_{1:t−1}, g^x_t) = N(μ_t, σ_t²),
    [μ_t, log σ_t²] = Lin(MLP_gz([g^x_t, g^z_t]))

* ``guide=causal``: g^x = LSTM over MLP_xgx(x) run backward in time, so g^x_t summarises
  x_{t:T} and q(z_t | z_{1:t−1}, x_{t:T}).
* ``guide=noncausal``: a bi-LSTM run on the time-reversed MLP_xgx(x) and re-reversed, so
  g^x_t = [summary(x_{t:T}), summary(x_{1:t})] (2·H_x) and q(z_t | z_{1:t−1}, x_{1:T}).

``model=rvae_causal`` is the causal model with the causal guide, ``model=rvae_noncausal`` the
non-causal model with the noncausal guide; either guide works with either model.

Speed: g^x is one RNN call, through the whole-sequence scan of :mod:`pyro_dvae.scan` (x needs
no gradient, which oneDNN's LSTM would compute anyway), and the decoder one ``nn.LSTM`` call.
Sampling z steps LSTM_gz one frame at a time (g^z_t needs the freshly sampled z_{t−1}); scoring a
given z runs it once over shift(z). The first layer after the concatenation is split,
``W [g^x_t, g^z_t] + b = (W^x g^x_t + b) + W^z g^z_t``, and its x part computed for every frame
before the loop (:meth:`RVAEInference.x_part`), whose frames and W^z are taken apart once
(:meth:`RVAEInference.sampler`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution

from pyro_dvae.distributions import Step, Trajectory, diag_normal
from pyro_dvae.likelihoods import Likelihood
from pyro_dvae.models.base import LatentDecoderDVAE
from pyro_dvae.models.priors import StandardNormal
from pyro_dvae.nn import (
    MLP,
    GaussianHead,
    LSTMState,
    OutputLinear,
    lstm,
    lstm_step,
    run_rnn,
    run_rnn_fast,
    scale_from_logvar,
    shift,
)

GUIDES = {"causal": False, "noncausal": True}
"""Guide name → bidirectional LSTM over x (the spec's ``bidir_g_x``)."""


class RVAEInference(nn.Module):
    """q(z_t | z_{1:t−1}, g^x_t). ``forward(x (B, T, D)) -> Trajectory`` over z (B, T, L)."""

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        dense_x_gx: Sequence[int],
        dim_rnn_g_x: int,
        bidir_g_x: bool,
        dense_z_gz: Sequence[int],
        dim_rnn_g_z: int,
        dense_g_z: Sequence[int],
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.mlp_x_gx = MLP(x_dim, dense_x_gx, activation)
        self.rnn_gx = lstm(self.mlp_x_gx.out_dim, dim_rnn_g_x, bidir_g_x)
        self.mlp_z_gz = MLP(z_dim, dense_z_gz, activation)
        self.rnn_gz = lstm(self.mlp_z_gz.out_dim, dim_rnn_g_z)
        self.gx_dim = gx_dim = dim_rnn_g_x * (2 if bidir_g_x else 1)
        self.mlp_g_z = MLP(gx_dim + dim_rnn_g_z, dense_g_z, activation)
        self.head = GaussianHead(self.mlp_g_z.out_dim, z_dim)

    def summary(self, x: torch.Tensor) -> torch.Tensor:
        """g^x (B, T, H_x or 2·H_x): the LSTM over MLP_xgx(x) on the time-reversed sequence."""
        return run_rnn_fast(self.rnn_gx, self.mlp_x_gx(x), backward=True)

    def first_layer(self) -> nn.Linear:
        """The affine layer applied to [g^x_t, g^z_t]: MLP_gz's first, or the head's."""
        return self.mlp_g_z[0] if len(self.mlp_g_z) else self.head.linear

    def x_part(self, gx: torch.Tensor) -> torch.Tensor:
        """``W^x g^x_t + b`` of :meth:`first_layer` for every frame: ``(B, T, ·)``."""
        layer = self.first_layer()
        return F.linear(gx, layer.weight[:, : self.gx_dim], layer.bias)

    def z_weight(self) -> torch.Tensor:
        """W^z, the columns of :meth:`first_layer`'s weight that read g^z_t: ``(·, H_z)``."""
        return self.first_layer().weight[:, self.gx_dim :]

    def posterior_from_parts(self, ax: torch.Tensor, gz: torch.Tensor) -> Distribution:
        """q(z_t | ·) from the x part ``ax`` of the first layer and g^z_t; any leading dims.
        Equals :meth:`posterior` of (g^x, g^z) for ``ax = x_part(g^x)``."""
        return self.posterior_from_first(ax + F.linear(gz, self.z_weight()))

    def posterior_from_first(self, pre: torch.Tensor) -> Distribution:
        """q(z_t | ·) from the output ``pre`` of :meth:`first_layer` (before its activation)."""
        if len(self.mlp_g_z):  # the rest of MLP_gz (its first activation on), then the head
            for layer in list(self.mlp_g_z)[1:]:
                pre = layer(pre)
            loc, scale = self.head(pre)
        else:
            loc, logvar = pre.chunk(2, dim=-1)
            scale = scale_from_logvar(logvar)
        return diag_normal(loc, scale)

    def posterior(self, gx: torch.Tensor, gz: torch.Tensor) -> Distribution:
        """q(z_t | ·) from [g^x_t, g^z_t]; any leading dims."""
        return diag_normal(*self.head(self.mlp_g_z(torch.cat([gx, gz], dim=-1))))

    def sampler(self, gx: torch.Tensor) -> Step:
        """The sampling step along g^x (B, T, ·): advance LSTM_gz on z_{t−1} (B, L), then
        q(z_t | ·) from ``a^x_t + W^z g^z_t``, with ``a^x = x_part(g^x)`` one product over all t.
        Its frames are taken apart once (``unbind``) and W^z sliced and transposed once: a slice
        per step would fill a zero (B, T, ·) tensor, or a zero weight, in the backward pass and
        add it. Same parameters and values as :meth:`posterior` of [g^x_t, g^z_t]."""
        ax_frames, w_z_t = self.x_part(gx).unbind(1), self.z_weight().t()

        def step(
            t: int, z_prev: torch.Tensor, state: LSTMState | None
        ) -> tuple[Distribution, LSTMState]:
            state = lstm_step(self.rnn_gz, self.mlp_z_gz(z_prev), state)
            return self.posterior_from_first(torch.addmm(ax_frames[t], state[0], w_z_t)), state

        return step

    def parallel(self, gx: torch.Tensor, z: torch.Tensor) -> Distribution:
        """All frames' q(z_t | ·) along a given z (B, T, L): LSTM_gz in one call."""
        gz = run_rnn(self.rnn_gz, self.mlp_z_gz(shift(z)))
        return self.posterior_from_parts(self.x_part(gx), gz)

    def forward(self, x: torch.Tensor) -> Trajectory:
        gx = self.summary(x)
        B, T, _ = x.shape
        return Trajectory(
            step=self.sampler(gx),
            parallel=lambda z: self.parallel(gx, z),
            batch_size=B,
            T=T,
            L=self.z_dim,
            like=x,
        )


class RVAEDecoder(nn.Module):
    """``y = Lin(MLP_hx(LSTM_h(MLP_zh(z))))``: ``forward(z (B, T, L)) -> y (B, T, D)``."""

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        dense_z_h: Sequence[int],
        dim_rnn_h: int,
        bidir_h: bool,
        dense_h_x: Sequence[int],
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.mlp_z_h = MLP(z_dim, dense_z_h, activation)
        self.rnn_h = lstm(self.mlp_z_h.out_dim, dim_rnn_h, bidir_h)
        self.mlp_h_x = MLP(dim_rnn_h * (2 if bidir_h else 1), dense_h_x, activation)
        self.gen_out = OutputLinear(self.mlp_h_x.out_dim, x_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.gen_out(self.mlp_h_x(run_rnn(self.rnn_h, self.mlp_z_h(z))))


class RVAE(LatentDecoderDVAE):
    """Recurrent VAE; ``model=rvae_causal`` (this class's defaults are the causal ones).

    Args:
        x_dim, z_dim, likelihood: see :class:`DVAE`.
        guide: ``causal`` or ``noncausal``; None picks the class default.
        dense_x_gx, dim_rnn_g_x, dense_z_gz, dim_rnn_g_z, dense_g_z: inference-network sizes.
        dense_z_h, dim_rnn_h, dense_h_x: decoder sizes.
        bidir_h: bidirectional decoder LSTM (non-causal model); None picks the class default.
        activation: ``tanh``.
    """

    non_causal: ClassVar[bool] = False
    """Default of ``bidir_h`` and of the guide (``noncausal`` when True)."""

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        likelihood: Likelihood,
        guide: str | None = None,
        dense_x_gx: Sequence[int] = (),
        dim_rnn_g_x: int = 128,
        dense_z_gz: Sequence[int] = (),
        dim_rnn_g_z: int = 128,
        dense_g_z: Sequence[int] = (),
        dense_z_h: Sequence[int] = (),
        dim_rnn_h: int = 128,
        bidir_h: bool | None = None,
        dense_h_x: Sequence[int] = (),
        activation: str = "tanh",
    ) -> None:
        super().__init__(x_dim, z_dim, likelihood)
        noncausal_guide = self.choose_guide(
            guide, GUIDES, default="noncausal" if self.non_causal else "causal"
        )
        bidir_h = self.non_causal if bidir_h is None else bidir_h
        self.prior = StandardNormal()
        self.decoder = RVAEDecoder(
            x_dim, z_dim, dense_z_h, dim_rnn_h, bidir_h, dense_h_x, activation
        )
        self.inference = RVAEInference(
            x_dim,
            z_dim,
            dense_x_gx,
            dim_rnn_g_x,
            noncausal_guide,
            dense_z_gz,
            dim_rnn_g_z,
            dense_g_z,
            activation,
        )


class NonCausalRVAE(RVAE):
    """``model=rvae_noncausal``: bidirectional decoder LSTM and the noncausal guide by default."""

    non_causal = True

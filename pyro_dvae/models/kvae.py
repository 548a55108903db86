"""KVAE: the Kalman variational auto-encoder (Fraccaro et al. 2017, arXiv 1710.05741).

Notation: x_t (B, T, D) observed frame, a_t (B, T, N) its latent encoding, z_t (Z,) the state of
a linear-Gaussian state-space model (LGSSM) over a, y_t (B, T, D) decoder output; a_0 = 0.

    p(x, a) = ∏_t p(x_t | a_t) · p(a_{1:T})
    p(a_{1:T}) = ∫ p(a, z) dz, the LGSSM (:mod:`pyro_dvae.lgssm`), z_0 ~ N(0, σ_0² I):
        z_t = A_t z_{t−1} + B_t u_t + ε_t,   ε_t ~ N(0, Q),    u_t = a_{t−1} (or no control)
        a_t = C_t z_t + δ_t,                 δ_t ~ N(0, R)
        (A_t, B_t, C_t) = Σ_k α_t^k (A^k, B^k, C^k),  α_t = softmax(Lin(LSTM(a_{0:t−1})))
    q(a | x) = ∏_t N(a_t; heads(enc(x_t)))                      (frame-wise)

The frame networks enc and dec are MLPs (``encoder=mlp``) or the authors' convolutional VAE
(``encoder=conv``, :mod:`pyro_dvae.conv`); q's variance is free (a log-variance head) or, as
in the authors' code, ``a_var_max · sigmoid(·)`` (``a_var_max``, their 0.03 = R's variance).

The ELBO is E_q[λ log p(x | a) + log p(a) − log q(a | x)], with z integrated out exactly:
log p(a) = Σ_t log p(a_t | a_{<t}) from the Kalman filter. Since α_t and u_t depend on a_{<t}
only, p(a) is an autoregressive density whose steps are the filter's one-step predictives
N(C_t m_{t|t−1}, C_t P_{t|t−1} C_tᵀ + R), so the prior is an ordinary
:class:`~pyro_dvae.distributions.Trajectory`: drawn step by step (generation), scored along a
given a with one filter pass. Under ``TraceMeanField_ELBO`` the latent term is
Σ_t KL(q(a_t | x_t) ‖ p(a_t | a_{<t})) at the guide's draw (Pyro registers the KL of a
diagonal against a full-covariance Gaussian), an unbiased estimate of the same ELBO;
``train.elbo=trace`` scores log q − log p of the draw instead. λ (``recon_scale``) weighs the
reconstruction while the model trains (``model.train()``; the authors' 0.3); validation and
evaluation (``model.eval()``) score the true ELBO, λ = 1, as the authors' test does.

Imputation (:meth:`KVAE.impute`): frames x_t that are missing get a_t from the LGSSM given the
encodings of the observed frames, by Kalman smoothing (or filtering), then are decoded.

Training schedules of the authors' code: ``only_vae_epochs`` (the VAE part alone first) is the
trainer's KL warm-up (``train.warmup_every``): while the KL weight is 0 the latent site is
masked, so only the encoder and decoder learn. ``kf_update_steps`` (the α-network joins after
the VAE and the LGSSM matrices) is ``train.freeze=[dynamics.alpha_rnn, dynamics.alpha_out]``
with ``train.freeze_epochs`` (their bouncing balls: no VAE-only epochs, α frozen for 10).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro import poutine
from pyro.distributions import MultivariateNormal
from torch import nn
from torch.nn import functional as F

from pyro_dvae.conv import ConvDecoder, ConvEncoder
from pyro_dvae.distributions import IndependentTrajectory, Trajectory, diag_normal
from pyro_dvae.lgssm import LGSSM, Filtered, emission, kalman_filter, predict, rts_smoother, update
from pyro_dvae.likelihoods import Likelihood
from pyro_dvae.models.base import DVAE
from pyro_dvae.nn import (
    MLP,
    GaussianHead,
    LSTMState,
    OutputLinear,
    float32_math,
    lstm,
    lstm_step,
    shift,
)

CONTROLS = ("previous", "none")
"""``control``: u_t = a_{t−1} (the paper's choice), or no control input."""

ENCODERS = ("mlp", "conv")
"""``encoder``: MLPs over the flattened frame (``dense_x_a``), or the convolutional networks of
:mod:`pyro_dvae.conv` (``conv_channels``, ``kernel_size``) for square frames."""

NOISES = ("fixed", "learned")
"""``noise``: Q and R fixed at their initial values (the paper's choice; learned noise can let
the LGSSM explain a with a large transition noise instead of dynamics), or learned (full
covariances)."""

StepState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, LSTMState]
"""The prior's recurrent state after step t: (m_{t|t−1}, P_{t|t−1}, C_t, C_t m_{t|t−1},
chol(S_t), α's LSTM state (h, c))."""


class Covariance(nn.Module):
    """A covariance ``L Lᵀ`` ``(n, n)`` from a lower-triangular factor with a positive (exp)
    diagonal, initially ``scale² I``; a constant unless ``learn``."""

    def __init__(self, n: int, scale: float, learn: bool) -> None:
        super().__init__()
        raw = torch.diag(torch.full((n,), float(scale)).log())
        if learn:
            self.raw = nn.Parameter(raw)
        else:
            self.register_buffer("raw", raw)

    def scale_tril(self) -> torch.Tensor:
        return self.raw.tril(-1) + torch.diag(self.raw.diagonal().exp())

    def forward(self) -> torch.Tensor:
        tril = self.scale_tril()
        return tril @ tril.mT


class BoundedGaussianHead(nn.Module):
    """Affine map to the mean and a variance bounded above: ``σ² = var_max · sigmoid(·)``
    (the authors' encoder, with var_max the emission noise variance).
    ``forward(h (..., in_dim)) -> (loc (..., out_dim), scale (..., out_dim))``."""

    def __init__(self, in_dim: int, out_dim: int, var_max: float) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, 2 * out_dim)
        self.var_max = var_max

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.linear(h).chunk(2, dim=-1)
        return loc, (self.var_max * torch.sigmoid(raw)).sqrt()


class LGSSMPrior(nn.Module):
    """p(a_{1:T}): an LGSSM over a whose matrices mix K base matrices by α_t.

    Args:
        a_dim: N. z_dim: Z. K: number of base matrices.
        dim_rnn_alpha: LSTM size of the dynamics parameter network (α).
        control: ``previous`` (u_t = a_{t−1}) or ``none``.
        noise: ``fixed`` or ``learned`` Q and R.
        init_kf_mat: B^k and C^k start as ``init_kf_mat · N(0, 1)``; A^k = I.
        transition_scale, emission_scale: initial Q = transition_scale² I, R = emission_scale² I.
        init_scale: z_0 ~ N(0, init_scale² I).
    """

    def __init__(
        self,
        a_dim: int,
        z_dim: int,
        K: int,
        dim_rnn_alpha: int,
        control: str = "previous",
        noise: str = "fixed",
        init_kf_mat: float = 0.05,
        transition_scale: float = 0.3,
        emission_scale: float = 0.2,
        init_scale: float = 4.0,
    ) -> None:
        super().__init__()
        if control not in CONTROLS:
            raise ValueError(f"model.control={control!r}: expected one of {list(CONTROLS)}")
        if noise not in NOISES:
            raise ValueError(f"model.noise={noise!r}: expected one of {list(NOISES)}")
        self.a_dim, self.z_dim, self.K = a_dim, z_dim, K
        self.A = nn.Parameter(torch.eye(z_dim).repeat(K, 1, 1))
        self.B = (
            nn.Parameter(init_kf_mat * torch.randn(K, z_dim, a_dim))
            if control == "previous"
            else None
        )
        self.C = nn.Parameter(init_kf_mat * torch.randn(K, a_dim, z_dim))
        self.Q = Covariance(z_dim, transition_scale, noise == "learned")
        self.R = Covariance(a_dim, emission_scale, noise == "learned")
        self.register_buffer("init_loc", torch.zeros(z_dim))
        self.register_buffer("init_cov", init_scale**2 * torch.eye(z_dim))
        self.alpha_rnn = lstm(a_dim, dim_rnn_alpha)
        self.alpha_out = nn.Linear(dim_rnn_alpha, K)

    def weights(self, a_prev: torch.Tensor) -> torch.Tensor:
        """α_t from a_{0:t−1}: ``a_prev (B, T, N)`` holds a_{t−1} at t → ``(B, T, K)``."""
        return F.softmax(self.alpha_out(self.alpha_rnn(a_prev)[0]), dim=-1)

    def mix(
        self, alpha: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(A_t, B_t u_t, C_t)`` from ``alpha (..., K)`` and the control ``u (..., N)``."""
        A = torch.einsum("...k,kij->...ij", alpha, self.A)
        C = torch.einsum("...k,kij->...ij", alpha, self.C)
        if self.B is None:
            b = u.new_zeros(*u.shape[:-1], self.z_dim)
        else:
            b = torch.einsum("...k,kij,...j->...i", alpha, self.B, u)
        return A, b, C

    def lgssm(self, a_prev: torch.Tensor) -> LGSSM:
        """The LGSSM along a given a: ``a_prev (B, T, N)`` holds a_{t−1} (α_t's input and u_t)."""
        A, b, C = self.mix(self.weights(a_prev), a_prev)
        B = a_prev.shape[0]
        return LGSSM(
            init_loc=self.init_loc.expand(B, -1),
            init_cov=self.init_cov.expand(B, -1, -1),
            A=A,
            b=b,
            C=C,
            Q=self.Q(),
            R=self.R(),
        )

    @float32_math
    def filter(
        self, a: torch.Tensor, observed: torch.Tensor | None = None
    ) -> tuple[LGSSM, Filtered]:
        """The LGSSM along ``a (B, T, N)`` and its Kalman filter (``observed (B, T)`` bool)."""
        model = self.lgssm(shift(a))
        return model, kalman_filter(model, a, observed)

    @float32_math
    def step(
        self,
        t: int,
        a_prev: torch.Tensor,
        state: StepState | None,
        observed: torch.Tensor | None = None,
    ) -> tuple[MultivariateNormal, StepState]:
        """p(a_t | a_{<t}) given ``a_prev (B, N)`` = a_{t−1}: update the filter with a_{t−1}
        (skipped where ``observed[:, t−1]`` is False), advance α's LSTM, predict z_t and a_t."""
        if state is None:
            batch = a_prev.shape[0]
            loc, cov = self.init_loc.expand(batch, -1), self.init_cov.expand(batch, -1, -1)
            rnn: LSTMState | None = None
        else:
            loc, cov, C, obs_loc, obs_tril, rnn = state
            mask = None if observed is None else observed[:, t - 1]
            loc, cov = update(loc, cov, C, obs_loc, obs_tril, a_prev, mask)
        h, c = lstm_step(self.alpha_rnn, a_prev, rnn)
        A, b, C = self.mix(F.softmax(self.alpha_out(h), dim=-1), a_prev)
        loc, cov = predict(loc, cov, A, b, self.Q())
        obs_loc, obs_tril = emission(loc, cov, C, self.R())
        state = (loc, cov, C, obs_loc, obs_tril, (h, c))
        return MultivariateNormal(obs_loc, scale_tril=obs_tril), state

    def trajectory(self, B: int, T: int, like: torch.Tensor) -> Trajectory:
        """p(a_{1:T}) as a Trajectory (batch (B,), event (T, N))."""
        return Trajectory(
            step=self.step,
            parallel=lambda a: self.filter(a)[1].predictive(),
            batch_size=B,
            T=T,
            L=self.a_dim,
            like=like,
        )

    def smooth(
        self, a: torch.Tensor, observed: torch.Tensor, smooth: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """E[a_t | observed a] ``(B, T, N)`` and the α used ``(B, T, K)``.

        α_t and u_t need a_{t−1} also where it is missing: it is filled with the one-step
        prediction C_t m_{t|t−1} while filtering forward (the paper's choice). Given the filled
        sequence the LGSSM is fixed, and the RTS smoother (``smooth``) or the filter gives
        m_t; the estimate is C_t m_t, the observed a_t where present.
        """
        filled = self.fill(a, observed)
        model, filtered = self.filter(filled, observed)
        loc = rts_smoother(model, filtered)[0] if smooth else filtered.loc
        estimate = (model.C @ loc[..., None])[..., 0]
        return torch.where(observed[..., None], a, estimate), self.weights(shift(filled))

    def fill(self, a: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """``a (B, T, N)`` with each missing a_t replaced by its one-step prediction
        E[a_t | observed a_{<t}] = C_t m_{t|t−1}, filtering forward."""
        a_prev, state, filled = torch.zeros_like(a[:, 0]), None, []
        for t in range(a.shape[1]):
            d, state = self.step(t, a_prev, state, observed)
            a_prev = torch.where(observed[:, t, None], a[:, t], d.mean)
            filled.append(a_prev)
        return torch.stack(filled, dim=1)


class KVAE(DVAE):
    """Kalman VAE with a frame-wise VAE and an LGSSM prior over its latent a.

    Args:
        x_dim, likelihood: see :class:`DVAE`.
        z_dim: LGSSM state size Z. a_dim: VAE latent size N.
        K: base matrices. dim_rnn_alpha: LSTM size of the α-network.
        encoder: ``mlp`` or ``conv`` (:data:`ENCODERS`), for both frame networks.
        dense_x_a: MLP encoder hidden sizes; dense_a_x: MLP decoder hidden sizes (None: reversed).
        conv_channels, kernel_size: the convolutional networks' channels and k.
        activation: of the frame networks' hidden layers (``tanh`` or ``relu``).
        a_var_max: None (q's log-variance is free) or the bound of q's variance.
        recon_scale: λ, the weight of log p(x | a) in training (1: the ELBO).
        control, noise, init_kf_mat, transition_scale, emission_scale, init_scale: see
            :class:`LGSSMPrior`.
    """

    def __init__(
        self,
        x_dim: int,
        likelihood: Likelihood,
        z_dim: int = 4,
        a_dim: int = 2,
        K: int = 3,
        dim_rnn_alpha: int = 50,
        dense_x_a: Sequence[int] = (128,),
        dense_a_x: Sequence[int] | None = None,
        control: str = "previous",
        noise: str = "fixed",
        init_kf_mat: float = 0.05,
        transition_scale: float = 0.3,
        emission_scale: float = 0.2,
        init_scale: float = 4.0,
        activation: str = "tanh",
        encoder: str = "mlp",
        conv_channels: Sequence[int] = (32, 32, 32),
        kernel_size: int = 3,
        a_var_max: float | None = None,
        recon_scale: float = 1.0,
    ) -> None:
        super().__init__(x_dim, z_dim, likelihood)
        check_options(encoder, a_var_max, recon_scale)
        self.a_dim, self.recon_scale = a_dim, recon_scale
        if encoder == "conv":
            features = ConvEncoder(x_dim, conv_channels, kernel_size, activation)
        else:
            features = MLP(x_dim, dense_x_a, activation)
        head = (
            GaussianHead(features.out_dim, a_dim)
            if a_var_max is None
            else BoundedGaussianHead(features.out_dim, a_dim, a_var_max)
        )
        self.encoder = nn.Sequential(features, head)
        if encoder == "conv":
            self.decoder = ConvDecoder(a_dim, x_dim, conv_channels, kernel_size, activation)
        else:
            hidden = list(reversed(dense_x_a)) if dense_a_x is None else dense_a_x
            mlp_a_x = MLP(a_dim, hidden, activation)
            self.decoder = nn.Sequential(mlp_a_x, OutputLinear(mlp_a_x.out_dim, x_dim))
        self.dynamics = LGSSMPrior(
            a_dim,
            z_dim,
            K,
            dim_rnn_alpha,
            control,
            noise,
            init_kf_mat,
            transition_scale,
            emission_scale,
            init_scale,
        )

    def inference(self, x: torch.Tensor) -> IndependentTrajectory:
        """q(a | x) = ∏_t N(a_t; μ(x_t), σ(x_t)²)."""
        return IndependentTrajectory(diag_normal, *self.encoder(x))

    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
        B, T, _ = x.shape
        with self.sequences(x):
            a = self.latent("a", self.dynamics.trajectory(B, T, x), kl_weight)
            with poutine.scale(scale=self.recon_scale if self.training else 1.0):
                return self.observe(self.decoder(a), x)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        with self.sequences(x):
            self.latent("a", self.inference(x), kl_weight)

    def generate(self, n: int, T: int) -> torch.Tensor:
        return self.likelihood.mean(self.decoder(self.sample_a(n, T)))

    def sample_a(self, n: int, T: int) -> torch.Tensor:
        """a ``(n, T, N)`` drawn from the LGSSM prior, step by step."""
        return self.dynamics.trajectory(n, T, next(self.parameters())).rsample()

    def impute(self, x: torch.Tensor, observed: torch.Tensor, smooth: bool = True) -> torch.Tensor:
        """Decoder output ``y (B, T, D)`` where the frames with ``observed (B, T)`` False are
        inferred from the others: a_t of the observed frames is q's mean, a_t of the missing
        ones the LGSSM's smoothed (or, ``smooth=False``, filtered) estimate."""
        a = self.encoder(x)[0]
        return self.decoder(self.dynamics.smooth(a, observed, smooth)[0])


def check_options(encoder: str, a_var_max: float | None, recon_scale: float) -> None:
    """Refuse frame-network options that cannot work, naming the ``model.`` key."""
    if encoder not in ENCODERS:
        raise ValueError(f"model.encoder={encoder!r}: expected one of {list(ENCODERS)}")
    if a_var_max is not None and not a_var_max > 0:
        raise ValueError(f"model.a_var_max={a_var_max!r}: expected null or a number > 0")
    if not recon_scale > 0:
        raise ValueError(f"model.recon_scale={recon_scale!r}: expected a number > 0")

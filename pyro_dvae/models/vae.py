"""VAE (Kingma & Welling 2014) applied frame by frame (spec §2.1).

Notation: x_t (B, T, D) observed frame, z_t (B, T, L) latent, y_t (B, T, D) decoder output.

    p(x, z) = ∏_t p(x_t | z_t) p(z_t),       p(z_t) = N(0, I)
    q(z | x) = ∏_t q(z_t | x_t) = N(μ(x_t), σ(x_t)²)

Every frame is independent: the baseline that the dynamical models improve on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_dvae.distributions import IndependentTrajectory, diag_normal
from pyro_dvae.likelihoods import Likelihood
from pyro_dvae.models.base import LatentDecoderDVAE
from pyro_dvae.models.priors import StandardNormal
from pyro_dvae.nn import MLP, GaussianHead, OutputLinear


class VAE(LatentDecoderDVAE):
    """Frame-wise VAE. The decoder's hidden sizes are the encoder's reversed.

    Args:
        x_dim, z_dim, likelihood: see :class:`DVAE`.
        dense_x_z: encoder hidden sizes (speech ``[128]``, motion ``[32]``).
        activation: ``tanh``.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        likelihood: Likelihood,
        dense_x_z: Sequence[int] = (128,),
        activation: str = "tanh",
    ) -> None:
        super().__init__(x_dim, z_dim, likelihood)
        self.prior = StandardNormal()
        mlp_x_z = MLP(x_dim, dense_x_z, activation)
        self.encoder = nn.Sequential(mlp_x_z, GaussianHead(mlp_x_z.out_dim, z_dim))
        mlp_z_x = MLP(z_dim, list(reversed(dense_x_z)), activation)
        self.decoder = nn.Sequential(mlp_z_x, OutputLinear(mlp_z_x.out_dim, x_dim))

    def inference(self, x: torch.Tensor) -> IndependentTrajectory:
        """q(z | x) = ∏_t N(z_t; μ(x_t), σ(x_t)²)."""
        return IndependentTrajectory(diag_normal, *self.encoder(x))

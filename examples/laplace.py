# laplace.py: a DKF transition with Laplace noise, prior=laplace
import torch
from pyro.distributions import Laplace
from torch import nn

from pyro_dvae.models.priors import Transition, register_transition


@register_transition("laplace")
class LaplaceTransition(Transition):
    """z_t = A z_{t-1} + c + b ε_t, ε_t ~ Laplace(0, 1) per dimension, b = exp(log_b) learned."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(z_dim, z_dim)
        self.log_b = nn.Parameter(torch.zeros(z_dim))

    def forward(self, z_prev):  # (..., L) -> distribution of z_t, event (L,)
        loc = self.linear(z_prev)
        return Laplace(loc, self.log_b.exp().expand_as(loc)).to_event(1)

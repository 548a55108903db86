# gru_filter.py: a filtering guide for DKF, guide=gru_filter
import torch
from pyro.distributions import Normal
from torch import nn

from pyro_dvae.distributions import Trajectory
from pyro_dvae.models.dkf import register_guide
from pyro_dvae.nn import shift


@register_guide("gru_filter")
class GRUFilter(nn.Module):
    """q(z_t | z_{t-1}, x_{1:t}) = N(W [h_t, z_{t-1}] + c, diag(s²)), h_t = GRU(x_{1:t}),
    one learned s = exp(log_s) for every step."""

    def __init__(self, x_dim: int, z_dim: int, dim_rnn_gx: int, **_) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.rnn = nn.GRU(x_dim, dim_rnn_gx, batch_first=True)
        self.loc = nn.Linear(dim_rnn_gx + z_dim, z_dim)
        self.log_s = nn.Parameter(torch.zeros(z_dim))

    def q(self, h, z_prev):  # h (..., H), z_prev (..., L) -> distribution of z_t, event (L,)
        loc = self.loc(torch.cat([h, z_prev], dim=-1))
        return Normal(loc, self.log_s.exp().expand_as(loc)).to_event(1)

    def forward(self, x):  # (B, T, D) -> Trajectory over z (B, T, L)
        h, _ = self.rnn(x)
        B, T, _ = x.shape

        def step(t, z_prev, state):  # drawing: z_t given the sampled z_{t-1}
            return self.q(h[:, t], z_prev), state

        def parallel(z):  # scoring a given z (B, T, L): every step at once
            return self.q(h, shift(z))

        return Trajectory(step, parallel, B, T, self.z_dim, like=x)

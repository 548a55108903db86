"""Latent priors as components, selected with ``prior=<name>``.

A prior builds the model-side distribution of ``z_{1:T}`` (a
:class:`~pyro_dvae.distributions.Trajectory`, batch ``(B,)``, event ``(T, L)``).

* :class:`StandardNormal`: ``p(z_t) = N(0, I)``, i.i.d. over t (VAE, STORN, RVAE).
* :class:`Transition` subclasses: a first-order Markov prior ``p(z_t | z_{t−1})`` with
  z_0 = 0 (DKF), whose ``forward(z_prev)`` returns the distribution of z_t: any Pyro
  distribution with ``rsample`` and event ``(L,)``.
  :class:`GatedTransition` is the DKF/DMM transition (default ``gated``);
  :class:`LinearTransition` (``prior=linear``) a linear-Gaussian one;
  :class:`StudentTTransition` (``prior=student_t``) the gated transition with Student-t noise,
  the worked example of the README.

To add a Markov prior, subclass :class:`Transition`, implement ``forward(z_prev) ->
distribution`` and decorate it with ``@register_transition("name")``; add
``configs/prior/name.yaml`` holding ``name: name``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.distributions import StudentT
from torch import nn
from torch.distributions import Distribution
from torch.nn import functional as F

from pyro_dvae.distributions import IndependentTrajectory, Trajectory, diag_normal
from pyro_dvae.nn import shift

TRANSITIONS: dict[str, type[Transition]] = {}


def register_transition(name: str) -> Callable[[type[Transition]], type[Transition]]:
    """Class decorator: make a :class:`Transition` available as ``prior=<name>``."""

    def wrap(cls: type[Transition]) -> type[Transition]:
        TRANSITIONS[name] = cls
        return cls

    return wrap


def build_transition(name: str, z_dim: int) -> Transition:
    if name not in TRANSITIONS:
        raise ValueError(
            f"prior.name={name!r} is not a Markov prior; expected one of {sorted(TRANSITIONS)}"
        )
    return TRANSITIONS[name](z_dim)


class StandardNormal(nn.Module):
    """``p(z_t) = N(0, I)`` for every t."""

    def trajectory(self, B: int, T: int, L: int, like: torch.Tensor) -> Trajectory:
        return IndependentTrajectory.standard(B, T, L, like)


class Transition(nn.Module):
    """``forward(z_prev (..., L)) -> p(z_t | z_{t−1})``, a distribution with event (L,) and the
    leading dims of z_prev."""

    def trajectory(self, B: int, T: int, L: int, like: torch.Tensor) -> Trajectory:
        """The Markov chain over T steps from z_0 = 0: sampled step by step, scored in parallel."""
        return Trajectory(
            step=lambda t, z_prev, state: (self(z_prev), None),
            parallel=lambda z: self(shift(z)),
            batch_size=B,
            T=T,
            L=L,
            like=like,
        )


@register_transition("gated")
class GatedTransition(Transition):
    """DKF's gated transition (spec §2.2), six ``Linear(L→L)``::

        gate = sigmoid(W2 relu(W1 z)),  prop = W4 relu(W3 z)
        μ = (1 − gate) ⊙ W_μ z + gate ⊙ prop,   σ² = softplus(W_σ relu(prop))

    (softplus gives the *variance* here, as in the original; 1e-10 keeps it positive.)
    """

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.gate_hidden, self.gate_out = nn.Linear(z_dim, z_dim), nn.Linear(z_dim, z_dim)
        self.prop_hidden, self.prop_out = nn.Linear(z_dim, z_dim), nn.Linear(z_dim, z_dim)
        self.loc_linear, self.var_linear = nn.Linear(z_dim, z_dim), nn.Linear(z_dim, z_dim)

    def forward(self, z_prev: torch.Tensor) -> Distribution:
        return diag_normal(*self.loc_scale(z_prev))

    def loc_scale(self, z_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ) of the gated transition, each with the shape of z_prev."""
        gate = torch.sigmoid(self.gate_out(F.relu(self.gate_hidden(z_prev))))
        prop = self.prop_out(F.relu(self.prop_hidden(z_prev)))
        loc = (1 - gate) * self.loc_linear(z_prev) + gate * prop
        var = F.softplus(self.var_linear(F.relu(prop))) + 1e-10
        return loc, var.sqrt()


@register_transition("linear")
class LinearTransition(Transition):
    """Linear-Gaussian transition ``z_t = A z_{t−1} + b + ε``, ``ε ~ N(0, diag(σ²))``."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(z_dim, z_dim)
        self.log_scale = nn.Parameter(torch.zeros(z_dim))

    def forward(self, z_prev: torch.Tensor) -> Distribution:
        return diag_normal(self.linear(z_prev), self.log_scale.exp().expand_as(z_prev))


@register_transition("student_t")
class StudentTTransition(GatedTransition):
    """The gated transition with heavy-tailed noise: ``z_t = μ(z_{t−1}) + σ(z_{t−1}) ε_t``,
    ``ε_t ~ Student-t(ν)`` per dimension, ν > 2 learned (initially 5).

    No KL between a Gaussian guide step and a Student-t is registered, so the ELBO scores this
    prior with ``log q(z) − log p(z)`` of the sampled trajectory instead of an analytic KL.
    """

    def __init__(self, z_dim: int) -> None:
        super().__init__(z_dim)
        self.log_df_minus_2 = nn.Parameter(torch.full((z_dim,), math.log(3.0)))

    def forward(self, z_prev: torch.Tensor) -> Distribution:
        loc, scale = self.loc_scale(z_prev)
        return StudentT(2 + self.log_df_minus_2.exp(), loc, scale).to_event(1)

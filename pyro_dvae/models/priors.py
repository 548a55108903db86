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

import inspect
import math
from collections.abc import Callable

import torch
from pyro.distributions import StudentT
from torch import nn
from torch.distributions import Distribution
from torch.nn import functional as F

from pyro_dvae.distributions import (
    IndependentTrajectory,
    Trajectory,
    diag_normal,
    require_rsample,
)
from pyro_dvae.nn import full_precision, shift
from pyro_dvae.registry import Registry

TRANSITIONS: Registry[type[Transition]] = Registry(
    "prior.name", "Markov prior", "pyro_dvae.models.priors.register_transition"
)


def register_transition(name: str) -> Callable[[type[Transition]], type[Transition]]:
    """Class decorator: make a :class:`Transition` available as ``prior=<name>`` (in a module
    outside this package too, loaded with ``plugins=[module]``)."""
    return TRANSITIONS.register(name)


def build_transition(name: str, z_dim: int, **options) -> Transition:
    """The transition ``name`` over z_dim latents, with the ``prior.options`` of its config.

    Raises:
        ValueError: an unknown name (saying how to register one), options the class does not
            take, or a step distribution without ``rsample`` (tried on z_{t−1} = 0, ``(1, L)``).
    """
    cls = TRANSITIONS.lookup(name)
    try:
        inspect.signature(cls).bind(z_dim, **options)
    except TypeError as err:
        raise ValueError(
            f"prior.options={options!r}: not options of prior {name!r} ({err})"
        ) from None
    transition = cls(z_dim, **options)
    with torch.no_grad():
        require_rsample(transition(torch.zeros(1, z_dim)), f"prior.name={name!r}: {cls.__name__}")
    return transition


class StandardNormal(nn.Module):
    """``p(z_t) = N(0, I)`` for every t."""

    def trajectory(self, B: int, T: int, L: int, like: torch.Tensor) -> Trajectory:
        return IndependentTrajectory.standard(B, T, L, like)


class Transition(nn.Module):
    """``forward(z_prev (..., L)) -> p(z_t | z_{t−1})``, a distribution with event (L,) and the
    leading dims of z_prev. The chain starts from z_0 = 0, or from a learned z_0 (L,) after
    :meth:`learn_initial_state`."""

    def __init__(self) -> None:
        super().__init__()
        self.register_parameter("z_0", None)

    def learn_initial_state(self, z_dim: int) -> None:
        """Make z_0 a parameter (L,), zero at the start, as Pyro's DMM does."""
        self.z_0 = nn.Parameter(torch.zeros(z_dim))

    def trajectory(self, B: int, T: int, L: int, like: torch.Tensor) -> Trajectory:
        """The Markov chain over T steps from z_0: sampled step by step, scored in parallel."""
        return Trajectory(
            step=lambda t, z_prev, state: (self(z_prev), None),
            parallel=lambda z: self(shift(z, self.z_0)),
            batch_size=B,
            T=T,
            L=L,
            like=like,
            z_0=self.z_0,
        )


GATED_SCALES = ("sqrt_softplus", "softplus")
"""How the gated transition's σ comes from its last layer (``prior.options.scale``)."""
LOC_INITS = ("torch", "identity")
"""Initialisations of the gated transition's W_μ (``prior.options.loc_init``)."""


@register_transition("gated")
class GatedTransition(Transition):
    """DKF's gated transition (spec §2.2), six ``Linear`` layers, H hidden units::

        gate = sigmoid(W2 relu(W1 z)),  prop = W4 relu(W3 z)       (W1, W3: L→H; W2, W4: H→L)
        μ = (1 − gate) ⊙ W_μ z + gate ⊙ prop
        σ = √softplus(W_σ relu(prop))      scale="sqrt_softplus": softplus gives the *variance*,
                                             as in the original DVAE
        σ = softplus(W_σ relu(prop))       scale="softplus", as in Pyro's DMM

    (1e-10 keeps the softplus positive.)

    Args:
        z_dim: L.
        hidden: H; None: L (the DVAE spec's). Pyro's DMM: 200.
        scale: see above.
        loc_init: ``torch`` (PyTorch's default) or ``identity`` (W_μ = I, b_μ = 0, as in Pyro's
            DMM: μ starts as z_{t−1} where the gate is closed).
    """

    def __init__(
        self,
        z_dim: int,
        hidden: int | None = None,
        scale: str = "sqrt_softplus",
        loc_init: str = "torch",
    ) -> None:
        super().__init__()
        hidden_ok = hidden is None or (type(hidden) is int and hidden >= 1)
        _check_option("hidden", hidden, hidden_ok, "null (z_dim) or an integer >= 1")
        H = z_dim if hidden is None else hidden
        _check_option("scale", scale, scale in GATED_SCALES, f"one of {list(GATED_SCALES)}")
        _check_option("loc_init", loc_init, loc_init in LOC_INITS, f"one of {list(LOC_INITS)}")
        self.scale = scale
        self.gate_hidden, self.gate_out = nn.Linear(z_dim, H), nn.Linear(H, z_dim)
        self.prop_hidden, self.prop_out = nn.Linear(z_dim, H), nn.Linear(H, z_dim)
        self.loc_linear, self.var_linear = nn.Linear(z_dim, z_dim), nn.Linear(z_dim, z_dim)
        if loc_init == "identity":
            nn.init.eye_(self.loc_linear.weight)
            nn.init.zeros_(self.loc_linear.bias)
            self.loc_linear.keeps_init = True

    def forward(self, z_prev: torch.Tensor) -> Distribution:
        return diag_normal(*self.loc_scale(z_prev))

    def loc_scale(self, z_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ) of the gated transition, each with the shape of z_prev."""
        gate = torch.sigmoid(self.gate_out(F.relu(self.gate_hidden(z_prev))))
        prop = self.prop_out(F.relu(self.prop_hidden(z_prev)))
        loc = (1 - gate) * self.loc_linear(z_prev) + gate * prop
        softplus = F.softplus(self.var_linear(F.relu(prop))) + 1e-10
        return loc, softplus.sqrt() if self.scale == "sqrt_softplus" else softplus


def _check_option(key: str, value: object, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"prior.options.{key}={value!r}: expected {expected}")


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
        loc, scale = (full_precision(p) for p in self.loc_scale(z_prev))
        return StudentT(2 + self.log_df_minus_2.exp(), loc, scale).to_event(1)

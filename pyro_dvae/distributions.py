"""Sequence distributions: a whole latent trajectory ``z_{1:T}`` as one Pyro sample site.

Every DVAE latent sequence is a product of diagonal Gaussians whose parameters at step t may
depend on the past of the trajectory itself::

    p(z_{1:T}) = ∏_t N(z_t; μ_t(z_{<t}), σ_t(z_{<t})²)

:class:`GaussianTrajectory` represents such a product with ``batch_shape (B,)`` and
``event_shape (T, L)``. Sampling walks the steps one at a time (only where the parameters
depend on the sampled past); scoring a *given* trajectory needs no loop, because every
``μ_t(z_{<t})`` can be computed in parallel from the shifted trajectory ("teacher forcing").

A guide draws ``z`` from its trajectory distribution; the model scores that same ``z`` under
its prior trajectory. The registered :func:`kl_divergence` is the spec's Rao–Blackwellised
one-sample estimator: the analytic KL of every step given the sampled past,
``Σ_t KL(q(z_t | z_{<t}, x) ‖ p(z_t | z_{<t}, …))``, evaluated at the guide's last sample.
It is an unbiased estimate of the trajectory KL, and exact when neither side depends on the
past. ``TraceMeanField_ELBO`` uses it; ``Trace_ELBO`` uses :meth:`log_prob` instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.poutine.messenger import Messenger
from torch.distributions import kl_divergence, register_kl

Params = tuple[torch.Tensor, torch.Tensor]
"""``(loc, scale)`` of every step, each ``(B, T, L)``."""

StepFn = Callable[[int, torch.Tensor, object], tuple[torch.Tensor, torch.Tensor, object]]
"""``step(t, z_prev (B, L), state) -> (loc_t (B, L), scale_t (B, L), state)``; state starts None."""


class GaussianTrajectory(TorchDistribution):
    """Base class: a Gaussian trajectory ``z (B, T, L)``, ``batch_shape (B,)``, event ``(T, L)``.

    Subclasses implement :meth:`params` (all steps' parameters given a trajectory) and
    :meth:`draw` (a reparameterised trajectory from standard-normal noise). The last
    trajectory drawn or scored is cached with its parameters, so scoring it again costs nothing.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True
    depends_on_past = True

    def __init__(self, batch_size: int, T: int, L: int, like: torch.Tensor) -> None:
        super().__init__(torch.Size([batch_size]), torch.Size([T, L]), validate_args=False)
        self._like = like
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def params(self, z: torch.Tensor) -> Params:
        """``(loc, scale)`` of ``z_t`` given ``z_{<t}`` for every t, computed in parallel."""
        raise NotImplementedError

    def draw(self, noise: torch.Tensor) -> tuple[torch.Tensor, Params]:
        """``z = loc + scale · noise`` step by step; returns ``z`` and its parameters."""
        raise NotImplementedError

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        if sample_shape != torch.Size():
            raise ValueError("GaussianTrajectory draws one trajectory per batch element")
        return self.draw_and_cache(self._like.new_empty(self.shape()).normal_())

    def mean_path(self) -> torch.Tensor:
        """The trajectory drawn with zero noise: each step's mean fed forward."""
        return self.draw_and_cache(self._like.new_zeros(self.shape()))

    def draw_and_cache(self, noise: torch.Tensor) -> torch.Tensor:
        """Draw with the given noise (zeros give the mean path) and remember the result."""
        z, (loc, scale) = self.draw(noise)
        self._last = (z, loc, scale)
        return z

    def last_sample(self) -> torch.Tensor:
        """The trajectory drawn (or scored) last."""
        if self._last is None:
            raise RuntimeError("this trajectory has not been sampled yet")
        return self._last[0]

    def conditionals(self, z: torch.Tensor) -> Params:
        """Parameters of every step along ``z``, cached: an ELBO scores the same trajectory
        (the guide's draw) several times, and the parameters are computed once."""
        if self._last is None or z is not self._last[0]:
            self._last = (z, *self.params(z))
        return self._last[1], self._last[2]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        loc, scale = self.conditionals(z)
        return normal_log_prob(z, loc, scale).sum((-2, -1))

    def shape(self) -> torch.Size:
        return self.batch_shape + self.event_shape

    def expand(self, batch_shape, _instance=None) -> GaussianTrajectory:
        """Plates may only confirm the batch shape: a trajectory is never broadcast."""
        if torch.Size(batch_shape) != self.batch_shape:
            raise ValueError(
                f"cannot expand a trajectory of batch {self.batch_shape} to {batch_shape}"
            )
        return self


class IndependentTrajectory(GaussianTrajectory):
    """Steps independent of the past: ``z_t ~ N(loc_t, scale_t²)`` with fixed parameters.

    Args:
        loc, scale: ``(B, T, L)``.
    """

    depends_on_past = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__(*loc.shape, like=loc)
        self.loc, self.scale = loc, scale

    @classmethod
    def standard(cls, batch_size: int, T: int, L: int, like: torch.Tensor) -> IndependentTrajectory:
        """N(0, I) at every step, on the device and dtype of ``like``."""
        zeros = like.new_zeros(batch_size, T, L)
        return cls(zeros, torch.ones_like(zeros))

    def params(self, z: torch.Tensor) -> Params:
        return self.loc, self.scale

    def draw(self, noise: torch.Tensor) -> tuple[torch.Tensor, Params]:
        return self.loc + self.scale * noise, (self.loc, self.scale)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc


class MarkovTrajectory(GaussianTrajectory):
    """Steps that depend on the sampled past through ``step`` (sampling) and ``parallel``
    (scoring a given trajectory); both must describe the same conditionals.

    Args:
        step: see :data:`StepFn`; called for t = 0..T−1 with ``z_prev`` = z_{t−1} (z_0 = 0).
        parallel: ``parallel(z (B, T, L)) -> (loc, scale)``, each ``(B, T, L)``.
        batch_size, T, L: shape of the trajectory.
        like: a tensor giving the device and dtype.
    """

    def __init__(
        self,
        step: StepFn,
        parallel: Callable[[torch.Tensor], Params],
        batch_size: int,
        T: int,
        L: int,
        like: torch.Tensor,
    ) -> None:
        super().__init__(batch_size, T, L, like)
        self._step, self._parallel = step, parallel

    def params(self, z: torch.Tensor) -> Params:
        return self._parallel(z)

    def draw(self, noise: torch.Tensor) -> tuple[torch.Tensor, Params]:
        z_prev = self._like.new_zeros(self.batch_shape[0], self.event_shape[1])
        state = None
        zs, locs, scales = [], [], []
        for t in range(self.event_shape[0]):
            loc, scale, state = self._step(t, z_prev, state)
            z_prev = loc + scale * noise[:, t]
            zs.append(z_prev)
            locs.append(loc)
            scales.append(scale)
        return torch.stack(zs, 1), (torch.stack(locs, 1), torch.stack(scales, 1))


def normal_log_prob(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Element-wise ``log N(z; loc, scale²)``."""
    return -0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)


def normal_kl(
    mq: torch.Tensor, sq: torch.Tensor, mp: torch.Tensor, sp: torch.Tensor
) -> torch.Tensor:
    """Element-wise ``KL(N(mq, sq²) ‖ N(mp, sp²))``, the −1 term included (spec §4.2 omits it)."""
    var_ratio = (sq / sp) ** 2
    return 0.5 * (var_ratio + ((mq - mp) / sp) ** 2 - 1.0 - var_ratio.log())


@register_kl(GaussianTrajectory, GaussianTrajectory)
def _kl_trajectories(q: GaussianTrajectory, p: GaussianTrajectory) -> torch.Tensor:
    """Σ_t KL(q_t ‖ p_t) given the past of q's last sample; shape ``(B,)``."""
    z = q.last_sample() if (q.depends_on_past or p.depends_on_past) else None
    mq, sq = q.conditionals(z) if z is not None else q.params(z)
    mp, sp = p.conditionals(z) if z is not None else p.params(z)
    return normal_kl(mq, sq, mp, sp).sum((-2, -1))


class PosteriorMean(Messenger):
    """Replace every unobserved Gaussian site by its mean path instead of a random draw.

    For a trajectory whose steps depend on the past this feeds each step's mean forward
    (z_t = μ_t(z_{<t})). Used for evaluation with the posterior mean.
    """

    def _pyro_sample(self, msg: dict) -> None:
        fn = msg["fn"]
        if msg["is_observed"] or msg["value"] is not None or not fn.has_rsample:
            return
        msg["value"] = fn.mean_path() if isinstance(fn, GaussianTrajectory) else fn.mean


__all__ = [
    "GaussianTrajectory",
    "IndependentTrajectory",
    "MarkovTrajectory",
    "PosteriorMean",
    "kl_divergence",
    "normal_kl",
    "normal_log_prob",
]

"""Sequence distributions: a latent trajectory ``z_{1:T}`` built from its step conditionals.

Every DVAE latent sequence factorises over time, ``p(z_{1:T}) = ∏_t p(z_t | z_{<t}, ·)``, and a
model states it once, as its *step conditionals*:

* ``step(t, z_prev, state) -> (d_t, state)``: the distribution ``d_t`` of z_t given the sampled
  z_{t−1} (``z_prev (B, L)``, z_0 = 0) and whatever recurrent ``state`` the model carries
  (None at t = 0). ``d_t`` is any Pyro distribution with ``rsample``, batch ``(B,)``, event
  ``(L,)``: :func:`diag_normal` for every model of the paper, but a Student-t, a mixture or a
  flow (``TransformedDistribution``) work the same way.
* ``parallel(z) -> d``: the same conditionals along a given trajectory ``z (B, T, L)``, all
  steps at once ("teacher forcing"), batch ``(B, T)``, event ``(L,)``.

A :class:`Trajectory` holds the two. A latent is emitted in one of two forms, chosen by the
model's ``sites`` (``model.sites`` in the config):

* ``trajectory``: one Pyro sample site for all of z (batch ``(B,)``, event ``(T, L)``). It is
  drawn step by step only where a step depends on the sampled past, and scored with every
  step in parallel. The fast form, and the default.
* ``markov``: T sample sites ``z_1 … z_T`` inside ``pyro.markov`` (:func:`markov_sites`), as
  in Pyro's deep Markov model example: model and guide both walk the steps. Each step is a site
  of its own that Pyro's handlers can condition, mask or inspect.

Sequences of different lengths, padded to a common T, take a step mask ``(B, T)``
(:attr:`Trajectory.step_mask`; set by :meth:`~pyro_dvae.models.base.DVAE.step_mask`): padded
steps are still drawn, but add nothing to log-densities or KLs, in either form.

Both forms give the same ELBO. Under ``TraceMeanField_ELBO`` the latent term is the analytic KL
of every step given the sampled past, ``Σ_t KL(q(z_t | z_{<t}, x) ‖ p(z_t | z_{<t}, ·))`` (the
spec's estimator, with the −1 term it omits), wherever a KL is registered for the pair of step
distributions; otherwise the KL raises ``NotImplementedError`` and the ELBO falls back to
``log q(z) − log p(z)`` of the sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions import Normal, TorchDistribution, constraints
from pyro.poutine.messenger import Messenger
from torch.distributions import Distribution, Independent, kl_divergence, register_kl

from pyro_dvae.nn import full_precision

Step = Callable[[int, torch.Tensor, Any], tuple[Distribution, Any]]
"""``step(t, z_prev (B, L), state) -> (distribution of z_t, state)``; state starts None."""

Parallel = Callable[[torch.Tensor], Distribution]
"""``parallel(z (B, T, L)) -> distribution`` of every z_t given z_{<t}: batch (B, T), event (L,)."""

SITES = ("trajectory", "markov")
"""The two forms in which a latent trajectory becomes Pyro sample sites (``model.sites``)."""


def diag_normal(loc: torch.Tensor, scale: torch.Tensor) -> Distribution:
    """``N(loc, diag(scale²))`` over the last dimension; any leading (batch) dimensions. In
    float32 under autocast (:func:`~pyro_dvae.nn.full_precision`)."""
    return Normal(full_precision(loc), full_precision(scale)).to_event(1)


def point(d: Distribution) -> torch.Tensor:
    """A point summary of ``d``: its mean, or, where the mean has no closed form (a flow), the
    base distribution's point pushed through the transforms."""
    try:
        return d.mean
    except NotImplementedError:
        value = point(d.base_dist)  # Independent or TransformedDistribution
        for transform in getattr(d, "transforms", ()):
            value = transform(value)
        return value


def require_rsample(step: Distribution, owner: str) -> None:
    """Refuse a step distribution without ``rsample``: the guide's steps are drawn with
    gradients in training, the prior's in generation and forecasting. ``owner`` (the config key
    and the class that made ``step``) starts the one-line message."""
    if not step.has_rsample:
        name, inner = type(step).__name__, step
        while isinstance(inner, Independent):  # name what .to_event wraps
            inner = inner.base_dist
            name = f"{name}({type(inner).__name__})"
        raise ValueError(
            f"{owner} returns a step distribution {name}, which has no rsample; a "
            "guide or prior step must be a Pyro distribution with rsample (a Gaussian mixture: "
            "pyro.distributions.MixtureOfDiagNormals)"
        )


class Trajectory(TorchDistribution):
    """A trajectory ``z (B, T, L)`` from its step conditionals; batch ``(B,)``, event ``(T, L)``.

    Args:
        step: see :data:`Step`; called for t = 0..T−1 with ``z_prev`` = z_{t−1}.
        parallel: see :data:`Parallel`; must describe the same conditionals as ``step``.
        batch_size, T, L: shape of the trajectory.
        like: a tensor giving the device and dtype.
        z_0: the initial state ``(L,)`` of every sequence (a learned one), or None for 0.

    The last trajectory drawn or scored is cached with its conditionals, so that an ELBO that
    scores the guide's draw under q (and its KL) computes them once. Diagonal-Gaussian steps
    drawn in sequence are scored from the draw's own parameters, without a parallel pass.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True
    depends_on_past = True
    step_mask: torch.Tensor | None = None
    """``(B, T)`` bool, False on padded steps, whose log-densities and KLs are dropped."""

    def __init__(
        self,
        step: Step,
        parallel: Parallel,
        batch_size: int,
        T: int,
        L: int,
        like: torch.Tensor,
        z_0: torch.Tensor | None = None,
    ) -> None:
        super().__init__(torch.Size([batch_size]), torch.Size([T, L]), validate_args=False)
        self.step, self.parallel, self._like, self.z_0 = step, parallel, like, z_0
        self._last: tuple[torch.Tensor, Distribution | None] | None = None

    @property
    def T(self) -> int:
        return self.event_shape[0]

    def initial(self) -> torch.Tensor:
        """z_0 ``(B, L)``: 0, or the initial state given."""
        B, L = self.batch_shape[0], self.event_shape[1]
        return self._like.new_zeros(B, L) if self.z_0 is None else self.z_0.expand(B, L)

    def walk(self, choose: Callable[[Distribution], torch.Tensor]) -> torch.Tensor:
        """Walk the steps, z_t = ``choose(d_t)``; returns z (B, T, L) and caches it with its
        conditionals: diagonal Gaussians stacked, any other family as :class:`ScoredSteps`."""
        z_prev, state, zs, steps, scores = self.initial(), None, [], [], []
        for t in range(self.T):
            d, state = self.step(t, z_prev, state)
            z_prev = choose(d)
            zs.append(z_prev)
            steps.append(d)
            if not _is_diag_normal(d):  # now, while a flow's transforms cache this draw
                scores.append(d.log_prob(z_prev))
        z = torch.stack(zs, dim=1)
        if not scores:
            self._last = (z, _stack_diag_normals(steps))
        else:  # None (a parallel pass) for a walk that mixes Gaussian and other steps
            scored = len(scores) == self.T
            self._last = (z, ScoredSteps(z, torch.stack(scores, dim=1)) if scored else None)
        return z

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        if sample_shape != torch.Size():
            raise ValueError("a Trajectory draws one trajectory per batch element")
        return self.walk(lambda d: d.rsample())

    def mean_path(self) -> torch.Tensor:
        """Each step's point summary (its mean) fed forward: z_t = E[z_t | z_{<t} = mean path]."""
        return self.walk(point)

    def last_sample(self) -> torch.Tensor:
        """The trajectory drawn (or scored) last."""
        if self._last is None:
            raise RuntimeError("this trajectory has not been sampled yet")
        return self._last[0]

    def conditionals(self, z: torch.Tensor | None) -> Distribution:
        """The steps' distributions along ``z`` (batch (B, T), event (L,)), cached per z."""
        if self._last is None or z is not self._last[0] or self._last[1] is None:
            self._last = (z, self.parallel(z))
        return self._last[1]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.over_steps(self.conditionals(z).log_prob(z))

    def over_steps(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of per-step values ``(B, T)`` over the unmasked steps: ``(B,)``."""
        if self.step_mask is not None:
            values = values.masked_fill(~self.step_mask, 0.0)
        return values.sum(-1)

    def expand(self, batch_shape, _instance=None) -> Trajectory:
        """Plates may only confirm the batch shape: a trajectory is never broadcast."""
        if torch.Size(batch_shape) != self.batch_shape:
            raise ValueError(
                f"cannot expand a trajectory of batch {self.batch_shape} to {batch_shape}"
            )
        return self


class IndependentTrajectory(Trajectory):
    """Steps that do not depend on the past: ``z_t ~ family(*params[:, t])``.

    Args:
        family: ``family(*params) -> distribution`` with event ``(L,)`` over any leading dims,
            e.g. :func:`diag_normal`.
        params: its parameters, each ``(B, T, ·)``.
    """

    depends_on_past = False

    def __init__(self, family: Callable[..., Distribution], *params: torch.Tensor) -> None:
        self.family, self.params = family, params
        self._all = family(*params)
        B, T = params[0].shape[:2]
        super().__init__(self._at, lambda z: self._all, B, T, self._all.event_shape[0], params[0])

    def _at(self, t: int, z_prev: torch.Tensor, state: None) -> tuple[Distribution, None]:
        return self.family(*(p[:, t] for p in self.params)), None

    @classmethod
    def standard(cls, batch_size: int, T: int, L: int, like: torch.Tensor) -> IndependentTrajectory:
        """N(0, I) at every step, on the device and dtype of ``like``."""
        zeros = like.new_zeros(batch_size, T, L)
        return cls(diag_normal, zeros, torch.ones_like(zeros))

    def walk(self, choose: Callable[[Distribution], torch.Tensor]) -> torch.Tensor:
        """All steps at once: ``choose`` is applied to the whole (B, T) distribution."""
        z = choose(self._all)
        self._last = (z, self._all)
        return z

    @property
    def mean(self) -> torch.Tensor:
        return self._all.mean


class ScoredSteps(Distribution):
    """The conditionals of a walked trajectory ``z (B, T, L)`` known only at ``z``: their
    log-densities ``(B, T)``, computed as each step was drawn. A flow step scores its own draw
    through its transforms' cache; the parallel pass would invert it, a sequential loop over
    the L dimensions for an autoregressive flow. Batch (B, T), event (L,); no KL."""

    arg_constraints: dict = {}

    def __init__(self, z: torch.Tensor, log_probs: torch.Tensor) -> None:
        super().__init__(log_probs.shape, z.shape[-1:], validate_args=False)
        self.z, self.log_probs = z, log_probs

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value is not self.z:
            raise ValueError("ScoredSteps scores only the trajectory drawn with it")
        return self.log_probs


def _is_diag_normal(d: Distribution) -> bool:
    return isinstance(d, Independent) and type(d.base_dist) is Normal


def _stack_diag_normals(steps: list[Distribution]) -> Distribution | None:
    """Per-step diagonal Gaussians (batch (B,)) as one over (B, T); None for other families."""
    if not all(_is_diag_normal(d) for d in steps):
        return None
    loc = torch.stack([d.base_dist.loc for d in steps], dim=1)
    return diag_normal(loc, torch.stack([d.base_dist.scale for d in steps], dim=1))


@register_kl(Trajectory, Trajectory)
def _kl_trajectories(q: Trajectory, p: Trajectory) -> torch.Tensor:
    """Σ_t KL(q_t ‖ p_t) given the past of q's last sample, ``(B,)``; raises
    ``NotImplementedError`` where no KL is registered for the step distributions."""
    z = q.last_sample() if (q.depends_on_past or p.depends_on_past) else None
    return q.over_steps(kl_divergence(q.conditionals(z), p.conditionals(z)))


def markov_sites(name: str, trajectory: Trajectory) -> torch.Tensor:
    """Emit ``trajectory`` as T sample sites ``{name}_1 … {name}_T`` inside ``pyro.markov``;
    returns z (B, T, L). In a model the values are those the guide drew (replayed). A step
    mask masks each site on the sequences where that step is padding."""
    z_prev, state, zs = trajectory.initial(), None, []
    mask = trajectory.step_mask
    for t in pyro.markov(range(trajectory.T)):
        d, state = trajectory.step(t, z_prev, state)
        with poutine.mask(mask=True if mask is None else mask[:, t]):
            z_prev = pyro.sample(f"{name}_{t + 1}", d)
        zs.append(z_prev)
    return torch.stack(zs, dim=1)


class PosteriorMean(Messenger):
    """Replace every unobserved site with ``rsample`` by its point summary (:func:`point`)
    instead of a random draw. A :class:`Trajectory` site takes its mean path (each step's mean
    fed forward); per-step sites get the same path one step at a time. Used for evaluation."""

    def _pyro_sample(self, msg: dict) -> None:
        fn = msg["fn"]
        if msg["is_observed"] or msg["value"] is not None or not fn.has_rsample:
            return
        msg["value"] = fn.mean_path() if isinstance(fn, Trajectory) else point(fn)


def normal_kl(
    mq: torch.Tensor, sq: torch.Tensor, mp: torch.Tensor, sp: torch.Tensor
) -> torch.Tensor:
    """Element-wise ``KL(N(mq, sq²) ‖ N(mp, sp²))``, the −1 term included (spec §4.2 omits it)."""
    var_ratio = (sq / sp) ** 2
    return 0.5 * (var_ratio + ((mq - mp) / sp) ** 2 - 1.0 - var_ratio.log())


__all__ = [
    "SITES",
    "IndependentTrajectory",
    "PosteriorMean",
    "Trajectory",
    "diag_normal",
    "kl_divergence",
    "markov_sites",
    "normal_kl",
    "point",
    "require_rsample",
]

"""Observation models p(x_{1:T} | decoder output), selected with ``likelihood=<name>``.

A likelihood turns the decoder's raw output ``y (B, T, D)`` into a Pyro distribution with
``batch_shape (B,)`` and ``event_shape (T, D)``, and into the feature estimate ``E[x | y]``
used for evaluation and generation.

* ``exponential`` (speech default): ``y`` is the log-variance log σ²_{t,f} of a zero-mean
  circular complex Gaussian on the STFT coefficient, so the power ``x = |S|²`` is Exponential
  with mean σ². ``−log p(x) = D_IS(x ‖ σ²) + log x + 1``: the Itakura–Saito loss of the paper up
  to a constant (spec §4.1).
* ``mpjpe`` (motion default, reproduces the paper): ``y`` is the mean joint position in metres
  and ``log p(x) = −Σ_t MPJPE_t`` in millimetres (1 mm ≙ 1 nat, spec §4.1). An unnormalised
  log-density (like ``pyro.factor``) that the ELBO treats as any other.
* ``gaussian``: ``y`` is the mean; a diagonal Gaussian with a learned (or fixed) per-dimension
  scale. A proper density, for likelihood comparisons.
* ``bernoulli`` (binary data: piano rolls, binary video frames): ``y`` holds the logits of
  independent Bernoulli variables, ``E[x | y] = sigmoid(y)``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from pyro.distributions import Bernoulli as BernoulliDist
from pyro.distributions import Exponential, Normal, TorchDistribution, constraints
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from pyro_dvae.data.skeleton import check_joint_features, mpjpe_mm
from pyro_dvae.nn import LOGVAR_BOUND
from pyro_dvae.registry import Registry


class Likelihood(nn.Module):
    """Base class. ``forward(y)`` returns the distribution of x; :meth:`mean` its mean.

    A registered likelihood is built as ``cls(x_dim, **options)`` (``likelihood.options``);
    ``x_dim`` is D, for likelihoods with per-dimension parameters (the base class ignores it).
    """

    def __init__(self, x_dim: int | None = None) -> None:
        super().__init__()

    def forward(self, y: torch.Tensor) -> TorchDistribution:
        raise NotImplementedError

    def mean(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _ExponentialNLL(torch.autograd.Function):
    """``Σ_{t,f} (y + x·e^{−y})`` over the last two dims, with ``y`` clamped to ``±LOGVAR_BOUND``.

    One fused function instead of a chain of autograd nodes: on a (128, 50, 513) batch the
    chain and the clamp's masked backward were a fifth of a VAE training step. The gradient
    ``1 − x·e^{−y}`` is taken at the clamped ``y``, also outside the bound, where it points back
    into range (a clamp's own gradient would be zero there and leave ``y`` stranded). When ``x``
    needs no gradient (data), ``x·e^{−y}`` is written over ``e^{−y}``: one buffer of the batch's
    size, not two.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        neg_y = y.neg().clamp_(-LOGVAR_BOUND, LOGVAR_BOUND)
        nll = -neg_y.sum((-2, -1))
        inv_mean = neg_y.exp_()
        if ctx.needs_input_grad[0]:
            ratio = x * inv_mean
            ctx.save_for_backward(ratio, inv_mean)
        else:
            ratio = inv_mean.mul_(x)
            ctx.save_for_backward(ratio, None)
        return nll + ratio.sum((-2, -1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        ratio, inv_mean = ctx.saved_tensors
        grad = grad[..., None, None]
        grad_x = grad * inv_mean if ctx.needs_input_grad[0] else None
        grad_y = (1 - ratio).mul_(grad) if ctx.needs_input_grad[1] else None
        return grad_x, grad_y


class ExponentialLogMean(TorchDistribution):
    """``x ~ Exponential(mean = exp(y))`` on every element of ``(B, T, D)``, event ``(T, D)``.

    ``log p(x) = −Σ (y + x·e^{−y})``, computed from ``y`` directly (no ``log(exp(·))``); ``y``
    is clamped to ``±LOGVAR_BOUND`` so ``e^{−y}`` never overflows, and x = 0 is valid.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.nonnegative, 2)

    def __init__(self, y: torch.Tensor) -> None:
        self.y = y
        super().__init__(y.shape[:-2], y.shape[-2:], validate_args=False)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return -_ExponentialNLL.apply(x, self.y)

    def step_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x_t)`` of every frame, ``(B, T)``."""
        y = self.y.clamp(-LOGVAR_BOUND, LOGVAR_BOUND)
        return -(y + x * torch.exp(-y)).sum(-1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return Exponential(1 / self.mean).sample(sample_shape)

    @property
    def mean(self) -> torch.Tensor:
        return torch.exp(self.y.clamp(-LOGVAR_BOUND, LOGVAR_BOUND))


LIKELIHOODS: Registry[type[Likelihood]] = Registry(
    "likelihood.name", "likelihood", "pyro_dvae.likelihoods.register_likelihood"
)


def register_likelihood(name: str) -> Callable[[type[Likelihood]], type[Likelihood]]:
    """Class decorator: make a :class:`Likelihood` available as ``likelihood=<name>`` (in a
    module outside this package too, loaded with ``plugins=[module]``)."""
    return LIKELIHOODS.register(name)


@register_likelihood("exponential")
class ExponentialPower(Likelihood):
    """Power spectrogram ``x ~ Exponential(mean = exp(y))``, ``y`` the log-variance."""

    def forward(self, y: torch.Tensor) -> TorchDistribution:
        return ExponentialLogMean(y)

    def mean(self, y: torch.Tensor) -> torch.Tensor:
        return ExponentialLogMean(y).mean


class _MPJPESum(torch.autograd.Function):
    """``apply(x, y, J) -> Σ_t MPJPE_mm(x_t, y_t)`` over the time dim, ``(B, T, 3J) -> (B,)``:
    ``(1000 / J) Σ_{t,j} |y_tj − x_tj|``.

    One autograd node with a hand-written backward, ``(1000 / J) (y_tj − x_tj) / |y_tj − x_tj|``
    (0 where a joint is exact, as the norm's own backward): two passes over the (B, T, 3J)
    batch forward and one back, where the chain of element-wise nodes (difference, ×1000,
    norm, mean, and their backwards with a masked division) took half of a motion VAE step.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, y: torch.Tensor, n_joints: int):
        diff = (y - x).unflatten(-1, (n_joints, 3))
        norm = torch.linalg.vector_norm(diff, dim=-1)
        ctx.save_for_backward(diff, norm)
        ctx.mm_per_joint = 1000 / n_joints
        return norm.sum((-2, -1)) * ctx.mm_per_joint

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor):
        diff, norm = ctx.saved_tensors
        per_joint = (grad * ctx.mm_per_joint)[..., None, None] / norm.masked_fill(norm == 0, 1)
        grad_y = (diff * per_joint.unsqueeze(-1)).flatten(-2)
        needs = ctx.needs_input_grad
        return (-grad_y if needs[0] else None), (grad_y if needs[1] else None), None


class MPJPEFactor(TorchDistribution):
    """Unnormalised ``log p(x) = −Σ_t MPJPE_mm(x_t, y_t)``; x and y in metres, ``(B, T, 3J)``.

    ``sample()`` returns the mean y (the density has no sampler of its own).
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)

    def __init__(self, y: torch.Tensor) -> None:
        self.y = y
        super().__init__(y.shape[:-2], y.shape[-2:], validate_args=False)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``−Σ_t MPJPE_t``, ``(B,)``: :meth:`step_log_prob` summed, in one fused node."""
        n_joints = x.shape[-1] // 3
        check_joint_features(x, n_joints)
        return -_MPJPESum.apply(x, self.y, n_joints)

    def step_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``−MPJPE_t`` of every frame, ``(B, T)``."""
        return -mpjpe_mm(x, self.y, x.shape[-1] // 3)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.y.expand(sample_shape + self.y.shape)

    @property
    def mean(self) -> torch.Tensor:
        return self.y


@register_likelihood("mpjpe")
class MPJPE(Likelihood):
    """The paper's motion objective, see :class:`MPJPEFactor`."""

    def forward(self, y: torch.Tensor) -> TorchDistribution:
        return MPJPEFactor(y)

    def mean(self, y: torch.Tensor) -> torch.Tensor:
        return y


@register_likelihood("gaussian")
class Gaussian(Likelihood):
    """``x ~ N(y, σ²)`` per dimension; σ learned unless ``learn_scale=False``.

    Args:
        x_dim: D.
        scale: initial (or fixed) standard deviation, in the units of x.
        learn_scale: learn one log-σ per dimension.
    """

    def __init__(self, x_dim: int, scale: float = 0.01, learn_scale: bool = True) -> None:
        super().__init__()
        log_scale = torch.full((x_dim,), math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self, y: torch.Tensor) -> TorchDistribution:
        return Normal(y, self.log_scale.exp().expand_as(y)).to_event(2)

    def mean(self, y: torch.Tensor) -> torch.Tensor:
        return y


@register_likelihood("bernoulli")
class Bernoulli(Likelihood):
    """``x ~ Bernoulli(sigmoid(y))`` per element; y the logits."""

    def forward(self, y: torch.Tensor) -> TorchDistribution:
        return BernoulliDist(logits=y).to_event(2)

    def mean(self, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(y)


class MaskedSteps(TorchDistribution):
    """An observation distribution (event ``(T, D)``) whose padded frames (``mask (B, T)``
    False) add nothing to the log-density; sampling is the base distribution's."""

    arg_constraints: dict = {}

    def __init__(self, base: TorchDistribution, mask: torch.Tensor) -> None:
        self.base, self.mask = base, mask
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return step_log_prob(self.base, x).masked_fill(~self.mask, 0.0).sum(-1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.base.sample(sample_shape)


def step_log_prob(d: TorchDistribution, x: torch.Tensor) -> torch.Tensor:
    """Per-frame log-density ``(B, T)`` of an observation distribution with event ``(T, D)``."""
    if hasattr(d, "step_log_prob"):
        return d.step_log_prob(x)
    return d.base_dist.log_prob(x).sum(-1)  # an element-wise distribution .to_event(2)


DEFAULT_FOR_MODALITY = {
    "speech": "exponential",
    "motion": "mpjpe",
    "music": "bernoulli",
    "video": "bernoulli",
}


def build_likelihood(name: str | None, modality: str, x_dim: int, **options) -> Likelihood:
    """The likelihood ``name`` (None: the default of the data's modality) for D = ``x_dim``,
    with the ``likelihood.options`` of its config; an unknown name or option is a
    ``ValueError`` naming the key."""
    name = name or DEFAULT_FOR_MODALITY.get(modality)
    cls = LIKELIHOODS.lookup(name)
    try:
        inspect.signature(cls).bind(x_dim, **options)
    except TypeError as err:
        raise ValueError(
            f"likelihood.options={options!r}: not options of likelihood {name!r} ({err})"
        ) from None
    return cls(x_dim, **options)

"""Hand-written closed forms that the tests compare Pyro's numbers with, and the composed
configuration of a command line."""

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import normal

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def compose_config(overrides: list[str], **options) -> DictConfig:
    """The configuration ``experiments/run.py`` composes from ``overrides`` (``options``: more
    arguments of Hydra's ``compose``, e.g. ``return_hydra_config=True``)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, **options)


def exponential_nll(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """−log Exponential(x; rate e^{−y}) = y + x e^{−y}, summed."""
    return (y + x * torch.exp(-y)).sum()


def gaussian_kl(mq, sq, mp, sp) -> torch.Tensor:
    """Σ KL(N(mq, sq²) ‖ N(mp, sp²)) = ½ Σ [log sp²/sq² + (sq² + (mq − mp)²)/sp² − 1]."""
    return 0.5 * (torch.log(sp**2 / sq**2) + (sq**2 + (mq - mp) ** 2) / sp**2 - 1).sum()


def gaussian_log_density(z, m, s) -> torch.Tensor:
    """Σ log N(z; m, s²)."""
    return (-0.5 * ((z - m) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum()


@contextlib.contextmanager
def zero_noise() -> Iterator[None]:
    """Every reparameterised Normal draw is its mean (ε = 0). Runs on different numbers of
    processes then compute the same numbers; with noise each rank draws its own ε and they
    agree only in distribution."""
    draw = normal._standard_normal
    normal._standard_normal = lambda shape, dtype, device: torch.zeros(
        shape, dtype=dtype, device=device
    )
    try:
        yield
    finally:
        normal._standard_normal = draw


def elbo_and_gradients(model, x: torch.Tensor, seed: int, kl_weight: float = 0.6):
    """Pyro's TraceMeanField_ELBO loss of ``model`` on ``x`` after ``torch.manual_seed(seed)``,
    and its gradient for every parameter (in ``model.parameters()`` order)."""
    torch.manual_seed(seed)
    loss = TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, kl_weight)
    return loss, torch.autograd.grad(loss, list(model.parameters()))


def assert_same_elbo_and_gradients(model, got, expected, rtol: float, atol: float) -> None:
    """``got`` and ``expected`` (:func:`elbo_and_gradients` pairs) agree; a gradient that does
    not is named by its parameter."""
    (loss, grads), (expected_loss, expected_grads) = got, expected
    torch.testing.assert_close(loss, expected_loss, rtol=rtol, atol=atol)
    names = [name for name, _ in model.named_parameters()]
    for name, g, e in zip(names, grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")

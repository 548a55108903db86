"""One training step: the part of training that a CUDA graph would capture or ``torch.compile``
compile, free of the epoch loop, the files and the cluster.

:class:`ELBOLoss` is the objective (the differentiable negative ELBO per valid frame, as a
module so that DistributedDataParallel can wrap it); :func:`train_step` evaluates it on one
batch and takes one optimiser step: loss, backward, gradient clipping, update. Nothing in it
reads a value back to the host; with several processes the only communication inside it is
DDP's own gradient all-reduce during ``backward``. :func:`loss_terms` splits the same estimator
into reconstruction and KL for validation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from pyro_dvae.models.base import DVAE

ELBOS = {"mean_field": TraceMeanField_ELBO, "trace": Trace_ELBO}

Loss = Callable[[torch.Tensor, "torch.Tensor | None", float], torch.Tensor]
"""``(x (B, T, D), mask (B, T) or None, KL weight) -> per-frame loss ()``: an :class:`ELBOLoss`,
possibly inside DistributedDataParallel."""


def loss_terms(model: DVAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame reconstruction NLL and KL (at KL weight 1) of one batch, the same estimator as
    ``TraceMeanField_ELBO``: analytic KL where one is registered, else log q − log p."""
    guide_trace = poutine.trace(model.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    recon = -model_trace.nodes["x"]["log_prob_sum"]
    kl = x.new_zeros(())
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        q = guide_trace.nodes[name]
        try:
            kl_q = kl_divergence(q["fn"], site["fn"])
            kl = kl + scale_and_mask(kl_q, q["scale"], q["mask"]).sum()
        except NotImplementedError:
            log_q = scale_and_mask(q["fn"].log_prob(q["value"]), q["scale"], q["mask"])
            kl = kl + log_q.sum() - site["log_prob_sum"]
    return recon, kl


class ELBOLoss(torch.nn.Module):
    """The training objective as a module, so that DistributedDataParallel can wrap it: the
    differentiable negative ELBO per (valid) frame of a batch, at a KL weight."""

    def __init__(self, model: DVAE, elbo: str) -> None:
        super().__init__()
        self.dvae = model
        self.elbo = ELBOS[elbo]()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, weight: float) -> torch.Tensor:
        with self.dvae.step_mask(mask):
            return self.elbo.differentiable_loss(self.dvae.model, self.dvae.guide, x, weight)


def train_step(
    loss: Loss,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    weight: float,
    scale: float = 1.0,
    frozen: Sequence[torch.nn.Parameter] = (),
    clip_norm: float | None = None,
) -> torch.Tensor:
    """One optimiser step on the batch ``x (B, T, D)`` (``mask (B, T)``: False on padding).

    Args:
        loss: the objective (:data:`Loss`), evaluated at KL weight ``weight``.
        optimizer: updates the parameters from their gradients.
        scale: the factor on the loss before ``backward`` (a rank's share of a global batch,
            :meth:`~pyro_dvae.distributed.Cluster.step_weight`; 1 in a single process).
        frozen: parameters that get no update and no part in the clipped norm (their gradients
            are dropped).
        clip_norm: clip the global norm of the optimiser's gradients to this (None: no clip).

    Returns:
        The per-frame loss ``()``, detached, still on the device (non-finite values are the
        caller's to detect: the update has then been taken).
    """
    value = loss(x, mask, weight)
    optimizer.zero_grad(set_to_none=True)
    (value * scale).backward()
    for p in frozen:
        p.grad = None
    if clip_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    return value.detach()

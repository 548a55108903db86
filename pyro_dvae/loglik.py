"""Log-likelihood of sequences under a model/guide pair: the ELBO and the importance-weighted
bound (IWAE; Burda et al. 2016), in nats per time step.

For a sequence x and K draws z_k ~ q(z | x) from the guide, with importance weights
``log w_k = log p(x, z_k) − log q(z_k | x)``::

    ELBO   ≈ (1/K) Σ_k log w_k                    ≤ log p(x)
    IWAE_K = log (1/K) Σ_k w_k                     ≤ log p(x),  → log p(x) as K → ∞

IWAE_1 is the one-sample ELBO; IWAE_K rises with K (in expectation). Three estimators, as the
DMM papers report them (Krishnan et al. 2017; Pyro's ``examples/dmm.py``):

* ``elbo_per_step``: Σ ELBO over the data set divided by its number of time steps (valid ones,
  in a padded batch): Pyro's example reports its negative as the test NLL;
* ``elbo_per_sequence_step``: each sequence's ELBO divided by its own length, averaged over the
  sequences (the DMM authors' per-sequence bound);
* ``nll_per_step``: −Σ IWAE_K over the data set divided by its number of time steps.

Nothing here knows a model: a *pair* is any object with ``model(x)`` and ``guide(x)`` (Pyro
programs whose sample sites all lie in a plate named :data:`PLATE` over the sequences of x)
and, for padded batches, a ``step_mask(mask)`` context (every
:class:`~pyro_dvae.models.base.DVAE` is one). The K draws are the batch repeated K times, in
passes of at most ``max_batch`` sequences, under ``torch.no_grad``; an RNN over x alone (a
guide's summary of the sequence) runs once for the K copies
(:func:`~pyro_dvae.nn.identical_copies`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Protocol

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from pyro_dvae.nn import identical_copies

PLATE = "sequences"
"""The plate over the sequences of a batch (:meth:`~pyro_dvae.models.base.DVAE.sequences`)."""


class Pair(Protocol):
    """A generative model and its guide over a batch ``x (B, T, D)``."""

    def model(self, x: torch.Tensor) -> object: ...

    def guide(self, x: torch.Tensor) -> object: ...


def per_sequence(trace: poutine.Trace) -> torch.Tensor:
    """``Σ log p`` over the sample sites of ``trace`` (plates' own sites aside), per sequence
    ``(B,)``: unscaled (KL weights and 1/frames ignored), masks applied, summed over all but
    the sequence plate.

    Raises:
        ValueError: a site outside the plate :data:`PLATE`, naming it.
    """
    total = 0.0
    for name, site in prune_subsample_sites(trace).nodes.items():
        if site["type"] != "sample":
            continue
        dims = [f.dim for f in site["cond_indep_stack"] if f.name == PLATE]
        if not dims or dims[0] is None:
            raise ValueError(
                f"sample site {name!r} is not inside the vectorised plate {PLATE!r}: its "
                "log-density cannot be split over sequences"
            )
        log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
        log_p = scale_and_mask(log_p, 1.0, site["mask"]).movedim(dims[0], 0)
        total = total + log_p.reshape(log_p.shape[0], -1).sum(-1)
    return total


def log_weights(pair: Pair, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``log p(x, z) − log q(z | x)`` for one draw z ~ q per sequence of ``x (B, T, D)``,
    ``(B,)``; ``mask (B, T)``, False on padded steps, goes to ``pair.step_mask``."""
    with nullcontext() if mask is None else pair.step_mask(mask):
        guide_trace = poutine.trace(pair.guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(x)
    return per_sequence(model_trace) - per_sequence(guide_trace)


@torch.no_grad()
def importance_log_weights(
    pair: Pair,
    x: torch.Tensor,
    num_samples: int,
    mask: torch.Tensor | None = None,
    max_batch: int | None = None,
) -> torch.Tensor:
    """``log w (K, B)``: K independent draws for every sequence of ``x (B, T, D)``, computed on
    the batch repeated, at most ``max_batch`` sequences (≥ B) per pass (None: all K at once)."""
    if num_samples < 1:
        raise ValueError(f"iwae_samples={num_samples}: expected at least 1 sample")
    B = x.shape[0]
    per_pass = num_samples if max_batch is None else max(1, max_batch // B)
    chunks = []
    for start in range(0, num_samples, per_pass):
        k = min(per_pass, num_samples - start)
        repeated = x.repeat(k, *([1] * (x.dim() - 1)))
        m = None if mask is None else mask.repeat(k, 1)
        with identical_copies(k):  # RNNs over x alone run once for the k copies
            chunks.append(log_weights(pair, repeated, m).view(k, B))
    return torch.cat(chunks)


def bounds(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ELBO and IWAE estimates ``(B,)`` each from importance log-weights ``(K, B)``."""
    return log_w.mean(0), torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def log_likelihood(
    pair: Pair,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
    num_samples: int,
    max_batch: int | None = None,
) -> dict:
    """ELBO and IWAE over a data set, per time step.

    Args:
        pair: see :class:`Pair`.
        batches: ``x (B, T, D)`` or ``(x, mask (B, T))`` with mask False on padded steps.
        num_samples: K, draws per sequence.
        max_batch: sequences per pass of the repeated batch (None: K·B).

    Returns:
        ``elbo_per_step`` and ``nll_per_step`` (−IWAE_K) in nats per valid time step, summed
        over sequences then divided by the number of steps; ``elbo_per_sequence_step``, the
        ELBO of each sequence divided by its own number of valid steps, averaged over the
        sequences; ``iwae_samples`` (K), ``steps``, ``sequences``.
    """
    elbo = iwae = elbo_per_length = 0.0
    steps = sequences = 0
    for batch in batches:
        x, mask = batch if isinstance(batch, (tuple, list)) else (batch, None)
        log_w = importance_log_weights(pair, x, num_samples, mask, max_batch)
        batch_elbo, batch_iwae = bounds(log_w)
        lengths = torch.full_like(batch_elbo, x.shape[1]) if mask is None else mask.sum(-1)
        elbo += batch_elbo.sum().item()
        iwae += batch_iwae.sum().item()
        elbo_per_length += (batch_elbo / lengths).sum().item()
        steps += int(lengths.sum())
        sequences += x.shape[0]
    if steps == 0:
        raise ValueError("log_likelihood: no sequences to score")
    return {
        "elbo_per_step": elbo / steps,
        "elbo_per_sequence_step": elbo_per_length / sequences,
        "nll_per_step": -iwae / steps,
        "iwae_samples": num_samples,
        "steps": steps,
        "sequences": sequences,
    }

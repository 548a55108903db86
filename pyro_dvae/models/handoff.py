"""Hand a deterministic tensor that the guide computed over to the model, instead of recomputing it.

Every Pyro inference algorithm (and :meth:`~pyro_dvae.models.base.DVAE.reconstruct`) runs the
guide, then the model on the same arguments, the model replaying the guide's sample. Where
both need the same expensive function of x (SRNN's h) or of the sampled trajectory (VRNN's h
along z), the guide ``put``s it, keyed by the tensor both receive, and the model ``take``s it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

import torch
from torch import nn

V = TypeVar("V")


class Handoff(Generic[V]):
    """One slot, emptied by :meth:`take`.

    ``take`` returns the value only if it was put for this very key tensor (identity, not
    equality), with the key and the module's parameters unchanged since (their in-place version
    counters) and under the same grad mode; otherwise it returns ``compute()``. So a guide run
    alone, an optimiser step in between, or a guide traced under ``no_grad`` can never leak a
    stale value into the model.
    """

    def __init__(self) -> None:
        self._slot: tuple[weakref.ref, tuple, V] | None = None

    def put(self, key: torch.Tensor, module: nn.Module, value: V) -> None:
        self._slot = (weakref.ref(key), _stamp(key, module), value)

    def take(self, key: torch.Tensor, module: nn.Module, compute: Callable[[], V]) -> V:
        slot, self._slot = self._slot, None
        if slot is not None and slot[0]() is key and slot[1] == _stamp(key, module):
            return slot[2]
        return compute()


def _stamp(key: torch.Tensor, module: nn.Module) -> tuple:
    versions = tuple(p._version for p in module.parameters())
    return torch.is_grad_enabled(), key._version, versions

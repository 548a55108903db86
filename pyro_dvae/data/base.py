"""What every dataset gives the runner: a :class:`Task`.

A task bundles the train / validation / test splits of one corpus together with the
evaluation protocol of its modality. The runner and the evaluation script only talk to
this interface, so they know nothing about audio or skeletons, and a task knows nothing
about models: it evaluates a function that maps features to estimated features.

Shapes: a training or validation item is a float32 tensor ``(T, D)``; the DataLoader
stacks them to ``(B, T, D)``. Test items are whole sequences of varying length.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from pyro_dvae.registry import Registry

Estimator = Callable[[torch.Tensor], torch.Tensor]
"""Maps observed features ``(B, T, D)`` to their reconstruction ``(B, T, D)`` in the same space."""


class Task(ABC):
    """One corpus, split and ready for training, with its evaluation protocol.

    Attributes:
        name: dataset name (``fsdd``, ``cmu_mocap``, ...).
        modality: ``"speech"`` or ``"motion"``; selects the model defaults and the likelihood.
        x_dim: feature dimension D.
        train, val: datasets of ``(T, D)`` float32 tensors of a fixed length T; a method
            ``batch(index (B,)) -> (B, T, D)`` lets the trainer fetch a batch in one gather.
        test: dataset used by :meth:`evaluate` (whole sequences).
    """

    name: str
    modality: str
    x_dim: int
    train: Dataset
    val: Dataset
    test: Dataset

    @abstractmethod
    def evaluate(self, estimate: Estimator, out_dir: Path, n_examples: int = 4) -> dict:
        """Run the test protocol and return the metrics as a JSON-ready dict.

        ``estimate`` maps features ``(1, T, D)`` to reconstructed features ``(1, T, D)``.
        Writes reconstructions and figures of ``n_examples`` test sequences under ``out_dir``.
        A metric that counts thresholded decisions (a pixel or note on at p > ½) may add its
        range under rounding to ``results[ROUNDING_INTERVALS]`` (metric → ``[low, high]``,
        :data:`ROUNDING_INTERVALS`).
        """

    @abstractmethod
    def render(self, x: torch.Tensor, out_dir: Path) -> list[Path]:
        """Write generated feature sequences ``(N, T, D)`` to ``out_dir`` in a form a person can
        inspect (audio and spectrograms, or skeleton animations). Returns the written paths."""


ROUNDING_INTERVALS = "rounding_interval"
"""The key of a results row under which a task gives, for each metric that counts thresholded
decisions, the values it takes if any decision within rounding of its threshold falls the other
way (``[low, high]``): on another CPU, or with other BLAS kernels, the metric lies in it. The
pretrained zoo matches such a metric by its interval (:func:`pyro_dvae.pretrained.differences`)."""

DECISION_BAND = 2.0**-10
"""Half-width of the band around ½ within which a thresholded decision (a pixel or a note on at
p > ½) may fall the other way on another machine: p comes from float32 networks whose sums
another CPU, BLAS kernel or thread count orders differently. Measured between this machine's
AVX-512 kernels and PyTorch's scalar ones with MKL's SSE4.2 code and oneDNN off, p moved by at
most 1.7e-4 for the ``kvae-balls`` model (its Kalman smoother carries the rounding of 20 steps)
and 3e-6 for the JSB models of the zoo; the band is six times the first."""


def near_threshold(p: torch.Tensor) -> int:
    """How many probabilities of ``p`` lie within :data:`DECISION_BAND` of ½."""
    return int(((p - 0.5).abs() <= DECISION_BAND).sum())


TaskBuilder = Callable[..., Task]
TASKS: Registry[TaskBuilder] = Registry("data.name", "dataset", "pyro_dvae.data.register_task")


def register_task(name: str) -> Callable[[TaskBuilder], TaskBuilder]:
    """Decorator: make ``builder(**data_cfg)`` available as ``data=<name>`` (in a module outside
    this package too, loaded with ``plugins=[module]`` or ``data.module``)."""
    return TASKS.register(name)


BUILTIN_MODULES = ("pyro_dvae.data.speech", "pyro_dvae.data.motion")


def find_task(name: str, module: str | None = None) -> TaskBuilder:
    """The builder registered as ``name``, after importing the built-in dataset modules and
    ``module`` (the ``data.module`` key); an unknown name is a ``ValueError`` naming the key."""
    for module_name in (*BUILTIN_MODULES, *([module] if module else [])):
        importlib.import_module(module_name)
    return TASKS.lookup(name)


def build_task(name: str, module: str | None = None, **options) -> Task:
    """Build the task registered as ``name`` with the options of its ``configs/data/<name>.yaml``.

    ``module`` (the ``data.module`` key) names a Python module to import first: that is how a
    dataset defined outside this package registers itself without touching the runner.
    """
    return find_task(name, module)(**options)

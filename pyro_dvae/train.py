"""The training loop shared by every model and dataset.

Three parts, as in Lightning's split of step, loop and callbacks:

* the step (:func:`pyro_dvae.step.train_step`): loss, backward, clipping and update of one
  batch, with nothing else inside (the part a captured or compiled step replaces);
* the epoch loop (:class:`Trainer`): schedules, training and validation epochs, the best epoch
  and early stopping;
* the bookkeeping (:class:`Bookkeeping`, on files from :mod:`pyro_dvae.records`): checkpoints,
  ``metrics.csv``, ``loss.png``, log lines and stop signals.

The cluster (:mod:`pyro_dvae.distributed`) stays at the edges: it shards the data, wraps the
loss in DistributedDataParallel and all-reduces what the loop reports.

Stochastic variational inference: each step evaluates the ELBO of the model/guide pair with
``TraceMeanField_ELBO``'s estimator (analytic per-step KL, the default) or ``Trace_ELBO``'s,
computed from Pyro's traces without reading the loss back to the host
(:func:`~pyro_dvae.step.loss_terms`), and takes one optimiser step on it: ``torch.optim.Adam``
(the default) or Pyro's ``ClippedAdam``, one optimiser over all parameters whose state is saved
and restored exactly. ``train.step`` runs the step eagerly, with compiled networks, or as a
replayed CUDA graph (:mod:`pyro_dvae.step`); the loop reads the device once an epoch.
Optional global gradient-norm clipping (``clip_norm``), an L2 term ``l2 · θ`` added to the
gradient before it (``l2``), and a per-epoch LR decay (``lr_decay``).

Bookkeeping (spec §4.3–4.4, with its bugs fixed):

* KL warm-up: weight ``min(1, start + step · ⌊epoch / every⌋)`` times β; a pure function of the
  epoch, so it stays right after a resume. A run too short to finish that schedule
  (``warmup_fit``, the default) ramps evenly to β instead, reaching it in its last epoch, so a
  short run trains its prior too; a run that still ends with its prior untrained is warned of.
* Validation under ``no_grad`` in eval mode, at the epoch's KL weight.
* Early stopping on the validation loss, counted only once the warm-up is over. With
  ``lr_drops`` = n, the first n times it would stop, training goes on instead from the best
  epoch's weights at ``lr_drop_factor`` times the LR, with fresh Adam moments (a two-stage
  schedule in one run); the drop is redone identically by a resume from the epoch before it.
* LR decay: ``lr · lr_decay^⌊epoch / lr_decay_every⌋``, also a pure function of the epoch
  (``lr_decay_every`` > 1: a staircase, as TensorFlow's ``exponential_decay(staircase=True)``).
* Frozen parameters (``freeze``, ``freeze_epochs``): the parameters under the named modules get
  no update, and no part in the clipped gradient norm, during the first ``freeze_epochs``
  epochs (the KVAE authors' ``kf_update_steps``: the α-network joins after 10 epochs).
* Scheduled sampling (``scheduled_sampling``): every epoch the model is told the probability p
  that its decoder recurrence reads its own prediction (:meth:`DVAE.set_feedback`; training and
  validation), p rising from ``ss_start`` by ``ss_step`` every ``ss_every`` epochs to 1, a pure
  function of the epoch. Until p = 1 the epochs count as warm-up. The optimiser's state is kept
  across the schedule's steps unless ``ss_reset_optimizer`` (the original re-creates it).
* ``best.pt``: the weights of the best epoch (written when it happens, so a true copy).
  ``last.pt``: everything needed to resume, written atomically after every epoch; a crash
  (even ``kill -9`` during a write), NaN loss, SIGTERM or Ctrl-C leaves the last completed epoch
  resumable with ``resume=true``. SIGTERM and Ctrl-C stop between epochs' writes, never inside.
* Checkpoints hold only tensors and plain Python values and are read with
  ``torch.load(weights_only=True)``, so loading a ``.pt`` from elsewhere cannot run code.
* Several processes (``train.distributed``, :mod:`pyro_dvae.distributed`): each rank trains on
  its share of every global batch through DistributedDataParallel; per-step frame counts,
  non-finite losses (the previous step's) and stop signals, and every epoch's losses are
  all-reduced, so all ranks take the same steps and stop together; rank 0 alone writes. The
  checkpoint keeps every rank's RNG states and resumes on any number of processes (exactly on
  the same number).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from numbers import Real
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from pyro.optim.clipped_adam import ClippedAdam
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pyro_dvae.distributed import SINGLE, Cluster, batch_sampler
from pyro_dvae.feedback import check_schedule, ramp, sampling_probability
from pyro_dvae.models.base import DVAE
from pyro_dvae.records import (
    atomic_save,
    load_checkpoint,
    plot_losses,
    rng_state,
    seed_everything,
    set_rng_state,
    write_metrics,
)
from pyro_dvae.step import (
    ALLOCATORS,
    ELBOS,
    PRECISIONS,
    STEPS,
    ELBOLoss,
    GraphStep,
    capturable,
    choose_step,
    compile_networks,
    keep_freed_memory,
    loss_terms,
    portable,
    reset_moments,
    set_lr,
    train_step,
)

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "clipped_adam")
VAL_NOISES = ("fresh", "fixed")
"""``train.val_noise``: the validation ELBO's draws of z, new at every validation or the same
ones (common random numbers, so that epochs differ by their weights, not by their luck)."""
BATCHES = ("random", "sorted")
"""``train.batches``: random training batches every epoch, or the same batches of sequences of
near-equal length in a new order (:class:`~pyro_dvae.distributed.SortedBatches`: less padding)."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PLOT_SECONDS = 30.0
"""``loss.png`` is redrawn at most this often during training (a drawing costs ~0.3 s)."""


@dataclass
class TrainConfig:
    """The ``train`` config group (see ``configs/config.yaml``); checked when built, so a bad
    value fails before training starts with an error naming the key."""

    epochs: int = 500
    batch_size: int = 128
    lr: float = 2e-3
    beta: float = 1.0
    warmup_every: int = 10
    warmup_step: float = 0.2
    warmup_start: float = 0.0
    warmup_fit: bool = True
    early_stop_patience: int = 50
    lr_drops: int = 0
    lr_drop_factor: float = 0.1
    elbo: str = "mean_field"
    num_workers: int = 0
    progress: bool = True
    optimizer: str = "adam"
    clip_norm: float | None = None
    lr_decay: float = 1.0
    lr_decay_every: int = 1
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    l2: float = 0.0
    scheduled_sampling: bool = False
    ss_start: float = 0.1
    ss_step: float = 0.1
    ss_every: int = 10
    ss_reset_optimizer: bool = False
    init_from: str | None = None
    distributed: bool = False
    freeze: tuple[str, ...] = ()
    freeze_epochs: int = 0
    step: str = "auto"
    precision: str = "float32"
    cpu_allocator: str = "keep"
    val_noise: str = "fresh"
    batches: str = "random"

    def __post_init__(self) -> None:
        for key, low in (
            ("epochs", 0), ("batch_size", 1), ("warmup_every", 0), ("early_stop_patience", 0),
            ("num_workers", 0), ("lr_drops", 0),
        ):  # fmt: skip
            value = getattr(self, key)
            _require(key, value, _is_int(value, low), f"an integer >= {low}")
        for key in ("lr", "warmup_step"):
            _require(key, getattr(self, key), _is_positive(getattr(self, key)), "a number > 0")
        _require("beta", self.beta, _is_positive(self.beta) or self.beta == 0, "a number >= 0")
        start_ok = isinstance(self.warmup_start, Real) and 0 <= self.warmup_start <= 1
        _require("warmup_start", self.warmup_start, start_ok, "a number in [0, 1]")
        _require("elbo", self.elbo, self.elbo in ELBOS, f"one of {sorted(ELBOS)}")
        _require("step", self.step, self.step in STEPS, f"one of {STEPS}")
        precision_ok = self.precision in PRECISIONS
        _require("precision", self.precision, precision_ok, f"one of {tuple(PRECISIONS)}")
        allocator_ok = self.cpu_allocator in ALLOCATORS
        _require("cpu_allocator", self.cpu_allocator, allocator_ok, f"one of {ALLOCATORS}")
        _require("val_noise", self.val_noise, self.val_noise in VAL_NOISES, f"one of {VAL_NOISES}")
        _require("batches", self.batches, self.batches in BATCHES, f"one of {BATCHES}")
        _require("progress", self.progress, isinstance(self.progress, bool), "true or false")
        _require("optimizer", self.optimizer, self.optimizer in OPTIMIZERS, f"one of {OPTIMIZERS}")
        clip_ok = self.clip_norm is None or _is_positive(self.clip_norm)
        _require("clip_norm", self.clip_norm, clip_ok, "null (no clipping) or a number > 0")
        factor_ok = _is_positive(self.lr_drop_factor) and self.lr_drop_factor < 1
        _require("lr_drop_factor", self.lr_drop_factor, factor_ok, "a number in (0, 1)")
        decay_ok = _is_positive(self.lr_decay) and self.lr_decay <= 1
        _require("lr_decay", self.lr_decay, decay_ok, "a number in (0, 1] (1: no decay)")
        every_ok = _is_int(self.lr_decay_every, 1)
        _require("lr_decay_every", self.lr_decay_every, every_ok, "an integer >= 1 (epochs)")
        freeze_ok = isinstance(self.freeze, (list, tuple))
        freeze_ok = freeze_ok and all(isinstance(n, str) and n for n in self.freeze)
        _require("freeze", self.freeze, freeze_ok, "a list of module names, e.g. [dynamics.A]")
        self.freeze = tuple(self.freeze)
        epochs_ok = _is_int(self.freeze_epochs, 0)
        _require("freeze_epochs", self.freeze_epochs, epochs_ok, "an integer >= 0")
        betas_ok = isinstance(self.betas, (list, tuple)) and len(self.betas) == 2
        betas_ok = betas_ok and all(_is_number(b) and 0 <= b < 1 for b in self.betas)
        _require("betas", self.betas, betas_ok, "two numbers in [0, 1), e.g. [0.9, 0.999]")
        self.betas = tuple(self.betas)
        wd_ok = _is_number(self.weight_decay) and self.weight_decay >= 0
        _require("weight_decay", self.weight_decay, wd_ok, "a number >= 0 (0: none)")
        l2_ok = _is_number(self.l2) and self.l2 >= 0
        _require("l2", self.l2, l2_ok, "a number >= 0 (0: none)")
        for key in ("warmup_fit", "scheduled_sampling", "ss_reset_optimizer", "distributed"):
            _require(key, getattr(self, key), isinstance(getattr(self, key), bool), "true or false")
        check_schedule(self.ss_start, self.ss_step, self.ss_every)
        init_ok = self.init_from is None or isinstance(self.init_from, str)
        _require("init_from", self.init_from, init_ok, "null or a run directory / checkpoint")


def _is_int(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_positive(value: object) -> bool:
    return _is_number(value) and value > 0


def _is_number(value: object) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _require(key: str, value: object, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"train.{key}={value!r}: expected {expected}")


@dataclass
class TrainState:
    """What ``last.pt`` remembers besides weights and optimiser."""

    epoch: int = 0
    seed: int = 0  # the shuffle's: the training order is a function of it and the epoch
    best_val: float = math.inf
    best_epoch: int = -1
    patience: int = 0
    lr_drops: int = 0  # LR drops taken (train.lr_drops)
    history: list[dict] = field(default_factory=list)
    warmup_epochs: int | None = None  # a warm-up fitted to the run (fitted_warmup): its length


def kl_weight(epoch: int, cfg: TrainConfig, fitted: int | None = None) -> float:
    """KL warm-up × β: ``warmup_start`` (the spec's 0, or e.g. Pyro's DMM's 0.2) for the first
    ``warmup_every`` epochs, then ``+warmup_step`` every ``warmup_every`` epochs up to 1
    (spec §4.3). ``warmup_every=0`` disables the warm-up.

    ``fitted`` (:func:`fitted_warmup`, kept in the run's state): a warm-up fitted to a run of
    ``fitted`` epochs, ``start + (1 − start) · (epoch + 1) / fitted``, so the weight is above 0
    from the first epoch (for ``start < 1``) and reaches 1 in the run's last epoch."""
    return _warmup(epoch, cfg, fitted) * cfg.beta


def _warmup(epoch: int, cfg: TrainConfig, fitted: int | None = None) -> float:
    if cfg.warmup_every <= 0:
        return 1.0
    if fitted:
        start = cfg.warmup_start
        return min(1.0, round(start + (1 - start) * (epoch + 1) / fitted, 12))
    return ramp(epoch, cfg.warmup_start, cfg.warmup_step, cfg.warmup_every)


def warmup_length(cfg: TrainConfig) -> int:
    """The first epoch at full KL weight on the configured schedule (0 without warm-up)."""
    if cfg.warmup_every <= 0 or cfg.warmup_start >= 1:
        return 0
    return cfg.warmup_every * math.ceil(round((1 - cfg.warmup_start) / cfg.warmup_step, 9))


def fitted_warmup(cfg: TrainConfig) -> int | None:
    """``warmup_fit``: the length of a warm-up fitted to a run that would end before the
    configured schedule reaches full weight (``epochs`` ≤ :func:`warmup_length`), else None
    (the configured schedule). Decided when a run starts and kept in its checkpoint, so a
    resumed run keeps its schedule even if ``train.epochs`` changes."""
    if cfg.warmup_fit and 0 < cfg.epochs <= warmup_length(cfg):
        return cfg.epochs
    return None


def warmup_done(epoch: int, cfg: TrainConfig, fitted: int | None = None) -> bool:
    sampling_done = not cfg.scheduled_sampling or feedback_probability(epoch, cfg) >= 1.0
    return _warmup(epoch, cfg, fitted) >= 1.0 and sampling_done


def describe_warmup(cfg: TrainConfig, fitted: int | None) -> str:
    """One line for the log: the KL weights of the run and how best.pt is chosen."""
    if cfg.warmup_every <= 0 or cfg.warmup_start >= 1:
        return f"KL weight {cfg.beta:g} from the first epoch; best.pt: lowest validation loss"
    best = (
        "best.pt during warm-up: the latest epoch (a loss at a lower KL weight is not compared "
        "with later ones), then the epoch of lowest validation loss"
    )
    if fitted:
        weights = ", ".join(f"{kl_weight(e, cfg, fitted):.2f}" for e in range(min(fitted, 5)))
        more = ", ..." if fitted > 5 else ""
        return (
            f"KL warm-up fitted to this {fitted}-epoch run (the configured schedule needs "
            f"{warmup_length(cfg)} epochs to reach full weight; train.warmup_fit=false keeps it): "
            f"weights {weights}{more} up to {cfg.beta:g} in the last epoch; {best}"
        )
    return (
        f"KL warm-up: weight {cfg.warmup_start:g} for epochs 0-{cfg.warmup_every - 1}, then "
        f"+{cfg.warmup_step:g} every {cfg.warmup_every} epochs, full weight ({cfg.beta:g}) from "
        f"epoch {warmup_length(cfg)}; {best}"
    )


def untrained_prior_warning(history: list[dict], cfg: TrainConfig) -> str | None:
    """A warning when a finished run never trained its prior (KL weight 0 in every epoch) or
    ended during its warm-up; None otherwise (or when ``beta`` is 0 on purpose)."""
    if not history or cfg.beta == 0:
        return None
    weights = [row["kl_weight"] for row in history]
    if max(weights) == 0:
        return (
            f"the KL weight was 0 in all {len(weights)} epochs (KL warm-up), so the prior p(z) "
            "was never trained and nothing kept q(z|x) near it: this run trained an "
            "autoencoder. Train for more epochs, or use train.warmup_fit=true or "
            "train.warmup_every=0"
        )
    if weights[-1] < cfg.beta:
        return (
            f"the run ended during the KL warm-up (weight {weights[-1]:g} of {cfg.beta:g}): its "
            "prior was trained at a reduced weight and best.pt is its latest epoch"
        )
    return None


def feedback_probability(epoch: int, cfg: TrainConfig) -> float:
    """The probability that the decoder reads its own prediction: scheduled sampling's p, or 0
    (teacher forcing) without it."""
    if not cfg.scheduled_sampling:
        return 0.0
    return sampling_probability(epoch, cfg.ss_start, cfg.ss_step, cfg.ss_every)


def learning_rate(epoch: int, cfg: TrainConfig, drops: int = 0) -> float:
    """``lr · lr_decay^⌊epoch / lr_decay_every⌋ · lr_drop_factor^drops``: the LR of every step
    of ``epoch`` after ``drops`` LR drops."""
    return cfg.lr * cfg.lr_decay ** (epoch // cfg.lr_decay_every) * cfg.lr_drop_factor**drops


def frozen_parameters(model: torch.nn.Module, names: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """The parameters ``train.freeze`` names: a name covers the parameter or module of that name
    and everything below it (``dynamics.A`` covers ``dynamics.A``, not ``dynamics.alpha_out``).

    Raises:
        ValueError: naming ``train.freeze`` and the model's modules, for a name that covers no
            parameter.
    """
    named = dict(model.named_parameters())
    frozen = []
    for name in names:
        found = [p for n, p in named.items() if n == name or n.startswith(f"{name}.")]
        if not found:
            modules = sorted({".".join(n.split(".")[:2]) for n in named})
            raise ValueError(
                f"train.freeze: {name!r} names no parameter of the model; expected names "
                f"under {modules}"
            )
        frozen += found
    return frozen


def build_optimizer(
    params: Iterator[torch.nn.Parameter], cfg: TrainConfig
) -> torch.optim.Optimizer:
    """``torch.optim.Adam``, or Pyro's ``ClippedAdam``, which clamps every gradient element to
    ``[-clip_norm, clip_norm]`` before its Adam step (no clamping when ``clip_norm`` is null).
    Both with ``betas`` and an L2 ``weight_decay`` (``weight_decay · θ`` added to the gradient of
    the per-frame loss, after any clipping).

    On the CPU, Adam runs torch's fused kernel: one pass over each parameter instead of about
    eight, the same update to rounding (0.1–1.1 ms a step against 0.3–3.0 ms for the speech
    models, VAE to DSAE). On CUDA it keeps torch's default, which the captured step makes
    capturable (:func:`~pyro_dvae.step.capturable`)."""
    params = list(params)
    adam = {"lr": cfg.lr, "betas": tuple(cfg.betas), "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "clipped_adam":
        clip = math.inf if cfg.clip_norm is None else cfg.clip_norm
        return ClippedAdam(params, clip_norm=clip, **adam)
    on_cpu = all(p.device.type == "cpu" for p in params)
    return torch.optim.Adam(params, fused=on_cpu or None, **adam)


class Trainer:
    """Fits a model to a task's train split, validating and checkpointing every epoch: the epoch
    loop and its decisions (KL weight, LR, feedback probability, best epoch, early stopping).

    Each batch is one :func:`~pyro_dvae.step.train_step`; what is saved, written and logged,
    and how stop signals are handled, is :class:`Bookkeeping`'s. The cluster appears only at
    the edges: this rank's share of the data, the DDP-wrapped loss, and :meth:`_synchronise`,
    which all-reduces what the loop reports (frames, non-finite losses, stop signals, sums).

    Args:
        model: the DVAE, already on ``device``.
        train_set, val_set: datasets of ``(T, D)`` tensors.
        cfg: training options.
        run_dir: where ``last.pt``, ``best.pt``, ``metrics.csv`` and ``loss.png`` go.
        device: torch device of the model.
        seed: seeds Python, NumPy and torch (plus the rank) and the shuffle (a function of the
            seed and the epoch).
        extra_state: saved into every checkpoint (e.g. the resolved config); plain Python values
            and tensors only, as checkpoints are read with ``weights_only=True``.
        cluster: this process's rank among the training processes (:data:`SINGLE`: alone).
    """

    def __init__(
        self,
        model: DVAE,
        train_set: Dataset,
        val_set: Dataset,
        cfg: TrainConfig,
        run_dir: Path,
        device: torch.device,
        seed: int = 0,
        extra_state: dict | None = None,
        cluster: Cluster = SINGLE,
    ) -> None:
        self.model, self.cfg, self.run_dir, self.device = model, cfg, Path(run_dir), device
        self.extra_state, self.seed, self.cluster = extra_state or {}, seed, cluster
        self.books = Bookkeeping(self.run_dir, writes=cluster.main, deferred=cluster.connected)
        seed_everything(seed + cluster.rank)  # every rank draws its own noise
        self.optimizer = build_optimizer(model.parameters(), cfg)
        # with clipped_adam, clip_norm is the optimiser's own element-wise clamp
        self.clip_norm = cfg.clip_norm if cfg.optimizer == "adam" else None
        self.frozen = frozen_parameters(model, cfg.freeze) if cfg.freeze_epochs else []
        self.loss = cluster.wrap(ELBOLoss(model, cfg.elbo, cfg.precision))
        self.state = TrainState(seed=seed, warmup_epochs=fitted_warmup(cfg))
        self.graph = self._choose_step(cluster.world_size)
        self.train_loader = self._loader(train_set, shuffle=True)
        self.val_loader = self._loader(val_set, shuffle=False)

    def _choose_step(self, processes: int) -> GraphStep | None:
        """Set up ``train.step`` (:func:`~pyro_dvae.step.choose_step`), say which step runs and
        why; returns the captured step where it is ``graph``."""
        kind, why = choose_step(self.cfg.step, self.device, self.cfg.optimizer, processes)
        self.books.info(f"training step: {kind} ({why}); {self._precision()}")
        if self.device.type == "cpu":
            self.books.info(f"CPU allocator: {self._set_allocator()}")
        if kind == "compile":
            compile_networks(self.model)
        if kind != "graph":
            return None
        capturable(self.optimizer)
        return GraphStep(self.loss, self.optimizer, self.clip_norm, self.cfg.l2)

    def _precision(self) -> str:
        """``train.precision`` and what it means, for the log."""
        other = "bfloat16" if self.cfg.precision == "float32" else "float32"
        return (
            f"precision {self.cfg.precision}: {PRECISIONS[self.cfg.precision]} "
            f"(train.precision={other} to change)"
        )

    def _set_allocator(self) -> str:
        """Apply ``train.cpu_allocator`` (:func:`~pyro_dvae.step.keep_freed_memory`); says what
        is in use, and why, for the log."""
        if self.cfg.cpu_allocator == "system":
            return "system (train.cpu_allocator=system)"
        problem = keep_freed_memory()
        if problem:
            return f"system ({problem}; train.cpu_allocator=keep has no effect)"
        return "keep (freed memory stays for the next step; train.cpu_allocator=system to opt out)"

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        """This rank's share of each batch (:func:`~pyro_dvae.distributed.batch_sampler`),
        fetched at once (see :class:`Batches`), not item by item; from a copy on the GPU when
        the step is a CUDA graph."""
        resident = self.device.type == "cuda" and self.graph is not None
        return DataLoader(
            Batches(dataset, self.device if resident else None),
            sampler=batch_sampler(
                dataset,
                self.cfg.batch_size,
                self.cluster,
                self.seed,
                shuffle,
                by_length=self.cfg.batches == "sorted",
            ),
            batch_size=None,
            num_workers=0 if resident else self.cfg.num_workers,
            pin_memory=self.device.type == "cuda" and not resident,
        )

    # --- checkpoints -------------------------------------------------------------------

    def checkpoint(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": portable(self.optimizer.state_dict()),
            "state": asdict(self.state),
            "rng": self.cluster.gather(rng_state()),
            **self.extra_state,
        }

    def resume(self, path: Path) -> None:
        """Continue from the checkpoint ``path`` (``last.pt``)."""
        self.restore(load_checkpoint(path, self.device))

    def restore(self, ckpt: dict) -> None:
        """Continue from a loaded checkpoint: weights, optimiser, counters, history and RNG
        states. Rank r takes the saved states of rank r; a rank the saved run did not have
        (resumed on more processes) is seeded from the seed, its rank and the epoch."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.graph is not None:
            capturable(self.optimizer)
        self.state = TrainState(**{"seed": self.seed, **ckpt["state"]})
        states = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
        if self.cluster.rank < len(states):
            set_rng_state(states[self.cluster.rank])
        else:
            seed_everything(self.state.seed + self.cluster.rank + 1000 * self.state.epoch)
        log.info("resumed at epoch %d", self.state.epoch)

    # --- loop --------------------------------------------------------------------------

    def fit(self) -> TrainState:
        """Train until ``epochs`` or early stopping; returns the final state.

        SIGTERM is handled like Ctrl-C: both stop with ``KeyboardInterrupt`` and a one-line
        message, never inside the writes of an epoch's checkpoints and metrics; with several
        processes, all of them at the next all-reduce after any one is signalled. ``loss.png``
        is redrawn every :data:`PLOT_SECONDS` and when fit() ends, however it ends."""
        pyro.enable_validation(False)
        books, state = self.books, self.state
        books.info(describe_warmup(self.cfg, state.warmup_epochs))
        try:
            with books.signals():
                if state.history:  # resumed: a kill may have come between last.pt and
                    with books.writing():  # metrics.csv
                        books.write_metrics(state.history)
                self._epochs()
            books.warning(untrained_prior_warning(self.state.history, self.cfg))
        except KeyboardInterrupt:
            log.warning("%s", books.interrupted(self.state.epoch))
            raise
        finally:
            books.plot(self.state.history)
        return self.state

    def _epochs(self) -> None:
        cfg, state = self.cfg, self.state
        while state.epoch < cfg.epochs:
            if self.stalled() and state.lr_drops < cfg.lr_drops:
                self.drop_lr()
            row = self.run_epoch(state.epoch)
            with self.books.writing():
                self.end_epoch(row)
            if self.stalled() and state.lr_drops >= cfg.lr_drops:
                log.info("early stopping after epoch %d (best %d)", row["epoch"], state.best_epoch)
                return

    def warm(self, epoch: int) -> bool:
        """Whether ``epoch`` is past the KL warm-up (and scheduled sampling's ramp)."""
        return warmup_done(epoch, self.cfg, self.state.warmup_epochs)

    def stalled(self) -> bool:
        """Whether the validation loss has not improved for ``early_stop_patience`` epochs
        past the warm-up, up to the last epoch run."""
        state = self.state
        last_warm = bool(state.history) and self.warm(state.epoch - 1)
        return last_warm and state.patience >= self.cfg.early_stop_patience

    def drop_lr(self) -> None:
        """``train.lr_drops``: back to the weights of ``best.pt``, fresh Adam moments, the LR
        times ``lr_drop_factor`` from the next epoch on, and patience counted anew. Run before
        the epoch that follows the stall, so a resume from the stalled epoch's ``last.pt``
        redoes it (``best.pt`` cannot have changed since)."""
        state = self.state
        best = load_checkpoint(self.run_dir / "best.pt", self.device)
        self.model.load_state_dict(best["model"])
        reset_moments(self.optimizer)
        state.lr_drops, state.patience = state.lr_drops + 1, 0
        log.info(
            "no better validation loss for %d epochs: LR x %g (drop %d of %d) from epoch %d, "
            "from the weights of best epoch %d",
            self.cfg.early_stop_patience,
            self.cfg.lr_drop_factor,
            state.lr_drops,
            self.cfg.lr_drops,
            state.epoch,
            best["epoch"],
        )

    def _synchronise(self, values: list[float]) -> list[float]:
        """``values`` summed over the ranks, together with whether any rank was signalled to
        stop; if one was, every rank stops here with ``KeyboardInterrupt``."""
        books = self.books
        *total, stops = self.cluster.sum([*values, books.stop_signal is not None])
        if stops:
            books.stop_signal = books.stop_signal or "a signal to another process"
            raise KeyboardInterrupt(books.stop_signal)
        return total

    def _step_scale(self, n: int) -> float:
        """The cluster's part of a step, before it: this rank's ``n`` frames all-reduced (with
        any stop signal; nothing in a single process). Returns the factor on this rank's loss
        (:meth:`~pyro_dvae.distributed.Cluster.step_weight`; 1 in a single process)."""
        if not self.cluster.connected:
            return 1.0
        (all_frames,) = self._synchronise([n])
        return self.cluster.step_weight(n, all_frames)

    def _check_finite(self, bad: float, value: float, epoch: int) -> None:
        """Stop every rank if any had a non-finite training loss (``bad``: how many ranks;
        ``value``: this rank's latest loss)."""
        if bad:
            raise FloatingPointError(
                f"non-finite loss {value} at epoch {epoch}; {self.run_dir / 'last.pt'} "
                "still holds the last good epoch (try a lower train.lr)"
            )

    def run_epoch(self, epoch: int) -> dict:
        weight = kl_weight(epoch, self.cfg, self.state.warmup_epochs)
        lr = learning_rate(epoch, self.cfg, self.state.lr_drops)
        set_lr(self.optimizer, lr)
        p = feedback_probability(epoch, self.cfg)
        self.model.set_feedback(p)
        if self.cfg.ss_reset_optimizer and epoch and p != feedback_probability(epoch - 1, self.cfg):
            reset_moments(self.optimizer)
        start = time.perf_counter()
        (total, train_frames), wait = self.train_epoch(epoch, weight)
        seconds = time.perf_counter() - start
        sums = self._synchronise([total, train_frames, not math.isfinite(total), *self.validate()])
        loss, train_frames, bad, recon, kl, val_frames = sums
        self._check_finite(bad, total / train_frames, epoch)
        val_recon, val_kl = recon / val_frames, kl / val_frames
        return {
            "epoch": epoch,
            "kl_weight": weight,
            "lr": lr,
            **({"feedback_p": p} if self.cfg.scheduled_sampling else {}),
            "train_loss": loss / train_frames,
            "val_loss": val_recon + weight * val_kl,
            "val_recon": val_recon,
            "val_kl": val_kl,
            "seconds": seconds,
            "data_wait_seconds": wait,
        }

    def train_epoch(self, epoch: int, weight: float) -> tuple[tuple[float, int], float]:
        """One pass over this rank's share of the training set, one step a batch
        (:meth:`step`). The losses are summed on the device and read once, at the end: a
        non-finite one stops every rank at the epoch's all-reduce (:meth:`run_epoch`), before
        any checkpoint holds it.

        Returns:
            (the sum of the per-frame losses times the frames, the number of frames), and the
            seconds spent waiting for the DataLoader.
        """
        self.model.train()
        order = self.train_loader.sampler  # SortedBatches, or a BatchSampler over the
        order = getattr(order, "sampler", order)  # DistributedSampler that shuffles
        order.seed = self.state.seed
        order.set_epoch(epoch)
        frozen = self.frozen if epoch < self.cfg.freeze_epochs else ()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count, wait, shown = 0, 0.0, time.monotonic()
        batches = tqdm(
            self.train_loader,
            desc=f"epoch {epoch}",
            leave=False,
            disable=not (self.cfg.progress and self.books.writes),
        )
        tick = time.perf_counter()
        for batch in batches:
            wait += time.perf_counter() - tick
            n = frames(*unpacked(batch))  # on the host, before the copy
            x, mask = on_device(batch, self.device)
            loss = self.step(x, mask, weight, self._step_scale(n), frozen)
            total += loss.double() * n
            count += n
            if not batches.disable and time.monotonic() - shown > 1:  # reads the device
                batches.set_postfix(loss=f"{total.item() / count:.3f}")
                shown = time.monotonic()
            tick = time.perf_counter()
        return (total.item(), count), wait

    def step(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        weight: float,
        scale: float,
        frozen: Sequence[torch.nn.Parameter],
    ) -> torch.Tensor:
        """One training step on a batch, eager (or with compiled networks) or a replayed CUDA
        graph; returns its per-frame loss ``()``, still on the device."""
        if self.graph is not None:
            if mask is not None:  # a few padded lengths: one capture each
                x, mask = pad_steps(x, mask, BUCKET_STEPS)
            return self.graph(x, mask, weight, frozen)
        return train_step(
            self.loss, self.optimizer, x, mask, weight, scale, frozen, self.clip_norm, self.cfg.l2
        )

    @torch.no_grad()
    def validate(self) -> tuple[float, float, int]:
        """Sums over this rank's share of the validation set (eval mode) of the per-frame
        reconstruction and KL times the frames, and the number of frames; its draws of z as
        ``train.val_noise`` says (:meth:`validation_noise`)."""
        self.model.eval()
        recon, kl, count = 0.0, 0.0, 0
        with self.validation_noise():
            for batch in self.val_loader:
                x, mask = on_device(batch, self.device)
                with self.model.step_mask(mask):
                    r, k = loss_terms(self.model, x)
                n = frames(x, mask)
                recon, kl, count = recon + r.item() * n, kl + k.item() * n, count + n
        return recon, kl, count

    @contextmanager
    def validation_noise(self) -> Iterator[None]:
        """``fresh``: the draws continue the run's random stream. ``fixed``: every validation
        draws from the same seed (the run's, plus the rank), in a fork of the random state, so
        the training's stream is as if no validation had run."""
        if self.cfg.val_noise == "fresh":
            yield
            return
        devices = [torch.cuda.current_device()] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + self.cluster.rank)
            yield

    def end_epoch(self, row: dict) -> None:
        """Early-stopping decisions (on every rank, from all-reduced losses), then the epoch's
        records (:class:`Bookkeeping`: written on rank 0)."""
        state, epoch = self.state, row["epoch"]
        if not math.isfinite(row["val_loss"]):
            raise FloatingPointError(f"non-finite validation loss at epoch {epoch}")
        warm = self.warm(epoch)
        if not warm or row["val_loss"] < state.best_val:
            # During warm-up the latest epoch is the best so far, but its loss (at a lower KL
            # weight) is not compared with later ones: best_val stays at inf until warm.
            state.best_val = row["val_loss"] if warm else math.inf
            state.best_epoch, state.patience = epoch, 0
            self.books.save_best(self.model, epoch, self.extra_state)
        else:
            state.patience += 1
        row["best_epoch"] = state.best_epoch
        state.history.append(row)
        state.epoch = epoch + 1
        self.books.end_epoch(self.checkpoint(), state.history, warm)  # every rank: RNG gather


class Bookkeeping:
    """A run's records and its stop signals: what :class:`Trainer` saves, writes and logs.

    Only where ``writes`` (rank 0): ``best.pt`` when an epoch is the best so far; after every
    epoch ``last.pt`` (atomically), ``metrics.csv``, ``loss.png`` (at most every
    :data:`PLOT_SECONDS`, and when training ends) and a log line.

    On every rank: SIGINT and SIGTERM (inside :meth:`signals`) are recorded in
    :attr:`stop_signal` and raise ``KeyboardInterrupt`` at once, or at the end of the current
    :meth:`writing` block; with several processes (``deferred``) they raise nothing here, and
    the trainer stops every rank at its next all-reduce.
    """

    def __init__(self, run_dir: Path, writes: bool, deferred: bool) -> None:
        self.run_dir, self.writes, self.deferred = run_dir, writes, deferred
        if writes:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.stop_signal: str | None = None  # SIGINT / SIGTERM received during fit()
        self.busy = False  # inside an epoch's writes: stop signals wait for their end
        self.plotted = time.monotonic()  # when loss.png was last drawn

    @contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM stop training (see the class); the previous handlers come back
        afterwards. Only the main thread can handle signals: elsewhere nothing changes."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum: int, frame: object) -> None:
            self.stop_signal = signal.Signals(signum).name
            if not self.busy and not self.deferred:
                raise KeyboardInterrupt(self.stop_signal)

        previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """A stop signal received inside waits for the end, so checkpoints, metrics and
        counters always agree."""
        self.busy = True
        try:
            yield
        finally:
            self.busy = False
        if self.stop_signal and not self.deferred:
            raise KeyboardInterrupt(self.stop_signal)

    def info(self, message: str) -> None:
        if self.writes:
            log.info("%s", message)

    def warning(self, message: str | None) -> None:
        if message and self.writes:
            log.warning("%s", message)

    def interrupted(self, epoch: int) -> str:
        """The line that tells a stopped run (``epoch`` epochs saved) how to continue."""
        cause = f"stopped by {self.stop_signal}" if self.stop_signal else "interrupted"
        if epoch == 0:
            return f"{cause} before the first epoch ended: nothing saved in {self.run_dir}"
        return (
            f"{cause}: {self.run_dir / 'last.pt'} holds epochs 0-{epoch - 1}; "
            "continue with resume=true"
        )

    def save_best(self, model: torch.nn.Module, epoch: int, extra_state: dict) -> None:
        """``best.pt``: ``model``'s weights now (a true copy of the best epoch's)."""
        if self.writes:
            atomic_save(
                {"model": model.state_dict(), "epoch": epoch, **extra_state},
                self.run_dir / "best.pt",
            )

    def end_epoch(self, checkpoint: dict, history: list[dict], warm: bool) -> None:
        """``last.pt`` (``checkpoint``), ``metrics.csv`` and the log line of the epoch that
        ``history`` ends with (``warm``: past the warm-up), and ``loss.png`` when due."""
        if not self.writes:
            return
        atomic_save(checkpoint, self.run_dir / "last.pt")
        self.write_metrics(history)
        if time.monotonic() - self.plotted >= PLOT_SECONDS:
            self.plot(history)
        row = history[-1]
        log.info(
            "epoch %d  kl_w %.2f  train %.4f  val %.4f (recon %.4f, kl %.4f)  best %d%s  %.1fs",
            row["epoch"],
            row["kl_weight"],
            row["train_loss"],
            row["val_loss"],
            row["val_recon"],
            row["val_kl"],
            row["best_epoch"],
            "" if warm else " (warm-up: the latest)",
            row["seconds"],
        )

    def write_metrics(self, history: list[dict]) -> None:
        if self.writes:
            write_metrics(history, self.run_dir / "metrics.csv")

    def plot(self, history: list[dict]) -> None:
        """Redraw ``loss.png`` from ``history`` (nothing to draw before the first epoch)."""
        if history and self.writes:
            plot_losses(history, self.run_dir / "loss.png")
            self.plotted = time.monotonic()


# --- helpers ----------------------------------------------------------------------------


class Batches(Dataset):
    """A dataset indexed by lists of items: ``dataset.batch(index)`` when it has one (one
    tensor gather for the whole batch), else the stacked items. Returns ``(B, T, D)``, or
    ``(x (B, T, D), mask (B, T))`` from a ``batch`` of padded sequences (mask False on
    padding: see :func:`on_device`).

    With a ``device``, the whole split is kept there when it fits (:func:`resident_copy`),
    and a batch is an index gather on the device: no host-to-device copy of the data."""

    def __init__(self, dataset: Dataset, device: torch.device | None = None) -> None:
        self.dataset = dataset
        self.resident = None if device is None else resident_copy(dataset, device)

    def __getitem__(self, index: list[int]) -> torch.Tensor:
        if self.resident is not None:
            where = torch.as_tensor(index)
            if self.resident.is_cuda:  # pinned: the copy does not wait for the device
                where = where.pin_memory().to(self.resident.device, non_blocking=True)
            return self.resident[where]
        if hasattr(self.dataset, "batch"):
            return self.dataset.batch(torch.as_tensor(index))
        return torch.stack([self.dataset[i] for i in index])


BUCKET_STEPS = 16
"""Under a captured step, padded batches are padded further to a multiple of this many steps."""


def pad_steps(
    x: torch.Tensor, mask: torch.Tensor, multiple: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch ``x (B, T, D)``, ``mask (B, T)`` padded (zeros, False) to the next multiple
    of ``multiple`` steps: the same loss, from a few batch shapes."""
    extra = -x.shape[1] % multiple
    return F.pad(x, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


RESIDENT_SHARE = 0.25
"""A training split is kept on the device if it takes at most this share of its free memory."""


def resident_copy(dataset: Dataset, device: torch.device) -> torch.Tensor | None:
    """The whole split ``(N, T, D)`` on ``device``, or None: for a dataset with a ``batch``
    gather of unpadded items that takes at most :data:`RESIDENT_SHARE` of the device's free
    memory (any size on the CPU)."""
    if not hasattr(dataset, "batch") or len(dataset) == 0:
        return None
    items = dataset.batch(torch.arange(len(dataset)))
    if not torch.is_tensor(items):  # padded sequences: (x, mask)
        return None
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        if items.numel() * items.element_size() > RESIDENT_SHARE * free:
            return None
    return items.to(device)


def on_device(batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch ``x (B, T, D)`` or ``(x, mask (B, T))`` as ``(x, mask or None)`` on ``device``.
    A mask is False on padded steps: the model scores the batch under
    :meth:`~pyro_dvae.models.base.DVAE.step_mask`, and losses are per valid frame."""
    x, mask = unpacked(batch)
    x = x.to(device, non_blocking=True)
    return x, None if mask is None else mask.to(device, non_blocking=True)


def unpacked(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch ``x (B, T, D)`` or ``(x, mask (B, T))`` as ``(x, mask or None)``."""
    return batch if isinstance(batch, (tuple, list)) else (batch, None)


def frames(x: torch.Tensor, mask: torch.Tensor | None) -> int:
    """The number of (valid) frames of a batch ``x (B, T, D)``."""
    return x.shape[0] * x.shape[1] if mask is None else int(mask.sum())

"""The training loop shared by every model and dataset.

Stochastic variational inference: each step evaluates the ELBO of the model/guide pair with
``TraceMeanField_ELBO`` (analytic per-step KL, the default) or ``Trace_ELBO``, and takes one
``torch.optim.Adam`` step on its ``differentiable_loss`` (one fused optimiser over all
parameters, whose state is saved and restored exactly).

Bookkeeping (spec §4.3–4.4, with its bugs fixed):

* KL warm-up: weight ``min(1, step · ⌊epoch / every⌋)`` times β; a pure function of the epoch,
  so it stays right after a resume.
* Validation under ``no_grad`` in eval mode, at the epoch's KL weight.
* Early stopping on the validation loss, counted only once the warm-up is over.
* ``best.pt``: the weights of the best epoch (written when it happens, so a true copy).
  ``last.pt``: everything needed to resume, written atomically after every epoch; a crash,
  NaN loss or Ctrl-C leaves the last completed epoch resumable with ``resume=true``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler
from tqdm import tqdm

from pyro_dvae.models.base import DVAE

log = logging.getLogger(__name__)

ELBOS = {"mean_field": TraceMeanField_ELBO, "trace": Trace_ELBO}


@dataclass
class TrainConfig:
    """The ``train`` config group (see ``configs/config.yaml``)."""

    epochs: int = 500
    batch_size: int = 128
    lr: float = 2e-3
    beta: float = 1.0
    warmup_every: int = 10
    warmup_step: float = 0.2
    early_stop_patience: int = 50
    elbo: str = "mean_field"
    num_workers: int = 0
    progress: bool = True


@dataclass
class TrainState:
    """What ``last.pt`` remembers besides weights and optimiser."""

    epoch: int = 0
    best_val: float = math.inf
    best_epoch: int = -1
    patience: int = 0
    history: list[dict] = field(default_factory=list)


def kl_weight(epoch: int, cfg: TrainConfig) -> float:
    """KL warm-up × β: 0 for the first ``warmup_every`` epochs, then ``+warmup_step`` every
    ``warmup_every`` epochs up to 1 (spec §4.3). ``warmup_every=0`` disables the warm-up."""
    warm = 1.0 if cfg.warmup_every <= 0 else min(1.0, cfg.warmup_step * (epoch // cfg.warmup_every))
    return warm * cfg.beta


def warmup_done(epoch: int, cfg: TrainConfig) -> bool:
    return cfg.warmup_every <= 0 or cfg.warmup_step * (epoch // cfg.warmup_every) >= 1.0


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
            kl = kl + (kl_divergence(q["fn"], site["fn"]) * q["scale"]).sum()
        except NotImplementedError:
            kl = kl + (q["fn"].log_prob(q["value"]) * q["scale"]).sum() - site["log_prob_sum"]
    return recon, kl


class Trainer:
    """Fits a model to a task's train split, validating and checkpointing every epoch.

    Args:
        model: the DVAE, already on ``device``.
        train_set, val_set: datasets of ``(T, D)`` tensors.
        cfg: training options.
        run_dir: where ``last.pt``, ``best.pt``, ``metrics.csv`` and ``loss.png`` go.
        device: torch device of the model.
        seed: seeds Python, NumPy, torch and the shuffling generator.
        extra_state: saved into every checkpoint (e.g. the resolved config).
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
    ) -> None:
        self.model, self.cfg, self.run_dir, self.device = model, cfg, Path(run_dir), device
        self.extra_state = extra_state or {}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(seed)
        self.shuffle = torch.Generator().manual_seed(seed)
        self.train_loader = self._loader(train_set, shuffle=True)
        self.val_loader = self._loader(val_set, shuffle=False)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        if cfg.elbo not in ELBOS:
            raise ValueError(f"train.elbo={cfg.elbo!r}: expected one of {sorted(ELBOS)}")
        self.loss_fn = ELBOS[cfg.elbo]().differentiable_loss
        self.state = TrainState()

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        """Whole batches are fetched at once (see :class:`Batches`), not item by item."""
        order = RandomSampler(dataset, generator=self.shuffle) if shuffle else range(len(dataset))
        return DataLoader(
            Batches(dataset),
            sampler=BatchSampler(order, self.cfg.batch_size, drop_last=False),
            batch_size=None,
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    # --- checkpoints -------------------------------------------------------------------

    def checkpoint(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "state": asdict(self.state),
            "rng": rng_state(self.shuffle),
            **self.extra_state,
        }

    def resume(self, path: Path) -> None:
        """Continue from the checkpoint ``path`` (``last.pt``)."""
        self.restore(load_checkpoint(path, self.device))

    def restore(self, ckpt: dict) -> None:
        """Continue from a loaded checkpoint: weights, optimiser, counters, history and RNG
        states."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"], self.shuffle)
        log.info("resumed at epoch %d", self.state.epoch)

    # --- loop --------------------------------------------------------------------------

    def fit(self) -> TrainState:
        """Train until ``epochs`` or early stopping; returns the final state."""
        pyro.enable_validation(False)
        cfg, state = self.cfg, self.state
        try:
            while state.epoch < cfg.epochs:
                row = self.run_epoch(state.epoch)
                self.end_epoch(row)
                if warmup_done(row["epoch"], cfg) and state.patience >= cfg.early_stop_patience:
                    log.info(
                        "early stopping after epoch %d (best %d)", row["epoch"], state.best_epoch
                    )
                    break
        except KeyboardInterrupt:
            log.warning(
                "interrupted: %s holds epoch %d; continue with resume=true",
                self.run_dir / "last.pt",
                state.epoch - 1,
            )
            raise
        return state

    def run_epoch(self, epoch: int) -> dict:
        weight = kl_weight(epoch, self.cfg)
        start = time.perf_counter()
        train_loss, wait = self.train_epoch(epoch, weight)
        seconds = time.perf_counter() - start
        val_recon, val_kl = self.validate()
        return {
            "epoch": epoch,
            "kl_weight": weight,
            "train_loss": train_loss,
            "val_loss": val_recon + weight * val_kl,
            "val_recon": val_recon,
            "val_kl": val_kl,
            "seconds": seconds,
            "data_wait_seconds": wait,
        }

    def train_epoch(self, epoch: int, weight: float) -> tuple[float, float]:
        """One pass over the training set; returns the mean per-frame loss and the seconds
        spent waiting for the DataLoader."""
        self.model.train()
        total, count, wait = 0.0, 0, 0.0
        batches = tqdm(
            self.train_loader, desc=f"epoch {epoch}", leave=False, disable=not self.cfg.progress
        )
        tick = time.perf_counter()
        for x in batches:
            wait += time.perf_counter() - tick
            x = x.to(self.device, non_blocking=True)
            loss = self.loss_fn(self.model.model, self.model.guide, x, weight)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss {loss.item()} at epoch {epoch}; {self.run_dir / 'last.pt'} "
                    "still holds the last good epoch (try a lower train.lr)"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(x)
            count += len(x)
            batches.set_postfix(loss=f"{loss.item():.3f}")
            tick = time.perf_counter()
        return total / count, wait

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Mean per-frame reconstruction and KL over the validation set (eval mode)."""
        self.model.eval()
        recon, kl, count = 0.0, 0.0, 0
        for x in self.val_loader:
            x = x.to(self.device, non_blocking=True)
            r, k = loss_terms(self.model, x)
            recon += r.item() * len(x)
            kl += k.item() * len(x)
            count += len(x)
        return recon / count, kl / count

    def end_epoch(self, row: dict) -> None:
        """Early-stopping bookkeeping, checkpoints, metrics.csv, loss curve, log line."""
        state, epoch = self.state, row["epoch"]
        if not math.isfinite(row["val_loss"]):
            raise FloatingPointError(f"non-finite validation loss at epoch {epoch}")
        warm = warmup_done(epoch, self.cfg)
        if not warm or row["val_loss"] < state.best_val:
            # During warm-up the latest epoch is the best so far, but its loss (at a lower KL
            # weight) is not compared with later ones: best_val stays at inf until warm.
            state.best_val = row["val_loss"] if warm else math.inf
            state.best_epoch, state.patience = epoch, 0
            atomic_save(
                {"model": self.model.state_dict(), "epoch": epoch, **self.extra_state},
                self.run_dir / "best.pt",
            )
        else:
            state.patience += 1
        row["best_epoch"] = state.best_epoch
        state.history.append(row)
        state.epoch = epoch + 1
        atomic_save(self.checkpoint(), self.run_dir / "last.pt")
        write_metrics(state.history, self.run_dir / "metrics.csv")
        plot_losses(state.history, self.run_dir / "loss.png")
        log.info(
            "epoch %d  kl_w %.2f  train %.4f  val %.4f (recon %.4f, kl %.4f)  best %d  %.1fs",
            epoch,
            row["kl_weight"],
            row["train_loss"],
            row["val_loss"],
            row["val_recon"],
            row["val_kl"],
            state.best_epoch,
            row["seconds"],
        )


# --- helpers ----------------------------------------------------------------------------


class Batches(Dataset):
    """A dataset indexed by lists of items: ``dataset.batch(index)`` when it has one (one
    tensor gather for the whole batch), else the stacked items. Returns ``(B, T, D)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, index: list[int]) -> torch.Tensor:
        if hasattr(self.dataset, "batch"):
            return self.dataset.batch(torch.as_tensor(index))
        return torch.stack([self.dataset[i] for i in index])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "shuffle": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint written by :class:`Trainer`, with a clear error if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # any unpickling failure means a bad file
        raise ValueError(f"{path} is not a readable pyro-dvae checkpoint ({err})") from err


def write_metrics(history: list[dict], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, keys in zip(
        axes, (("train_loss", "val_loss"), ("val_recon",), ("val_kl",)), strict=True
    ):
        for key in keys:
            ax.plot(epochs, [r[key] for r in history], label=key)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)

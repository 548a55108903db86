"""What a run leaves on disk, and the random state it needs to continue: checkpoints written
atomically and read safely, every global RNG state as plain values, ``metrics.csv`` and
``loss.png``.

Checkpoints hold only tensors and plain Python values and are read with
``torch.load(weights_only=True)``, so loading a ``.pt`` from elsewhere cannot run code.
"""

from __future__ import annotations

import csv
import os
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state as tensors and plain Python values (``weights_only``-safe):
    Python's ``random`` (a tuple of ints), NumPy's global MT19937, torch's CPU and CUDA
    generators. (The shuffle is a function of the seed and the epoch: no state.)"""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state` (its tensors may have been loaded onto any device)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {
                "key": numpy_state["key"].cpu().numpy().astype(np.uint32),
                "pos": numpy_state["pos"],
            },
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder to write; rename it over ``path`` once the
    block ends, or remove it if the block raises, so ``path`` is either the old file or the
    whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (:func:`replacing`)."""
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint written by :class:`~pyro_dvae.train.Trainer` with
    ``torch.load(weights_only=True)``: only tensors and plain Python values are read, so a file
    from elsewhere cannot run code.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError (naming ``path``): a truncated or non-torch file, a pickle of other objects,
            or a torch file that is not a dict with ``model`` weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # any unpickling failure means a bad file
        raise _unreadable(path, err) from err
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{path} is not a pyro-dvae checkpoint: expected a dict with 'model' weights, "
            f"found {found}"
        )
    return ckpt


def _unreadable(path: Path, err: Exception) -> ValueError:
    """The error for a file that ``torch.load(weights_only=True)`` refused."""
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if refused:
        return ValueError(
            f"{path} was not loaded: it refers to {refused[1]}, which safe loading (torch.load "
            "weights_only=True) refuses. pyro-dvae checkpoints hold only tensors and plain "
            "values; this file comes from elsewhere or from an older version"
        )
    return ValueError(
        f"{path} is not a readable pyro-dvae checkpoint: truncated (e.g. a crash while it was "
        f"copied) or not written by torch.save ({type(err).__name__})"
    )


def write_metrics(history: list[dict], path: Path) -> None:
    """One row per epoch of ``history`` (columns: the first row's keys), atomically."""
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


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
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(fig)

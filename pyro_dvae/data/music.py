"""Polyphonic music: the JSB chorales as 88-key binary piano rolls (modality ``music``).

Source: ``<root>/jsb_chorales/jsb-chorales-quarter.json`` (Boulanger-Lewandowski et al. 2012's
split, 229 train / 76 validation / 77 test chorales, one time step per quarter note), found
under ``data.root``, ``$PYRO_DVAE_DATA`` or the cache, else downloaded from GitHub and checked
by its SHA-256 (:data:`~pyro_dvae.data.sources.FILE_RELEASES`). The JSON maps ``train``,
``valid``, ``test`` to lists of chorales; a chorale is a list of time steps, a step the list of
sounding MIDI pitches.

Piano roll: x_t[k] = 1 when MIDI pitch ``k + 21`` sounds at step t (A0 = 21 … C8 = 108), so
D = 88, float32 0/1; the Bernoulli likelihood by default. Chorales last 25–160 steps: a batch
is padded with zeros to its longest chorale and comes with a step mask (``batch(index) ->
(x (B, T, 88), mask (B, T))``, mask False on padding), which the trainer and the log-likelihood
evaluation hand to the model (:meth:`~pyro_dvae.models.base.DVAE.step_mask`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.data import Dataset

from pyro_dvae.data import sources
from pyro_dvae.data.base import (
    ROUNDING_INTERVALS,
    Estimator,
    Task,
    near_threshold,
    register_task,
)
from pyro_dvae.data.bouncing_ball import bernoulli_nll

log = logging.getLogger(__name__)

LOWEST_PITCH = 21
"""MIDI pitch of key 0 (A0)."""
KEYS = 88
"""Piano keys, A0 to C8: the feature dimension."""
SPLITS = {"train": "train", "val": "valid", "test": "test"}
"""Task split → key of the JSON."""


def piano_roll(chorale: list[list[int]], where: str) -> np.ndarray:
    """``(T, 88)`` uint8: 1 where a pitch sounds. ``where`` names the chorale in errors.

    Raises:
        ValueError: a step that is not a list of whole MIDI pitches in 21..108, naming it.
    """
    roll = np.zeros((len(chorale), KEYS), dtype=np.uint8)
    for t, pitches in enumerate(chorale):
        try:
            keys = np.asarray(pitches, dtype=float) - LOWEST_PITCH
        except (TypeError, ValueError):
            keys = np.full(2, np.nan)  # reported below
        if keys.ndim != 1 or not np.all((keys % 1 == 0) & (keys >= 0) & (keys < KEYS)):
            raise ValueError(
                f"{where}, step {t}: {pitches!r} is not a list of MIDI pitches "
                f"{LOWEST_PITCH}-{LOWEST_PITCH + KEYS - 1}"
            )
        roll[t, keys.astype(int)] = 1
    return roll


class PianoRolls(Dataset):
    """Chorales of different lengths, padded with zeros to the longest.

    Args:
        rolls: piano rolls ``(T_i, 88)`` uint8.

    Items are ``(T_i, 88)`` float32; :meth:`batch` pads a batch to its own longest chorale.
    """

    def __init__(self, rolls: list[np.ndarray]) -> None:
        self.lengths = torch.tensor([len(r) for r in rolls])
        padded = np.zeros((len(rolls), int(self.lengths.max()), KEYS), dtype=np.uint8)
        for i, roll in enumerate(rolls):
            padded[i, : len(roll)] = roll
        self.rolls = torch.from_numpy(padded)

    def __len__(self) -> int:
        return len(self.rolls)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.rolls[i, : self.lengths[i]].float()

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Chorales ``index (B,)``: ``x (B, T, 88)`` float32 zero-padded to the longest of
        them, and ``mask (B, T)`` bool, False on padding."""
        lengths = self.lengths[index]
        T = int(lengths.max())
        return self.rolls[index, :T].float(), torch.arange(T) < lengths[:, None]


class MusicTask(Task):
    """Piano-roll sequences with a reconstruction protocol and, through the runner, the
    log-likelihood bounds of :mod:`pyro_dvae.loglik` (``iwae_samples`` draws by default)."""

    modality = "music"
    x_dim = KEYS
    iwae_samples = 100
    """K of ``nll_per_step`` unless the evaluation config sets ``iwae_samples``."""

    def __init__(self, name: str, train: PianoRolls, val: PianoRolls, test: PianoRolls) -> None:
        self.name = name
        self.train, self.val, self.test = train, val, test

    def evaluate(self, estimate: Estimator, out_dir: Path, n_examples: int = 4) -> dict:
        """Reconstruct every test chorale on its own with ``estimate`` (note probabilities).

        Returns ``recon_nll_per_step`` (Bernoulli NLL of the chorale under its reconstruction,
        nats per step; not a likelihood bound), ``note_accuracy`` (TP / (TP + FP + FN) of the
        notes at threshold ½ over the test set, Bay et al.'s frame-level accuracy, as in
        Boulanger-Lewandowski et al. 2012), ``notes_predicted`` (key-steps with p > ½),
        ``n_sequences``, ``steps``, ``counts`` (both metrics cover every chorale) and the range
        of the two note counts under rounding (:func:`rounding_intervals`). A model
        that gives no note a probability above ½ (e.g. a distribution constant over time, each
        key at its frequency, all below ½) predicts no note: TP = 0, so ``note_accuracy`` is 0
        however good its NLL; a warning says so. Writes ``out_dir/reconstructions.png``: the
        first ``n_examples`` chorales, each above its reconstruction.
        """
        nll, hits, errors, predicted, near, steps, shown = 0.0, 0, 0, 0, 0, 0, []
        for i in range(len(self.test)):
            x = self.test[i][None]
            with torch.no_grad():
                p = estimate(x).detach().float().cpu()
            if p.shape != x.shape:
                raise ValueError(f"estimate returned shape {tuple(p.shape)} for {tuple(x.shape)}")
            nll += bernoulli_nll(p, x).sum().item()
            on = p > 0.5
            hits += int((on & (x > 0)).sum())
            errors += int((on != (x > 0)).sum())
            predicted += int(on.sum())
            near += near_threshold(p)
            steps += x.shape[1]
            if i < n_examples:
                shown += [(f"test chorale {i}", x[0]), ("reconstruction", p[0])]
        if shown:
            piano_roll_figure(shown, Path(out_dir) / "reconstructions.png")
        if predicted == 0:
            log.warning(
                "note_accuracy 0.0: no note of the %d test chorales has a probability above 1/2, "
                "so none is predicted (TP = 0); a distribution constant over time that gives "
                "every key its frequency, all below 1/2, does this; see recon_nll_per_step",
                len(self.test),
            )
        every = {"scored": len(self.test), "items": len(self.test)}
        return {
            "recon_nll_per_step": nll / steps,
            "note_accuracy": hits / max(hits + errors, 1),
            "notes_predicted": predicted,
            "n_sequences": len(self.test),
            "steps": steps,
            "counts": {"recon_nll_per_step": every, "note_accuracy": every},
            ROUNDING_INTERVALS: rounding_intervals(hits, errors, predicted, near),
        }

    def render(self, x: torch.Tensor, out_dir: Path) -> list[Path]:
        """Generated note probabilities ``(N, T, 88)`` as piano rolls in ``out_dir/samples.png``,
        and one binary chorale per sequence drawn from them in ``out_dir/samples.npy``
        ``(N, T, 88)`` uint8."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        x = x.detach().float().cpu()
        paths = [out_dir / "samples.png", out_dir / "samples.npy"]
        piano_roll_figure([(f"sample {i}", roll) for i, roll in enumerate(x)], paths[0])
        np.save(paths[1], torch.bernoulli(x.clamp(0, 1)).to(torch.uint8).numpy())
        return paths


def rounding_intervals(hits: int, errors: int, predicted: int, near: int) -> dict:
    """The ranges of ``note_accuracy`` = hits / (hits + errors) and ``notes_predicted`` if any of
    the ``near`` key-steps within :data:`~pyro_dvae.data.base.DECISION_BAND` of ½ fell
    the other way. A flip turns a hit into a missed note or back (hits ∓ 1, hits + errors
    unchanged) or a true silence into a false note or back (hits + errors ± 1); either way the
    accuracy stays within (hits ∓ near) / (hits + errors), the ends reached with every flip
    taken from, or given to, the hits."""
    total = max(hits + errors, 1)
    return {
        "note_accuracy": [max(hits - near, 0) / total, min((hits + near) / total, 1.0)],
        "notes_predicted": [max(predicted - near, 0), predicted + near],
    }


def piano_roll_figure(rows: list[tuple[str, torch.Tensor]], path: Path) -> None:
    """One panel per ``(label, roll (T, 88) in [0, 1])``: time to the right, pitch upwards,
    limited to the keys that sound (p > 0.05) somewhere, written as a PNG."""
    active = torch.stack([(roll > 0.05).any(0) for _, roll in rows]).any(0).nonzero()
    low, high = (int(active.min()), int(active.max())) if len(active) else (0, KEYS - 1)
    fig = Figure(figsize=(10, 1.4 * len(rows) + 0.4))
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (label, roll) in zip(axes, rows, strict=True):
        pitches = (low + LOWEST_PITCH - 0.5, high + LOWEST_PITCH + 0.5)
        ax.imshow(
            roll[:, low : high + 1].T.numpy(),
            origin="lower",
            aspect="auto",
            cmap="Greys",
            vmin=0,
            vmax=1,
            interpolation="nearest",
            extent=(-0.5, len(roll) - 0.5, *pitches),
        )
        ax.set_ylabel(f"{label}\nMIDI pitch", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("time step (quarter notes)", fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


@register_task("jsb_chorales")
def build_jsb_chorales(
    name: str = "jsb_chorales",
    modality: str = "music",
    root: str | None = None,
    train_chunk: int | None = None,
) -> MusicTask:
    """The JSB chorales task from ``<root>/jsb_chorales/jsb-chorales-quarter.json``.

    ``train_chunk``: training chorales longer than this many steps are cut into pieces
    (:func:`cut`); validation and test chorales stay whole. None: whole chorales."""
    if modality != "music":
        raise ValueError(f"data=jsb_chorales: data.modality must be 'music', got {modality!r}")
    if train_chunk is not None and not (isinstance(train_chunk, int) and train_chunk >= 2):
        raise ValueError(f"data.train_chunk={train_chunk!r}: expected null or a whole number >= 2")
    release = sources.FILE_RELEASES["jsb_chorales"]
    path = sources.locate("jsb_chorales", root) / release.name
    splits = read_splits(path)
    if train_chunk is not None:
        splits["train"] = [piece for roll in splits["train"] for piece in cut(roll, train_chunk)]
    return MusicTask(name, **{split: PianoRolls(rolls) for split, rolls in splits.items()})


def cut(roll: np.ndarray, length: int) -> list[np.ndarray]:
    """``roll (T, 88)`` cut into n = ceil(T / length) consecutive pieces of at most ``length``
    steps and near-equal lengths (the first T mod n one step longer), so that no piece is a
    short tail: 129 steps in pieces of at most 100 are 65 + 64."""
    return np.array_split(roll, math.ceil(len(roll) / length))


def read_splits(path: Path) -> dict[str, list[np.ndarray]]:
    """``{"train", "val", "test"}`` → piano rolls, from the JSON at ``path``.

    Raises:
        ValueError: not JSON, a split missing or empty, or a bad step (naming file and split).
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file of chorales ({err})") from err
    splits = {}
    for split, key in SPLITS.items():
        chorales = data.get(key) if isinstance(data, dict) else None
        if not chorales or not all(isinstance(c, list) and c for c in chorales):
            raise ValueError(f"{path}: expected a non-empty list of chorales under {key!r}")
        splits[split] = [
            piano_roll(chorale, f"{path} [{key!r}][{i}]") for i, chorale in enumerate(chorales)
        ]
    return splits

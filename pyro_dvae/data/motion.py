"""Human-motion tasks: 3-D joint positions from exponential-map mocap files (spec §8.3).

Every file holds one sequence, one frame per line, ``C`` comma-separated floats: 3 root position
columns, then 3 exp-map columns per joint (the first triplet is the root orientation). Both
datasets go through the same pipeline:

1. keep frames ``0, s, 2s, ...`` (``sample_rate`` s = 2: 50 Hz → 25 Hz for Human3.6M);
2. set the root translation and rotation columns (0–5) to zero;
3. forward kinematics with the dataset's skeleton JSON (:mod:`pyro_dvae.data.skeleton`) →
   joint positions in mm, divided by 1000: the model sees metres, ``(n, 3J)`` float32;
4. windows of ``seq_len`` (50) frames starting at ``0, k, 2k, ..., n − seq_len`` (``skip_rate``
   k = 2) of every file, or of every segment of a file where a file is split.

Files with the wrong number of columns, text that is not numbers, or fewer than ``seq_len`` frames
after step 1 are skipped with a warning. Positions are computed once when the task is built,
in a few seconds (CMU: 20k frames, about 3.5 s of CPU, half of it text parsing), so they are not
cached on disk.

Registered datasets:

* ``h36m`` (``<root>/h36m/S{subject}/{action}_{subaction}.txt``, 99 columns, 32 joints, 96
  features): spec §8.3. Train S1, S6, S7, S8, S9, validation S5, test S11; 15 actions,
  subactions 1 and 2. Validation windows are the 64 starts per file of :func:`find_indices`.
* ``cmu_mocap`` (``<root>/cmu_mocap_expmap/{train,test}/<action>/<action>_<n>.txt``, Li et al.
  2018, 117 columns, 38 joints, 114 features): test = ``test/``. Validation comes from the train
  files by a fixed rule: of a train file with ``n`` frames (after step 1), the last
  ``m = max(ceil(val_fraction n), seq_len)`` frames are validation and the first ``n − m`` train,
  when ``n − m ≥ seq_len``; shorter files (``n < m + seq_len``) are train only. Windows never
  straddle the boundary. With the defaults this takes 432 validation windows from 27 of the 32
  train files (all actions but running) and leaves 6,598 train windows.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.animation import PillowWriter
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch.utils.data import Dataset

from pyro_dvae.data import sources
from pyro_dvae.data.base import Estimator, Task, register_task
from pyro_dvae.data.skeleton import Skeleton, mpjpe_mm

H36M_ACTIONS = (
    "walking",
    "eating",
    "smoking",
    "discussion",
    "directions",
    "greeting",
    "phoning",
    "posing",
    "purchases",
    "sitting",
    "sittingdown",
    "takingphoto",
    "waiting",
    "walkingdog",
    "walkingtogether",
)
"""The 15 Human3.6M actions of spec §8.3."""

SOURCE_RATE_HZ = 50.0
"""Frame rate of the files: 50 Hz for Human3.6M; not stated for the CMU files, whose published
protocols treat them alike (40 ms steps after keeping every 2nd frame). Used for playback only."""

GIF_FRAMES = 25
"""Animations show at most this many frames of a sequence (evenly strided)."""

STYLES = (("0.6", 2.4), ("tab:red", 1.0))
"""Colour and line width of the skeletons of a panel: ground truth (or a generated sample), then
the reconstruction drawn thinner on top."""

VIEW_LABELS = ("ground truth", "reconstruction")
"""Legend of the evaluation figures: what the views of a panel (in :data:`STYLES`) show."""


class MotionFileError(ValueError):
    """A motion file that cannot be used; the message names the file and what was expected."""


@dataclass(frozen=True)
class Clip:
    """One sequence or a segment of one: ``name`` (the file's path below the dataset folder, no
    suffix), its ``action``, joint positions ``x`` ``(n, 3J)`` float32 in metres, and the index of
    its first frame in the (downsampled) file."""

    name: str
    action: str
    x: torch.Tensor
    first: int = 0


class WindowDataset(Dataset):
    """Overlapping ``seq_len``-frame windows of clips, stored once as concatenated frames.

    Attributes:
        frames: ``(F, D)`` float32, the frames of every clip, one after another.
        starts: ``(N,)`` long, the first row of each window in ``frames``.
        actions: the action of each window (``N`` strings).
        names: ``"<file name>@<first frame in the downsampled file>"`` of each window.
    """

    def __init__(
        self, clips: Sequence[Clip], starts: Sequence[Sequence[int]], seq_len: int
    ) -> None:
        self.seq_len = seq_len
        self.frames = torch.cat([c.x for c in clips]) if clips else torch.zeros(0, 0)
        offsets = np.cumsum([0] + [len(c.x) for c in clips])[:-1]
        self.starts = torch.tensor(
            [o + s for o, clip_starts in zip(offsets, starts, strict=True) for s in clip_starts],
            dtype=torch.long,
        )
        self.actions = [c.action for c, s in zip(clips, starts, strict=True) for _ in s]
        self.names = [
            f"{c.name}@{c.first + t}" for c, s in zip(clips, starts, strict=True) for t in s
        ]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> torch.Tensor:
        start = int(self.starts[i])
        return self.frames[start : start + self.seq_len]

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Windows ``index`` ``(B,)`` stacked to ``(B, seq_len, D)``."""
        return self.frames[self.starts[index, None] + torch.arange(self.seq_len)]


class MotionTask(Task):
    """Joint-position windows (metres) with the MPJPE protocol of spec §8.3 and skeleton videos.

    Args:
        name: dataset name.
        skeleton: the kinematic tree of the data.
        subset: key of ``skeleton.subsets`` used for ``mpjpe_mm_subset``.
        train, val, test: windows of ``seq_len`` frames.
        frame_rate: frames per second of the windows (for playback).
    """

    modality = "motion"

    def __init__(
        self,
        name: str,
        skeleton: Skeleton,
        subset: str,
        train: WindowDataset,
        val: WindowDataset,
        test: WindowDataset,
        frame_rate: float,
    ) -> None:
        self.name, self.skeleton, self.frame_rate = name, skeleton, frame_rate
        self.subset_name, self.subset = subset, skeleton.subset(subset)
        self.train, self.val, self.test = train, val, test
        self.x_dim = 3 * skeleton.n_joints

    def evaluate(
        self, estimate: Estimator, out_dir: Path, n_examples: int = 4, batch_size: int = 128
    ) -> dict:
        """MPJPE (mm) of ``estimate`` (``(B, T, D)`` metres → ``(B, T, D)`` metres) on every test
        window, in batches of ``batch_size`` under ``torch.no_grad``.

        Returns ``mpjpe_mm`` (mean over windows, frames and all J joints, the DVAE protocol),
        ``mpjpe_mm_subset`` (over the joints of ``subset``), ``subset``, ``n_windows`` and
        ``per_action``: ``{action: {mpjpe_mm, mpjpe_mm_subset, n_windows}}`` and ``counts`` (both
        means cover every window). Writes ``out_dir/motion.gif`` and ``out_dir/motion.png`` for
        the middle window of each of the first ``min(n_examples, 3)`` actions, with a legend:
        ground truth grey, reconstruction red.
        """
        test, n_joints = self.test, self.skeleton.n_joints
        shown = self._example_windows(min(n_examples, 3))
        errors, errors_subset, examples = [], [], {}
        for begin in range(0, len(test), batch_size):
            index = torch.arange(begin, min(begin + batch_size, len(test)))
            x = test.batch(index)
            with torch.no_grad():
                y = estimate(x).detach().float().cpu()
            if y.shape != x.shape:
                raise ValueError(f"estimate returned shape {tuple(y.shape)} for {tuple(x.shape)}")
            errors.append(mpjpe_mm(x, y, n_joints).mean(-1))
            errors_subset.append(mpjpe_mm(x, y, n_joints, self.subset).mean(-1))
            examples.update(
                {i: (x[i - begin], y[i - begin]) for i in shown if begin <= i < begin + len(x)}
            )
        errors, errors_subset = torch.cat(errors).double(), torch.cat(errors_subset).double()
        actions = np.array(test.actions)
        per_action = {}
        for action in sorted(set(test.actions)):
            mask = torch.from_numpy(actions == action)
            per_action[action] = {
                "mpjpe_mm": errors[mask].mean().item(),
                "mpjpe_mm_subset": errors_subset[mask].mean().item(),
                "n_windows": int(mask.sum()),
            }
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        panels = [
            (test.names[i].rsplit("/", 1)[-1], [self._joints(p) for p in examples[i]])
            for i in shown
        ]
        if panels:
            animate(
                panels, self.skeleton.parents, out_dir / "motion.gif", self.frame_rate, VIEW_LABELS
            )
            snapshots(panels, self.skeleton.parents, out_dir / "motion.png", VIEW_LABELS)
        every = {"scored": len(errors), "items": len(errors)}
        return {
            "mpjpe_mm": errors.mean().item(),
            "mpjpe_mm_subset": errors_subset.mean().item(),
            "subset": f"{self.subset_name} ({len(self.subset)} joints)",
            "n_windows": len(errors),
            "per_action": per_action,
            "counts": {"mpjpe_mm": every, "mpjpe_mm_subset": every},
        }

    def render(self, x: torch.Tensor, out_dir: Path) -> list[Path]:
        """Skeleton animations of generated positions ``(N, T, D)`` in metres:
        ``out_dir/samples.gif`` (the first 4 sequences) and ``out_dir/samples.png`` (all)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        panels = [(f"sample {i}", [self._joints(seq)]) for i, seq in enumerate(x.detach().cpu())]
        paths = [out_dir / "samples.gif", out_dir / "samples.png"]
        animate(panels[:4], self.skeleton.parents, paths[0], self.frame_rate, ("generated",))
        snapshots(panels, self.skeleton.parents, paths[1], ("generated",))
        return paths

    def _joints(self, x: torch.Tensor) -> np.ndarray:
        """``(T, D)`` metres → ``(T, J, 3)`` mm."""
        return 1000 * x.float().numpy().reshape(len(x), self.skeleton.n_joints, 3)

    def _example_windows(self, n: int) -> list[int]:
        """The middle test window of each of the first ``n`` actions (in order of appearance)."""
        by_action: dict[str, list[int]] = {}
        for i, action in enumerate(self.test.actions):
            by_action.setdefault(action, []).append(i)
        return [index[len(index) // 2] for index in list(by_action.values())[:n]]


# ---------------------------------------------------------------------------------------------
# Figures

Panel = tuple[str, list[np.ndarray]]
"""A title and the sequences drawn together in one axes: ``[(T, J, 3) mm, ...]``."""


def project(poses: np.ndarray, azimuth: float = 30.0, elevation: float = 15.0) -> np.ndarray:
    """Orthographic view ``(..., J, 2)`` of positions ``(..., J, 3)`` (y up): the camera is turned
    ``azimuth`` degrees about the vertical axis and looks down by ``elevation`` degrees."""
    a, e = np.radians(azimuth), np.radians(elevation)
    x, y, z = poses[..., 0], poses[..., 1], poses[..., 2]
    depth = x * np.sin(a) + z * np.cos(a)
    return np.stack([x * np.cos(a) - z * np.sin(a), y * np.cos(e) + depth * np.sin(e)], -1)


def _panel(
    fig: Figure, rows: int, cols: int, k: int, views: list[np.ndarray]
) -> list[LineCollection]:
    """The ``k``-th axes of a ``rows x cols`` grid, framed on ``views`` ``[(T, J, 2), ...]``,
    with one empty bone collection per view (styles :data:`STYLES`)."""
    ax = fig.add_subplot(rows, cols, k)
    points = np.concatenate([v.reshape(-1, 2) for v in views])
    centre = (points.max(0) + points.min(0)) / 2
    half = (points.max(0) - points.min(0)).max() / 2 + 10.0
    ax.set(
        xlim=(centre[0] - half, centre[0] + half),
        ylim=(centre[1] - half, centre[1] + half),
        aspect="equal",
    )
    ax.set_axis_off()
    return [
        ax.add_collection(LineCollection([], colors=color, linewidths=width))
        for (color, width), _ in zip(STYLES, views, strict=False)
    ]


def _legend(fig: Figure, labels: Sequence[str], **options) -> None:
    """A legend below the panels of ``fig``: ``labels[i]`` in the colour and width of the i-th
    view of every panel (:data:`STYLES`)."""
    handles = [
        Line2D([], [], color=color, linewidth=width)
        for (color, width), _ in zip(STYLES, labels, strict=False)
    ]
    fig.legend(handles, labels, ncols=len(labels), fontsize=6, frameon=False, **options)


def _bones(pose: np.ndarray, parents: Sequence[int]) -> np.ndarray:
    """Bone segments ``(J − 1, 2, 2)`` of one projected pose ``(J, 2)``."""
    return np.stack([pose[list(parents[1:])], pose[1:]], 1)


def animate(
    panels: list[Panel],
    parents: Sequence[int],
    path: Path,
    frame_rate: float,
    labels: Sequence[str],
    dpi: int = 60,
) -> None:
    """GIF of the panels side by side, at most :data:`GIF_FRAMES` frames played in real time,
    with a legend of the views (``labels``, one per sequence of a panel)."""
    n_frames = max(len(p) for _, seqs in panels for p in seqs)
    stride = math.ceil(n_frames / GIF_FRAMES)
    fig = Figure(figsize=(1.8 * len(panels), 2.4))
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.1, top=0.9, wspace=0.05)
    _legend(fig, labels, loc="lower center")
    views = [[project(p) for p in seqs] for _, seqs in panels]
    collections = []
    for k, ((title, _), panel_views) in enumerate(zip(panels, views, strict=True), start=1):
        collections.append(_panel(fig, 1, len(panels), k, panel_views))
        collections[-1][0].axes.set_title(title, fontsize=6)
    writer = PillowWriter(fps=frame_rate / stride)
    with writer.saving(fig, str(path), dpi):
        for t in range(0, n_frames, stride):
            for panel_views, panel_collections in zip(views, collections, strict=True):
                for view, collection in zip(panel_views, panel_collections, strict=True):
                    collection.set_segments(_bones(view[min(t, len(view) - 1)], parents))
            writer.grab_frame()


def snapshots(
    panels: list[Panel],
    parents: Sequence[int],
    path: Path,
    labels: Sequence[str],
    n_frames: int = 5,
    dpi: int = 80,
) -> None:
    """Still figure: one row per panel, ``n_frames`` evenly spaced frames per row, with a legend
    of the views (``labels``, one per sequence of a panel)."""
    fig = Figure(figsize=(1.4 * n_frames, 1.8 * len(panels) + 0.3), layout="constrained")
    _legend(fig, labels, loc="outside lower center")
    for row, (title, seqs) in enumerate(panels):
        views = [project(p) for p in seqs]
        length = max(len(v) for v in views)
        for col, t in enumerate(np.linspace(0, length - 1, n_frames).round().astype(int)):
            collections = _panel(fig, len(panels), n_frames, row * n_frames + col + 1, views)
            collections[0].axes.set_title(
                f"{title}, frame {t}" if col == 0 else f"frame {t}", fontsize=6
            )
            for view, collection in zip(views, collections, strict=True):
                collection.set_segments(_bones(view[min(t, len(view) - 1)], parents))
    fig.savefig(path, dpi=dpi)


# ---------------------------------------------------------------------------------------------
# Files, windows and splits


def read_positions(path: Path, skeleton: Skeleton, sample_rate: int) -> torch.Tensor:
    """Joint positions ``(n, 3J)`` float32 in metres of an exp-map file (steps 1–3 of the module
    docstring). Raises :class:`MotionFileError` for unparsable text, an empty file, a wrong
    number of columns or non-finite values."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns (instead of failing) on an empty file
            data = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    except (ValueError, UserWarning) as err:
        raise MotionFileError(
            f"{path}: expected comma-separated numbers, {skeleton.frame_columns} per line ({err})"
        ) from err
    if data.shape[1] != skeleton.frame_columns:
        raise MotionFileError(
            f"{path}: {data.shape[1]} columns per frame, expected {skeleton.frame_columns} (3 root "
            f"position + {skeleton.n_joints} joints x 3 exp-map) for skeleton {skeleton.name}"
        )
    finite = np.isfinite(data)
    if not finite.all():
        line = int(np.argmin(finite.all(axis=1))) + 1
        raise MotionFileError(
            f"{path}: {int((~finite).sum())} non-finite values (NaN or inf), the first on line "
            f"{line}; expected finite numbers"
        )
    frames = torch.from_numpy(data[::sample_rate].copy())
    frames[:, list(skeleton.root_columns)] = 0
    return (skeleton.forward_kinematics(frames) / 1000).flatten(1).float()


def load_clips(
    files: Sequence[Path],
    base: Path,
    skeleton: Skeleton,
    sample_rate: int,
    seq_len: int,
    action_of: Callable[[Path], str],
) -> tuple[list[Clip], int]:
    """The usable clips of ``files`` and the frames of the longest readable file (0 if none is);
    the others are skipped with a warning naming the problem."""
    clips, longest = [], 0
    for path in files:
        try:
            x = read_positions(path, skeleton, sample_rate)
            longest = max(longest, len(x))
            if len(x) < seq_len:
                raise MotionFileError(
                    f"{path}: {len(x)} frames after downsampling by {sample_rate}, fewer than "
                    f"seq_len={seq_len}"
                )
        except MotionFileError as err:
            warnings.warn(f"skipped {err}", stacklevel=3)
            continue
        clips.append(Clip(path.relative_to(base).with_suffix("").as_posix(), action_of(path), x))
    return clips, longest


def window_starts(n: int, seq_len: int, skip_rate: int) -> list[int]:
    """First frames ``0, skip_rate, ..., ≤ n − seq_len`` of the windows of an ``n``-frame clip."""
    return list(range(0, n - seq_len + 1, skip_rate))


def find_indices(n: int, seq_len: int, count: int) -> list[int]:
    """``count`` fixed window starts of an ``n``-frame clip, spread over it (the H3.6M validation
    rule of spec §8.3), in increasing order.

    Of the ``m = n − seq_len + 1`` possible starts, take ``0, s, 2s, ... < m`` with
    ``s = m // count + 1`` and complete them with the smallest remaining starts up to ``count``.
    A clip with ``m < count`` gives all its ``m`` starts.
    """
    m = n - seq_len + 1
    stride = max(m, 0) // count + 1
    regular = list(range(0, m, stride))
    others = [i for i in range(m) if i % stride]
    return sorted(regular + others[: count - len(regular)])


def _cap(files: list[Path], max_files: int | None) -> list[Path]:
    """At most ``max_files`` files, evenly spread over the list (deterministic)."""
    if max_files is None or len(files) <= max_files:
        return files
    return [files[i * len(files) // max_files] for i in range(max_files)]


def _windows(
    name: str,
    split: str,
    clips: list[Clip],
    starts: list[list[int]],
    seq_len: int,
    n_files: int,
    longest: int,
    rule: str = "",
) -> WindowDataset:
    """The windows of one split. ``ValueError`` naming the split when there are none: naming
    ``data.seq_len`` when it exceeds the ``longest`` readable file (frames after downsampling) or
    the split's ``rule``."""
    dataset = WindowDataset(clips, starts, seq_len)
    if len(dataset) > 0:
        return dataset
    if longest == 0:
        raise ValueError(
            f"data={name}: the {split} split has no usable file among its {n_files} (each "
            f"skipped file is named in a warning); check the data folder, data.actions and "
            f"data.max_files"
        )
    raise ValueError(
        f"data.seq_len={seq_len} frames is too long for the {split} split of data={name}: the "
        f"longest of its {n_files} files has {longest} frames after downsampling by "
        f"data.sample_rate{rule}; lower data.seq_len"
    )


def _select_actions(name: str, actions: Sequence[str] | None, known: Sequence[str]) -> list[str]:
    if actions is None:
        return list(known)
    unknown = sorted(set(actions) - set(known))
    if unknown:
        raise ValueError(f"data={name}: unknown actions {unknown}; expected some of {list(known)}")
    return list(actions)


def _setup(name: str, modality: str, skeleton: str, root: str | None, seq_len: int) -> Skeleton:
    """Check the modality and ``seq_len`` and read the skeleton: ``skeleton`` is a ``.json`` path
    or the name of a file in ``<data root>/skeletons/``."""
    if modality != "motion":
        raise ValueError(f"data={name}: modality must be 'motion', got {modality!r}")
    if seq_len < 2:
        raise ValueError(f"data.seq_len={seq_len}: expected at least 2 frames per window")
    path = Path(skeleton).expanduser()
    if path.suffix != ".json":
        path = sources.locate("skeletons", root) / f"{skeleton}.json"
    return Skeleton.from_json(path)


def _natural_key(path: Path) -> list:
    """Sort key in which ``walking_10`` follows ``walking_9``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


@register_task("h36m")
def build_h36m(
    name: str = "h36m",
    modality: str = "motion",
    root: str | None = None,
    max_files: int | None = None,
    actions: Sequence[str] | None = None,
    train_subjects: Sequence[int] = (1, 6, 7, 8, 9),
    val_subjects: Sequence[int] = (5,),
    test_subjects: Sequence[int] = (11,),
    seq_len: int = 50,
    sample_rate: int = 2,
    skip_rate: int = 2,
    val_windows: int = 64,
    skeleton: str = "h36m_32",
    subset: str = "ltd22",
) -> MotionTask:
    """Human3.6M exp-map files ``<root>/h36m/S{s}/{action}_{1,2}.txt`` (spec §8.3). Missing files
    are reported in one warning. ``max_files`` caps the files of each split."""
    skel = _setup(name, modality, skeleton, root, seq_len)
    folder = sources.locate("h36m", root)
    actions = _select_actions(name, actions, H36M_ACTIONS)
    subjects = {"train": train_subjects, "val": val_subjects, "test": test_subjects}
    datasets = {}
    for split, split_subjects in subjects.items():
        files = [
            folder / f"S{s}" / f"{a}_{k}.txt"
            for s in split_subjects
            for a in actions
            for k in (1, 2)
        ]
        missing = [str(p.relative_to(folder)) for p in files if not p.is_file()]
        if missing:
            warnings.warn(
                f"data={name}: {len(missing)} {split} files missing under {folder}: {missing}",
                stacklevel=2,
            )
        files = _cap([p for p in files if p.is_file()], max_files)
        clips, longest = load_clips(
            files, folder, skel, sample_rate, seq_len, lambda p: p.stem.rsplit("_", 1)[0]
        )
        starts = [
            find_indices(len(c.x), seq_len, val_windows)
            if split == "val"
            else window_starts(len(c.x), seq_len, skip_rate)
            for c in clips
        ]
        datasets[split] = _windows(name, split, clips, starts, seq_len, len(files), longest)
    return MotionTask(
        name,
        skel,
        subset,
        datasets["train"],
        datasets["val"],
        datasets["test"],
        SOURCE_RATE_HZ / sample_rate,
    )


def split_validation(clip: Clip, val_fraction: float, seq_len: int) -> tuple[Clip, Clip | None]:
    """The CMU validation rule (module docstring): ``(train part, validation part or None)``."""
    n = len(clip.x)
    m = max(math.ceil(round(val_fraction * n, 6)), seq_len)  # round: 0.1 * 30 > 3 in floats
    if n - m < seq_len:
        return clip, None
    return (
        Clip(clip.name, clip.action, clip.x[: n - m]),
        Clip(clip.name, clip.action, clip.x[n - m :], first=n - m),
    )


@register_task("cmu_mocap")
def build_cmu_mocap(
    name: str = "cmu_mocap",
    modality: str = "motion",
    root: str | None = None,
    max_files: int | None = None,
    actions: Sequence[str] | None = None,
    seq_len: int = 50,
    sample_rate: int = 2,
    skip_rate: int = 2,
    val_fraction: float = 0.1,
    skeleton: str = "cmu_38",
    subset: str = "ltd25",
) -> MotionTask:
    """CMU mocap of Li et al. 2018 (``<root>/cmu_mocap_expmap/{train,test}/<action>/*.txt``);
    validation from the train files by :func:`split_validation`. ``max_files`` caps the train
    files (which also give validation) and the test files."""
    skel = _setup(name, modality, skeleton, root, seq_len)
    folder = sources.locate("cmu_mocap_expmap", root)
    files = {
        split: sorted((folder / split).glob("*/*.txt"), key=_natural_key)
        for split in ("train", "test")
    }
    known = sorted({p.parent.name for split_files in files.values() for p in split_files})
    chosen = set(_select_actions(name, actions, known))
    files = {
        split: _cap([p for p in split_files if p.parent.name in chosen], max_files)
        for split, split_files in files.items()
    }
    loaded = {
        split: load_clips(split_files, folder, skel, sample_rate, seq_len, lambda p: p.parent.name)
        for split, split_files in files.items()
    }
    parts = [split_validation(c, val_fraction, seq_len) for c in loaded["train"][0]]
    segments = {
        "train": [t for t, _ in parts],
        "val": [v for _, v in parts if v is not None],
        "test": loaded["test"][0],
    }
    source = {"train": "train", "val": "train", "test": "test"}  # validation: ends of train files
    rule = {
        "val": f" (a validation part needs a train file of at least seq_len + "
        f"max(ceil(data.val_fraction n), seq_len) frames, so {2 * seq_len} or more)"
    }
    datasets = {
        split: _windows(
            name,
            split,
            split_clips,
            [window_starts(len(c.x), seq_len, skip_rate) for c in split_clips],
            seq_len,
            len(files[source[split]]),
            loaded[source[split]][1],
            rule.get(split, ""),
        )
        for split, split_clips in segments.items()
    }
    return MotionTask(
        name,
        skel,
        subset,
        datasets["train"],
        datasets["val"],
        datasets["test"],
        SOURCE_RATE_HZ / sample_rate,
    )

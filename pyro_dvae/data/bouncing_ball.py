"""Bouncing balls (Fraccaro et al. 2017, §5): one ball in a 2-D box, binary video frames.

A seeded simulator, so nothing is downloaded and nothing is cached: every split is generated
when the task is built (1,000 sequences of 30 frames take well under a second).

Physics, in pixels, image coordinates (x to the right, y down): the ball's centre p starts
uniformly in the box shrunk by the radius, with a velocity of uniform direction and a speed
uniform in ``speed``; every frame ``v_y += gravity``, ``p += v``, and a centre that leaves the
box is reflected back with that velocity component negated (elastic walls).

Frames: ``size × size`` pixels, a pixel is on when its centre lies within ``radius`` of the
ball's centre; flattened row-major to ``D = size²`` binary features (float32 0/1).
Modality ``video``: the Bernoulli likelihood by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch.utils.data import Dataset

from pyro_dvae.data.base import Estimator, Task, register_task

SPLITS = ("train", "val", "test")

GIF_SCALE = 3
"""Each pixel of a frame becomes GIF_SCALE × GIF_SCALE pixels of the GIF."""


def simulate(
    n: int,
    T: int,
    rng: np.random.Generator,
    size: int = 32,
    radius: float = 3.0,
    speed: Sequence[float] = (1.0, 2.0),
    gravity: float = 0.0,
) -> np.ndarray:
    """Centres of ``n`` balls over ``T`` frames, ``(n, T, 2)`` (x, y) in pixels."""
    low, high = radius, size - radius
    p = rng.uniform(low, high, size=(n, 2))
    angle = rng.uniform(0, 2 * np.pi, size=n)
    v = rng.uniform(*speed, size=n)[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1)
    positions = [p]
    for _ in range(T - 1):
        p, v = advance(p, v, low, high, gravity)
        positions.append(p)
    return np.stack(positions, 1)


def advance(
    p: np.ndarray, v: np.ndarray, low: float, high: float, gravity: float
) -> tuple[np.ndarray, np.ndarray]:
    """One frame of motion of centres ``p (n, 2)`` with velocities ``v (n, 2)`` in the box
    ``[low, high]²``: gravity, move, reflect at the walls. Returns the new ``(p, v)``."""
    v = v + np.array([0.0, gravity])
    p = p + v
    below, above = p < low, p > high
    p = np.where(below, 2 * low - p, np.where(above, 2 * high - p, p))
    return p, np.where(below | above, -v, v)


def render_frames(positions: np.ndarray, size: int = 32, radius: float = 3.0) -> np.ndarray:
    """Binary frames ``(..., size·size)`` uint8 of ball centres ``(..., 2)``."""
    centres = np.arange(size) + 0.5
    dx2 = (centres - positions[..., 0:1]) ** 2  # (..., size) over columns
    dy2 = (centres - positions[..., 1:2]) ** 2  # (..., size) over rows
    disc = dy2[..., :, None] + dx2[..., None, :] <= radius**2
    return disc.reshape(*positions.shape[:-1], size * size).astype(np.uint8)


class VideoDataset(Dataset):
    """Binary videos stored as uint8 ``(N, T, D)``; items are float32 ``(T, D)``."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames = torch.from_numpy(frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.frames[i].float()

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Sequences ``index (B,)`` stacked to ``(B, T, D)`` float32."""
        return self.frames[index].float()


class BouncingBallTask(Task):
    """Bouncing-ball videos with a reconstruction protocol (pixel error, Bernoulli NLL).

    Args:
        name: dataset name. size: frame side in pixels.
        train, val, test: the splits.
    """

    modality = "video"

    def __init__(
        self, name: str, size: int, train: VideoDataset, val: VideoDataset, test: VideoDataset
    ) -> None:
        self.name, self.size = name, size
        self.train, self.val, self.test = train, val, test
        self.x_dim = size * size

    def evaluate(
        self, estimate: Estimator, out_dir: Path, n_examples: int = 4, batch_size: int = 128
    ) -> dict:
        """Reconstruct every test video with ``estimate`` (pixel probabilities ``(B, T, D)``).

        Returns ``pixel_error`` (fraction of pixels wrong after thresholding at ½),
        ``nll_per_frame`` (Bernoulli NLL in nats per frame) and ``n_sequences``. Writes
        ``out_dir/reconstructions.png``: the first ``n_examples`` videos above their
        reconstructions.
        """
        wrong, nll, shown = 0.0, 0.0, []
        x_all = self.test.frames
        for begin in range(0, len(x_all), batch_size):
            x = self.test.batch(torch.arange(begin, min(begin + batch_size, len(x_all))))
            with torch.no_grad():
                p = estimate(x).detach().float().cpu()
            if p.shape != x.shape:
                raise ValueError(f"estimate returned shape {tuple(p.shape)} for {tuple(x.shape)}")
            wrong += pixel_errors(p, x).sum().item()
            nll += bernoulli_nll(p, x).sum().item()
            shown += [(x[i], p[i]) for i in range(min(n_examples - len(shown), len(x)))]
        n_frames = x_all.shape[0] * x_all.shape[1]
        rows = [row for i, (x, p) in enumerate(shown)
                for row in ((f"video {i}", x), ("reconstruction", p))]
        if rows:
            path = Path(out_dir) / "reconstructions.png"
            frame_strip([(label, self.frames(v)) for label, v in rows], path)
        return {
            "pixel_error": wrong / (n_frames * self.x_dim),
            "nll_per_frame": nll / n_frames,
            "n_sequences": len(x_all),
        }

    def render(self, x: torch.Tensor, out_dir: Path) -> list[Path]:
        """Generated pixel probabilities ``(N, T, D)`` as ``out_dir/samples.gif`` (up to 8
        videos side by side) and ``out_dir/samples.png`` (a frame strip, one row per video)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        videos = [self.frames(v) for v in x.detach().float().cpu()]
        paths = [out_dir / "samples.gif", out_dir / "samples.png"]
        write_gif(videos[:8], paths[0])
        frame_strip([(f"sample {i}", v) for i, v in enumerate(videos)], paths[1])
        return paths

    def frames(self, video: torch.Tensor) -> np.ndarray:
        """``(T, D)`` → ``(T, size, size)`` numpy."""
        return video.numpy().reshape(len(video), self.size, self.size)


def pixel_errors(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-frame count of pixels where ``p > ½`` disagrees with the binary ``x`` ``(..., D)``."""
    return ((p > 0.5).float() != x).float().sum(-1)


def bernoulli_nll(p: torch.Tensor, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-frame ``−Σ_d log Bernoulli(x_d; p_d)`` ``(...,)``, p clamped to ``[eps, 1 − eps]``."""
    p = p.clamp(eps, 1 - eps)
    return -(x * p.log() + (1 - x) * (1 - p).log()).sum(-1)


def write_gif(videos: list[np.ndarray], path: Path, frame_ms: int = 100) -> None:
    """Videos ``(T, H, W)`` in [0, 1] side by side (white on black, grey gaps) as a looping GIF."""
    T = max(len(v) for v in videos)
    pages = []
    for t in range(T):
        tiles = [v[min(t, len(v) - 1)] for v in videos]
        gap = np.full((tiles[0].shape[0], 1), 0.4)
        row = np.concatenate([c for tile in tiles for c in (tile, gap)][:-1], axis=1)
        big = np.kron(row, np.ones((GIF_SCALE, GIF_SCALE)))
        pages.append(Image.fromarray((255 * big.clip(0, 1)).astype(np.uint8), mode="L"))
    pages[0].save(path, save_all=True, append_images=pages[1:], duration=frame_ms, loop=0)


def frame_strip(rows: list[tuple[str, np.ndarray]], path: Path, max_frames: int = 30) -> None:
    """One row of frames per ``(label, video (T, H, W) in [0, 1])``, at most ``max_frames``
    frames each (evenly strided), written as a PNG."""
    T = max(len(v) for _, v in rows)
    stride = max(1, -(-T // max_frames))
    n_cols = -(-T // stride)
    fig = Figure(figsize=(0.45 * n_cols + 1.2, 0.5 * len(rows) + 0.2))
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (label, video) in zip(axes, rows, strict=True):
        frames = list(video[::stride])
        frames += [np.full_like(frames[0], np.nan)] * (n_cols - len(frames))
        h = frames[0].shape[0]
        gap = np.full((h, 1), np.nan)
        ax.imshow(np.concatenate([c for f in frames for c in (f, gap)], axis=1),
                  cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_facecolor("tab:blue")
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.subplots_adjust(left=0.12, right=0.99, top=0.98, bottom=0.02, hspace=0.15)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


@register_task("bouncing_ball")
def build_bouncing_ball(
    name: str = "bouncing_ball",
    modality: str = "video",
    n_train: int = 1000,
    n_val: int = 100,
    n_test: int = 100,
    seq_len: int = 30,
    size: int = 32,
    radius: float = 3.0,
    speed: Sequence[float] = (1.0, 2.0),
    gravity: float = 0.0,
    seed: int = 0,
) -> BouncingBallTask:
    """Generate the three splits (split k from ``np.random.default_rng([seed, k])``)."""
    check_options(modality, (n_train, n_val, n_test), seq_len, size, radius, speed)
    datasets = {}
    for k, (split, n) in enumerate(zip(SPLITS, (n_train, n_val, n_test), strict=True)):
        positions = simulate(
            n, seq_len, np.random.default_rng([seed, k]), size, radius, speed, gravity
        )
        datasets[split] = VideoDataset(render_frames(positions, size, radius))
    return BouncingBallTask(name, size, **datasets)


def check_options(
    modality: str,
    counts: Sequence[int],
    seq_len: int,
    size: int,
    radius: float,
    speed: Sequence[float],
) -> None:
    """Reject options that cannot make videos, naming the ``data.`` key."""
    if modality != "video":
        raise ValueError(f"data=bouncing_ball: data.modality must be 'video', got {modality!r}")
    for key, n in zip(("n_train", "n_val", "n_test"), counts, strict=True):
        if n < 1:
            raise ValueError(f"data.{key}={n}: expected at least one sequence")
    if seq_len < 2:
        raise ValueError(f"data.seq_len={seq_len}: expected at least 2 frames per sequence")
    if not 0 < radius < size / 2:
        raise ValueError(f"data.radius={radius}: expected 0 < radius < data.size / 2 = {size / 2}")
    if len(speed) != 2 or not 0 <= speed[0] <= speed[1] < size - 2 * radius:
        raise ValueError(
            f"data.speed={list(speed)}: expected [min, max] pixels per frame with "
            f"0 <= min <= max < data.size - 2 * data.radius = {size - 2 * radius}"
        )

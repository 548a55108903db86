"""Bouncing balls (Fraccaro et al. 2017, §5): one ball in a 2-D box, binary video frames.

A seeded simulator, so nothing is downloaded and nothing is cached: every split is generated
when the task is built (1,000 sequences of 30 frames take well under a second, the paper's
6,500 of 20 frames about 5 s).

Physics, in pixels, image coordinates (x to the right, y down): the walls stand ``wall`` pixels
inside the frame's edges, so the ball's centre moves in ``[wall + radius, size − wall − radius]²``.
It starts uniformly in that box (or, with ``start_std``, normally around the frame's centre,
clipped to 1 px inside the box, as the authors' simulator), with a velocity of uniform direction
and a speed uniform in ``speed``; every frame ``v_y += gravity``, ``p += v``, and a centre that
leaves the box is reflected back with that velocity component negated (elastic walls). The
walls are not drawn.

The paper's setup (``data=bouncing_ball_paper``): 20 frames, radius 3, speed 10–15 px/s at
dt = 0.2 s, i.e. 2–3 px per frame, walls 2 px inside the edges, start N(16, 10²) per coordinate.

Frames: ``size × size`` pixels, a pixel is on when its centre lies within ``radius`` of the
ball's centre; flattened row-major to ``D = size²`` binary features (float32 0/1).
Modality ``video``: the Bernoulli likelihood by default.

Imputation protocol (the KVAE authors' code): the first ``context`` frames are always observed;
later frames are missing at random (:func:`random_mask`) or as one block right after the context
(:func:`block_mask`); the error is the fraction of wrongly guessed pixels (probability > ½
against the binary truth) over the missing frames only (:func:`missing_pixel_error`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch.utils.data import Dataset

from pyro_dvae.data.base import (
    ROUNDING_INTERVALS,
    Estimator,
    Task,
    near_threshold,
    register_task,
)

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
    wall: float = 0.0,
    start_std: float | None = None,
) -> np.ndarray:
    """Centres of ``n`` balls over ``T`` frames, ``(n, T, 2)`` (x, y) in pixels."""
    low, high = wall + radius, size - wall - radius
    if start_std is None:
        p = rng.uniform(low, high, size=(n, 2))
    else:
        p = np.clip(size / 2 + start_std * rng.standard_normal((n, 2)), low + 1, high - 1)
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

        Returns ``pixel_error`` (fraction of pixels wrong after thresholding at ½) and its
        range under rounding (:data:`~pyro_dvae.data.base.ROUNDING_INTERVALS`: every pixel
        within :data:`~pyro_dvae.data.base.DECISION_BAND` of ½ flipped), ``nll_per_frame``
        (Bernoulli NLL in nats per frame) and ``n_sequences``. Writes
        ``out_dir/reconstructions.png``: the first ``n_examples`` videos above their
        reconstructions.
        """
        wrong, near, nll, shown = 0.0, 0, 0.0, []
        x_all = self.test.frames
        for begin in range(0, len(x_all), batch_size):
            x = self.test.batch(torch.arange(begin, min(begin + batch_size, len(x_all))))
            with torch.no_grad():
                p = estimate(x).detach().float().cpu()
            if p.shape != x.shape:
                raise ValueError(f"estimate returned shape {tuple(p.shape)} for {tuple(x.shape)}")
            wrong += pixel_errors(p, x).sum().item()
            near += near_threshold(p)
            nll += bernoulli_nll(p, x).sum().item()
            shown += [(x[i], p[i]) for i in range(min(n_examples - len(shown), len(x)))]
        n_frames = x_all.shape[0] * x_all.shape[1]
        rows = [
            row
            for i, (x, p) in enumerate(shown)
            for row in ((f"video {i}", x), ("reconstruction", p))
        ]
        if rows:
            path = Path(out_dir) / "reconstructions.png"
            frame_strip([(label, self.frames(v)) for label, v in rows], path)
        pixels = n_frames * self.x_dim
        return {
            "pixel_error": wrong / pixels,
            "nll_per_frame": nll / n_frames,
            "n_sequences": len(x_all),
            ROUNDING_INTERVALS: {
                "pixel_error": [max(wrong - near, 0) / pixels, min(wrong + near, pixels) / pixels]
            },
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


def missing_pixel_error(
    p: torch.Tensor, x: torch.Tensor, observed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wrongly guessed pixels of the missing frames and the pixels of those frames, per video
    ``(B,)``, from pixel probabilities ``p (B, T, D)``, binary frames ``x (B, T, D)`` and
    ``observed (B, T)`` bool. The error rate is ``wrong.sum() / pixels.sum()``."""
    missing = ~observed
    wrong = (pixel_errors(p, x) * missing).sum(-1)
    return wrong, missing.sum(-1) * x.shape[-1]


def random_mask(B: int, T: int, p: float, context: int, generator: torch.Generator) -> torch.Tensor:
    """``observed (B, T)`` bool: the first ``context`` frames observed, every later frame
    missing with probability ``p``, independently."""
    observed = torch.ones(B, T, dtype=torch.bool)
    observed[:, context:] = torch.rand(B, T - context, generator=generator) >= p
    return observed


def block_mask(B: int, T: int, missing: int, context: int) -> torch.Tensor:
    """``observed (B, T)`` bool: frames ``context … context + missing − 1`` missing, the others
    observed (the authors' "planning" mask)."""
    if not 0 <= missing <= T - context:
        raise ValueError(f"{missing} missing frames after {context} do not fit in {T} frames")
    observed = torch.ones(B, T, dtype=torch.bool)
    observed[:, context : context + missing] = False
    return observed


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
        ax.imshow(
            np.concatenate([c for f in frames for c in (f, gap)], axis=1),
            cmap="gray",
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
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
    wall: float = 0.0,
    start_std: float | None = None,
    seed: int = 0,
) -> BouncingBallTask:
    """Generate the three splits (split k from ``np.random.default_rng([seed, k])``)."""
    check_options(modality, (n_train, n_val, n_test), seq_len, size, radius, speed, wall)
    check_start(start_std, size - 2 * (wall + radius))
    datasets = {}
    for k, (split, n) in enumerate(zip(SPLITS, (n_train, n_val, n_test), strict=True)):
        rng = np.random.default_rng([seed, k])
        positions = simulate(n, seq_len, rng, size, radius, speed, gravity, wall, start_std)
        datasets[split] = VideoDataset(render_frames(positions, size, radius))
    return BouncingBallTask(name, size, **datasets)


@register_task("bouncing_ball_paper")
def build_bouncing_ball_paper(**options) -> BouncingBallTask:
    """The same simulator under the name of the paper's setup (``data=bouncing_ball_paper``),
    so that its runs are told apart from the default's."""
    return build_bouncing_ball(name="bouncing_ball_paper", **options)


def check_options(
    modality: str,
    counts: Sequence[int],
    seq_len: int,
    size: int,
    radius: float,
    speed: Sequence[float],
    wall: float = 0.0,
) -> None:
    """Reject options that cannot make videos, naming the ``data.`` key."""
    if modality != "video":
        raise ValueError(f"data=bouncing_ball: data.modality must be 'video', got {modality!r}")
    for key, n in zip(("n_train", "n_val", "n_test"), counts, strict=True):
        if n < 1:
            raise ValueError(f"data.{key}={n}: expected at least one sequence")
    if seq_len < 2:
        raise ValueError(f"data.seq_len={seq_len}: expected at least 2 frames per sequence")
    if not 0 <= wall < size / 2:
        raise ValueError(f"data.wall={wall}: expected 0 <= wall < data.size / 2 = {size / 2}")
    room = size / 2 - wall
    if not 0 < radius < room:
        raise ValueError(
            f"data.radius={radius}: expected 0 < radius < data.size / 2 - data.wall = {room}"
        )
    box = size - 2 * (wall + radius)
    if len(speed) != 2 or not 0 <= speed[0] <= speed[1] < box:
        raise ValueError(
            f"data.speed={list(speed)}: expected [min, max] pixels per frame with "
            f"0 <= min <= max < data.size - 2 * (data.wall + data.radius) = {box}"
        )


def check_start(start_std: float | None, box: float) -> None:
    """Reject a ``start_std`` that is negative, or that needs a box (the centre's range, ``box``
    pixels wide) too narrow to clip 1 px inside."""
    if start_std is None:
        return
    if not start_std >= 0:
        raise ValueError(f"data.start_std={start_std}: expected null (uniform) or a number >= 0")
    if box <= 2:
        raise ValueError(
            f"data.start_std={start_std}: the start is clipped to 1 px inside the centre's range, "
            f"which is only {box} px wide here; use data.start_std=null"
        )

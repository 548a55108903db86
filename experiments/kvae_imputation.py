"""KVAE against DKF on bouncing balls: missing-frame imputation, generation and α weights.

    python experiments/kvae_imputation.py --out DIR [--epochs 60] [--set data.n_train=500 ...]

Trains one KVAE and one DKF on ``data=bouncing_ball`` through the runner (``DIR/kvae``,
``DIR/dkf``; a run that already has ``last.pt`` is resumed, so an interrupted or finished
experiment can be rerun), then on the test split:

* **imputation**: frames are removed at random (each with probability f) or as one contiguous
  block (a fraction f of the frames), never among the first ``--context`` frames; the error is
  the fraction of wrongly imputed pixels (probability > ½ vs. the true binary pixel) over the
  missing frames. KVAE: q's mean for the observed frames, the LGSSM smoother's (or filter's)
  estimate for the missing ones (:meth:`~pyro_dvae.models.kvae.KVAE.impute`). DKF: the
  inference network sees the missing frames as blank; for an observed frame z_t is its step
  mean given z_{t−1}, for a missing one the transition's mean (:func:`impute_dkf`). ``blank``
  (every missing frame empty) is the reference that needs no model. The difference KVAE − DKF
  gets a 95 % interval from a paired bootstrap over the test videos.
* **generation**: KVAE samples from the prior and samples that continue the first
  ``--context`` frames of test videos, as GIFs and frame strips; the α weights along test
  videos next to the ball's position.

Writes ``DIR/results.json`` (numbers), ``DIR/imputation.png`` (error vs. fraction missing),
``DIR/imputation_examples.png``, ``DIR/generated.{gif,png}``, ``DIR/continued.{gif,png}`` and
``DIR/alpha.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from matplotlib.figure import Figure

from pyro_dvae import runner
from pyro_dvae.data.bouncing_ball import frame_strip, pixel_errors, write_gif
from pyro_dvae.distributions import point
from pyro_dvae.models.dkf import DKF
from pyro_dvae.models.kvae import KVAE
from pyro_dvae.train import load_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MODES = ("random", "block")


def train_run(model: str, run_dir: Path, overrides: list[str]) -> float:
    """Train (or resume) ``model`` on bouncing balls in ``run_dir``; returns the seconds spent."""
    overrides = [f"model={model}", "data=bouncing_ball", *overrides]
    if (run_dir / "last.pt").is_file():
        overrides.append("resume=true")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    start = time.perf_counter()
    runner.train(cfg, run_dir, overrides)
    return time.perf_counter() - start


def missing_mask(
    B: int, T: int, fraction: float, mode: str, context: int, generator: torch.Generator
) -> torch.Tensor:
    """``observed (B, T)`` bool: the first ``context`` frames always present; of the others
    each is missing with probability ``fraction`` (``random``), or one block of
    ``round(fraction · (T − context))`` frames at a uniform position is (``block``)."""
    observed = torch.ones(B, T, dtype=torch.bool)
    if mode == "random":
        observed[:, context:] = torch.rand(B, T - context, generator=generator) >= fraction
        return observed
    length = round(fraction * (T - context))
    starts = torch.randint(context, T - length + 1, (B,), generator=generator)
    steps = torch.arange(T)
    return ~((steps >= starts[:, None]) & (steps < starts[:, None] + length))


@torch.no_grad()
def impute_dkf(model: DKF, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Pixel probabilities ``(B, T, D)``: z_t is the inference network's step mean (missing
    frames shown to it as blank) where x_t is observed, the transition's mean where it is not."""
    B, T, _ = x.shape
    q = model.inference(x * observed[..., None])
    p = model.prior.trajectory(B, T, model.z_dim, x)
    z_prev, q_state, p_state, zs = q.initial(), None, None, []
    for t in range(T):
        q_t, q_state = q.step(t, z_prev, q_state)
        p_t, p_state = p.step(t, z_prev, p_state)
        z_prev = torch.where(observed[:, t, None], point(q_t), point(p_t))
        zs.append(z_prev)
    return model.likelihood.mean(model.decoder(torch.stack(zs, dim=1)))


@torch.no_grad()
def impute_kvae(
    model: KVAE, x: torch.Tensor, observed: torch.Tensor, smooth: bool
) -> torch.Tensor:
    """Pixel probabilities ``(B, T, D)`` of :meth:`~pyro_dvae.models.kvae.KVAE.impute`."""
    return model.likelihood.mean(model.impute(x, observed, smooth))


def wrong_missing_pixels(p: torch.Tensor, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Wrongly imputed pixels of each video's missing frames, ``(B,)``."""
    return (pixel_errors(p, x) * ~observed).sum(-1)


def paired_interval(
    wrong_a: torch.Tensor, wrong_b: torch.Tensor, pixels: torch.Tensor, seed: int, n: int = 2000
) -> list[float]:
    """95 % bootstrap interval (over videos, paired) of the difference of two error rates
    ``Σ wrong / Σ pixels``; ``wrong_a, wrong_b, pixels (B,)``."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(len(pixels), (n, len(pixels)), generator=generator)
    diff = (wrong_a[index].sum(-1) - wrong_b[index].sum(-1)) / pixels[index].sum(-1)
    return [diff.quantile(0.025).item(), diff.quantile(0.975).item()]


def imputation_table(
    kvae: KVAE, dkf: DKF, x: torch.Tensor, context: int, seed: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[list[float]]]]:
    """``{mode: {method: [error at each fraction]}}`` on the test videos ``x (B, T, D)``, and
    ``{mode: [95 % interval of KVAE-smoother minus DKF error at each fraction]}``."""
    methods = {
        "kvae_smoother": lambda x, o: impute_kvae(kvae, x, o, smooth=True),
        "kvae_filter": lambda x, o: impute_kvae(kvae, x, o, smooth=False),
        "dkf": lambda x, o: impute_dkf(dkf, x, o),
        "blank": lambda x, o: torch.zeros_like(x),
    }
    table, intervals = {}, {}
    for k, mode in enumerate(MODES):
        generator = torch.Generator().manual_seed(seed + k)
        rows, intervals[mode] = {name: [] for name in methods}, []
        for fraction in FRACTIONS:
            observed = missing_mask(*x.shape[:2], fraction, mode, context, generator)
            pixels = (~observed).sum(-1) * x.shape[-1]
            wrong = {name: wrong_missing_pixels(impute(x, observed), x, observed)
                     for name, impute in methods.items()}
            for name, w in wrong.items():
                rows[name].append(w.sum().item() / pixels.sum().item())
            intervals[mode].append(
                paired_interval(wrong["kvae_smoother"], wrong["dkf"], pixels, seed))
        table[mode] = rows
    return table, intervals


def plot_imputation(table: dict, path: Path) -> None:
    fig = Figure(figsize=(9, 3.4))
    for ax, mode in zip(fig.subplots(1, 2), MODES, strict=True):
        for name, errors in table[mode].items():
            style = "--" if name == "blank" else "-o"
            ax.plot(FRACTIONS, errors, style, label=name, markersize=3)
        ax.set_title(f"{mode} missing frames")
        ax.set_xlabel("fraction of frames missing")
        ax.set_ylabel("fraction of wrong pixels (missing frames)")
        ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def example_rows(
    kvae: KVAE, dkf: DKF, x: torch.Tensor, context: int, seed: int, size: int
) -> list[tuple[str, np.ndarray]]:
    """Frame-strip rows of one test video per mode at half the frames missing (missing frames
    of the input row are blank-blue, NaN)."""
    rows = []
    for k, mode in enumerate(MODES):
        generator = torch.Generator().manual_seed(seed + 10 + k)
        observed = missing_mask(1, x.shape[1], 0.5, mode, context, generator)
        shown = x[:1].masked_fill(~observed[..., None], float("nan"))
        videos = {
            f"{mode}: truth": x[:1],
            "observed": shown,
            "KVAE": impute_kvae(kvae, x[:1], observed, smooth=True),
            "DKF": impute_dkf(dkf, x[:1], observed),
        }
        rows += [(label, v[0].reshape(-1, size, size).numpy()) for label, v in videos.items()]
    return rows


@torch.no_grad()
def continue_videos(model: KVAE, x: torch.Tensor, context: int, T: int) -> torch.Tensor:
    """Pixel probabilities ``(B, T, D)`` of videos whose first ``context`` a_t are the encodings
    of ``x``'s frames and whose later a_t are drawn from the LGSSM step by step."""
    a_obs = model.encoder(x[:, :context])[0]
    a_prev, state, a_all = torch.zeros_like(a_obs[:, 0]), None, []
    for t in range(T):
        d, state = model.dynamics.step(t, a_prev, state)
        a_prev = a_obs[:, t] if t < context else d.sample()
        a_all.append(a_prev)
    return model.likelihood.mean(model.decoder(torch.stack(a_all, dim=1)))


@torch.no_grad()
def alpha_along(model: KVAE, x: torch.Tensor) -> torch.Tensor:
    """α_t ``(B, T, K)`` along the encodings (q's means) of the videos ``x (B, T, D)``."""
    a = model.encoder(x)[0]
    return model.dynamics.weights(torch.cat([torch.zeros_like(a[:, :1]), a[:, :-1]], dim=1))


def centroids(p: torch.Tensor, size: int) -> np.ndarray:
    """Ball centre (x, y) in pixels of each frame of ``p (T, D)``: the probability-weighted
    mean pixel position."""
    frames = p.reshape(-1, size, size)
    grid = torch.arange(size, dtype=p.dtype) + 0.5
    mass = frames.sum((-2, -1)).clamp_min(1e-6)
    return torch.stack([(frames.sum(-2) * grid).sum(-1) / mass,
                        (frames.sum(-1) * grid).sum(-1) / mass], -1).numpy()


def plot_alpha(videos: torch.Tensor, alpha: torch.Tensor, size: int, path: Path) -> None:
    """For each video ``(T, D)``: the ball's centre over time (top; a bounce is a kink) and the
    α weights (bottom)."""
    n = len(videos)
    fig = Figure(figsize=(3.2 * n, 4))
    axes = fig.subplots(2, n, squeeze=False, sharex=True)
    for i in range(n):
        c = centroids(videos[i], size)
        axes[0, i].plot(c[:, 0], label="x")
        axes[0, i].plot(c[:, 1], label="y")
        axes[0, i].set_ylim(0, size)
        axes[0, i].set_title(f"test video {i}", fontsize=9)
        axes[1, i].stackplot(np.arange(alpha.shape[1]), alpha[i].T.numpy(),
                             labels=[f"α^{k + 1}" for k in range(alpha.shape[-1])])
        axes[1, i].set_ylim(0, 1)
        axes[1, i].set_xlabel("t")
    axes[0, 0].set_ylabel("ball centre (px)")
    axes[1, 0].set_ylabel("mixture weights α_t")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_summary(run_dir: Path) -> dict:
    history = load_checkpoint(run_dir / "last.pt")["state"]["history"]
    return {
        "run_dir": str(run_dir),
        "epochs": len(history),
        "best_epoch": history[-1]["best_epoch"],
        "train_seconds": sum(r["seconds"] for r in history),
        "median_seconds_per_epoch": float(np.median([r["seconds"] for r in history])),
        "final_val_loss": history[-1]["val_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--context", type=int, default=4, help="frames always observed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for both runs")
    parser.add_argument("--kvae", nargs="*", default=[], help="config overrides for KVAE only")
    parser.add_argument("--dkf", nargs="*", default=[], help="config overrides for DKF only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    common = [f"train.epochs={args.epochs}", "train.progress=false", "threads=1", *args.set]
    seconds = {}
    for name, extra in (("kvae", args.kvae), ("dkf", args.dkf)):
        seconds[name] = train_run(name, args.out / name, [*common, *extra])

    cpu = torch.device("cpu")
    _, task, kvae = runner.load_run(args.out / "kvae", cpu)
    _, _, dkf = runner.load_run(args.out / "dkf", cpu)
    x = task.test.batch(torch.arange(len(task.test)))
    table, intervals = imputation_table(kvae, dkf, x, args.context, args.seed)
    plot_imputation(table, args.out / "imputation.png")
    rows = example_rows(kvae, dkf, x, args.context, args.seed, task.size)
    frame_strip(rows, args.out / "imputation_examples.png")

    torch.manual_seed(args.seed)
    T = x.shape[1]
    with torch.no_grad():
        generated = kvae.generate(8, T)
    videos = [task.frames(v) for v in generated]
    write_gif(videos, args.out / "generated.gif")
    frame_strip([(f"sample {i}", v) for i, v in enumerate(videos)], args.out / "generated.png")
    continued = continue_videos(kvae, x[:8], args.context, T)
    videos = [task.frames(v) for v in continued]
    write_gif(videos, args.out / "continued.gif")
    frame_strip([(f"test {i}", v) for i, v in enumerate(videos)], args.out / "continued.png")
    plot_alpha(x[:4], alpha_along(kvae, x[:4]), task.size, args.out / "alpha.png")

    recon = {}
    for name, model in (("kvae", kvae), ("dkf", dkf)):
        with torch.no_grad():
            p = model.estimate(x)
        recon[name] = pixel_errors(p, x).sum().item() / x.numel()
    kvae_wins = all(
        k < d for mode in MODES
        for k, d in zip(table[mode]["kvae_smoother"], table[mode]["dkf"], strict=True)
    )
    results = {
        "protocol": {
            "fractions": list(FRACTIONS), "context_frames": args.context, "seed": args.seed,
            "test_videos": len(x), "frames": T, "error": "wrong pixels / pixels of missing frames",
        },
        "imputation": table,
        "kvae_smoother_beats_dkf_everywhere": kvae_wins,
        "kvae_smoother_minus_dkf_95_interval": intervals,
        "reconstruction_pixel_error": recon,
        "runs": {name: {**run_summary(args.out / name), "wall_seconds_this_call": s}
                 for name, s in seconds.items()},
        "overrides": {"common": common, "kvae": args.kvae, "dkf": args.dkf},
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({m: {k: [round(e, 4) for e in v] for k, v in r.items()}
                      for m, r in table.items()}, indent=1))


if __name__ == "__main__":
    main()

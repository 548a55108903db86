"""Forecasting (beyond the original): condition on the first K frames, sample the next H.

One procedure for every model, through Pyro's handlers and the models' public API:

1. the guide on the context x_{1:K} gives the latents of frames 1..K (the posterior mean path,
   as in evaluation) and any static latent (DSAE's v);
2. the model runs on K + H frames under :class:`Extend`: the context's latents are pinned and
   the later steps of a latent trajectory are drawn from the model's own step conditionals
   p(z_t | z_{<t}, ·), i.e. the latent prior rolled forward (or their means, ``mode=mean``);
3. an autoregressive decoder (SRNN, VRNN, STORN) reads the ground truth for the first K
   frames and its own predictions after them (:meth:`~pyro_dvae.models.base.DVAE.set_feedback`
   with p = 1 and K context frames); the other models' decoders only see z.

The forecast is E[x_t | y_t] for t = K+1..K+H. Metrics per forecast frame: MPJPE in mm for
motion (all joints and the task's subset; reported at 80, 160, 320, 400 and 1000 ms), the
log-spectral distance in dB for speech. The zero-velocity baseline (the last context frame held)
is scored alongside.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch.distributions import Distribution

from pyro_dvae.data import Task
from pyro_dvae.data.skeleton import mpjpe_mm
from pyro_dvae.distributions import PosteriorMean, Trajectory, point
from pyro_dvae.models.base import DVAE
from pyro_dvae.runner import load_run
from pyro_dvae.train import seed_everything

HORIZONS_MS = (80, 160, 320, 400, 1000)
"""The motion-prediction literature's horizons."""

LSD_FLOOR_DB = 80.0
"""Log-spectral distance: powers are floored this far below the window's largest bin."""


class Extend(Messenger):
    """Pin the latent sites of ``given`` (name → value); a latent trajectory site whose given
    value has fewer steps, ``(B, K, L)``, keeps them and draws its later steps from its own step
    conditionals (their means with ``mean=True``). Other latent sites are drawn as usual (their
    means with ``mean=True``)."""

    def __init__(self, given: dict[str, torch.Tensor], mean: bool = False) -> None:
        super().__init__()
        self.given, self.mean = given, mean

    def _pyro_sample(self, msg: dict) -> None:
        fn, value = msg["fn"], self.given.get(msg["name"])
        if msg["is_observed"] or msg["value"] is not None or not getattr(fn, "has_rsample", False):
            return  # observations, replayed values, and plates' subsample sites
        if isinstance(fn, Trajectory) and (value is None or value.shape[1] < fn.T):
            msg["value"] = self._extend(fn, value)
        elif value is not None:
            msg["value"] = value
        elif self.mean:
            msg["value"] = point(fn)

    def _extend(self, fn: Trajectory, value: torch.Tensor | None) -> torch.Tensor:
        K = 0 if value is None else value.shape[1]
        if not fn.depends_on_past:
            future = (point(fn) if self.mean else fn.rsample())[:, K:]
            return future if value is None else torch.cat([value, future], dim=1)

        steps = iter(range(fn.T))

        def choose(d: Distribution) -> torch.Tensor:  # called once per step, in order
            t = next(steps)
            if t < K:
                return value[:, t]
            return point(d) if self.mean else d.rsample()

        return fn.walk(choose)


@torch.no_grad()
def forecast(model: DVAE, context: torch.Tensor, horizon: int, mean: bool = False) -> torch.Tensor:
    """Forecast ``(B, H, D)`` of the ``horizon`` frames after ``context (B, K, D)`` (module
    docstring); ``mean=True`` rolls the prior's mean path forward instead of a sample."""
    B, K, D = context.shape
    trace = poutine.trace(PosteriorMean()(model.guide)).get_trace(context)
    given = {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
    x = torch.cat([context, context.new_zeros(B, horizon, D)], dim=1)  # the future is not read
    previous = model.feedback
    model.set_feedback(1.0, context=K)
    try:
        y = Extend(given, mean)(model.model)(x)
    finally:
        model.feedback = previous
    return model.likelihood.mean(y[:, K:])


def hold_last(context: torch.Tensor, horizon: int) -> torch.Tensor:
    """Zero-velocity baseline: the last context frame, ``(B, H, D)``."""
    return context[:, -1:].expand(-1, horizon, -1)


def log_spectral_distance(power: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """LSD in dB per frame, ``(..., T)``, of power spectra ``(..., T, F)``:
    sqrt(mean_f (10 log10 P − 10 log10 P̂)²), both floored :data:`LSD_FLOOR_DB` below the largest
    bin of the true window (so silent bins do not dominate)."""
    floor = power.amax(dim=(-2, -1), keepdim=True) * 10 ** (-LSD_FLOOR_DB / 10)
    ref, est = (10 * torch.log10(torch.maximum(p, floor)) for p in (power, estimate))
    return (ref - est).square().mean(-1).sqrt()


def windows(task: Task, length: int, max_sequences: int | None = None) -> torch.Tensor:
    """Test sequences of ``length`` frames, ``(N, length, D)``: the first frames of every motion
    test window, or of every test utterance that long; ``max_sequences`` keeps an evenly spread
    subset. Raises a ``ValueError`` naming ``context``/``horizon`` if none is that long."""
    if task.modality == "motion":
        if task.test.seq_len < length:
            raise ValueError(
                f"context + horizon = {length} frames, but the test windows of {task.name} have "
                f"{task.test.seq_len} (data.seq_len)"
            )
        x = task.test.batch(torch.arange(len(task.test)))[:, :length]
    elif task.modality == "speech":
        items = [task.test[i]["x"] for i in range(len(task.test))]
        long_enough = [p[:length] for p in items if len(p) >= length]
        if not long_enough:
            longest = max(len(p) for p in items)
            raise ValueError(
                f"context + horizon = {length} frames, but the longest test utterance of "
                f"{task.name} has {longest}"
            )
        x = torch.stack(long_enough)
    else:
        raise ValueError(f"forecasting supports motion and speech data, not {task.modality!r}")
    if max_sequences is not None and max_sequences < len(x):
        x = x[np.linspace(0, len(x) - 1, max_sequences).round().astype(int)]
    return x


def frame_errors(task: Task, truth: torch.Tensor, estimate: torch.Tensor) -> dict:
    """Per-frame errors ``(N, H)`` of a forecast: ``mpjpe_mm`` and ``mpjpe_mm_subset`` (motion)
    or ``lsd_db`` (speech)."""
    if task.modality == "motion":
        J = task.skeleton.n_joints
        return {
            "mpjpe_mm": mpjpe_mm(truth, estimate, J),
            "mpjpe_mm_subset": mpjpe_mm(truth, estimate, J, task.subset),
        }
    return {"lsd_db": log_spectral_distance(truth, estimate)}


def frame_ms(task: Task) -> float:
    """Milliseconds between frames (motion: the task's frame rate; speech: the STFT hop)."""
    if task.modality == "motion":
        return 1000.0 / task.frame_rate
    return 1000.0 * task.features.hop / task.fs


def summarise(errors: dict[str, torch.Tensor], step_ms: float, horizons_ms: Sequence[int]) -> dict:
    """Per metric: the mean over sequences of every forecast frame (``by_frame``), the mean over
    all forecast frames, and the value at each horizon of ``horizons_ms`` that the forecast
    reaches (frame round(ms / step_ms), counted from 1)."""
    out = {}
    for name, e in errors.items():
        by_frame = e.double().mean(0)
        at = {}
        for ms in horizons_ms:
            h = round(ms / step_ms)
            if 1 <= h <= len(by_frame) and math.isclose(h * step_ms, ms, rel_tol=0.05):
                at[str(ms)] = by_frame[h - 1].item()
        out[name] = {"mean": by_frame.mean().item(), "at_ms": at, "by_frame": by_frame.tolist()}
    return out


def evaluate_forecasts(
    model: DVAE,
    task: Task,
    context: int,
    horizon: int,
    mean: bool = False,
    samples: int = 1,
    batch_size: int = 256,
    max_sequences: int | None = None,
    horizons_ms: Sequence[int] = HORIZONS_MS,
    device: torch.device | str = "cpu",
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Forecast every test sequence ``samples`` times (errors averaged over the samples) and
    score it against the truth and the zero-velocity baseline. Returns the results dict, the
    sequences ``(N, K+H, D)`` and the first sample's forecasts ``(N, H, D)``."""
    if context < 1 or horizon < 1:
        raise ValueError(f"context={context}, horizon={horizon}: expected at least one frame each")
    if samples < 1:
        raise ValueError(f"samples={samples}: expected at least one forecast per sequence")
    x = windows(task, context + horizon, max_sequences)
    truth = x[:, context:]
    errors: dict[str, torch.Tensor] = {}
    first = None
    for _ in range(1 if mean else samples):
        batches = [
            forecast(model, x[i : i + batch_size, :context].to(device), horizon, mean).cpu()
            for i in range(0, len(x), batch_size)
        ]
        estimate = torch.cat(batches)
        first = estimate if first is None else first
        for name, e in frame_errors(task, truth, estimate).items():
            errors[name] = errors.get(name, 0) + e / (1 if mean else samples)
    step = frame_ms(task)
    baseline = frame_errors(task, truth, hold_last(x[:, :context], horizon))
    results = {
        "context": context,
        "horizon": horizon,
        "frame_ms": step,
        "mode": "mean" if mean else "sample",
        "samples": 1 if mean else samples,
        "n_sequences": len(x),
        "forecast": summarise(errors, step, horizons_ms),
        "zero_velocity": summarise(baseline, step, horizons_ms),
    }
    return results, x, first


def plot(results: dict, x: torch.Tensor, estimate: torch.Tensor, path: Path, title: str) -> None:
    """Left: the error against the horizon, model and zero velocity. Right: the middle sequence,
    truth and context + forecast (speech: log power, the forecast below the truth; motion: nine
    coordinates, truth solid, forecast dashed); the vertical line ends the context."""
    metric = next(iter(results["forecast"]))
    step, K, i = results["frame_ms"], results["context"], len(x) // 2
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax, panel = fig.subplots(1, 2)
    ms = step * np.arange(1, results["horizon"] + 1)
    for key, label in (("forecast", title), ("zero_velocity", "zero velocity")):
        ax.plot(ms, results[key][metric]["by_frame"], label=label)
    ax.set(xlabel="horizon (ms)", ylabel=metric, title=f"after {K} context frames")
    ax.legend()
    truth, guess = x[i].numpy(), torch.cat([x[i, :K], estimate[i]]).numpy()
    if metric == "lsd_db":
        db = 10 * np.log10(np.maximum(np.concatenate([guess, truth], axis=1), 1e-10))
        panel.imshow(db.T, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 80)
        panel.axhline(truth.shape[1] - 0.5, color="w", lw=0.8)
        panel.set(title=f"sequence {i}: forecast (below), truth (above)", ylabel="bin")
    else:
        coords = np.linspace(3, truth.shape[1] - 1, 9).astype(int)
        for c, colour in zip(coords, [f"C{k}" for k in range(9)], strict=True):
            panel.plot(truth[:, c], color=colour, lw=1)
            panel.plot(guess[:, c], color=colour, lw=1, ls="--")
        panel.set(title=f"sequence {i}: 9 coordinates (m)")
    panel.axvline(K - 0.5, color="k", lw=0.8)
    panel.set(xlabel="frame")
    fig.savefig(path, dpi=90)


def run(
    run_dir: Path,
    device: torch.device,
    context: int,
    horizon: int,
    mean: bool = False,
    samples: int = 1,
    checkpoint: str = "best",
    seed: int = 0,
    batch_size: int = 256,
    max_sequences: int | None = None,
    horizons_ms: Sequence[int] = HORIZONS_MS,
) -> dict:
    """Forecast the test set of a run; writes ``results.json`` and ``forecast.png`` in
    ``run_dir/forecast_k{context}_h{horizon}[_mean]`` and returns the results."""
    cfg, task, model = load_run(Path(run_dir), device, checkpoint)
    seed_everything(seed)
    results, x, estimate = evaluate_forecasts(
        model,
        task,
        context,
        horizon,
        mean,
        samples,
        batch_size,
        max_sequences,
        horizons_ms,
        device,
    )
    results.update(model=cfg.model.name, data=cfg.data.name, checkpoint=checkpoint, seed=seed)
    out_dir = Path(run_dir) / f"forecast_k{context}_h{horizon}{'_mean' if mean else ''}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, x, estimate, out_dir / "forecast.png", cfg.model.name)
    return results

"""The KVAE paper's bouncing-ball imputation experiment, on trained run directories.

    python experiments/kvae_imputation.py --kvae RUN [--dkf RUN_DKF] [--checkpoint last]
        [--out docs/kvae/paper] [--doc docs/kvae.md]

RUN is a KVAE run (``+experiment=kvae_balls``, see ``configs/experiment/kvae_balls.yaml``),
RUN_DKF an optional DKF baseline trained on the same data. On the test split of RUN's data, as
the authors' code does (simonkamronn/kvae, ``KalmanVariationalAutoencoder.impute`` with
``mask_impute_random`` and ``mask_impute_planning``):

* the first ``--context`` (4) frames of every video are always observed;
* **random**: each later frame is missing with probability p ∈ {0.1, …, 0.9};
* **consecutive**: frames 5 … 4 + n are missing, n ∈ {1, 3, …, 15} (the authors' "planning");
* error: the fraction of wrongly guessed pixels (probability > ½ against the binary truth) over
  the missing frames only, pooled over the test videos
  (:func:`~pyro_dvae.data.bouncing_ball.missing_pixel_error`).

Methods: KVAE smoothing and filtering (:meth:`~pyro_dvae.models.kvae.KVAE.impute`: q's mean
for the observed frames, the LGSSM's smoothed or filtered estimate for the missing ones), DKF
(the guide sees missing frames as blank; z_t is the guide's step mean where x_t is observed,
the transition's mean where it is not: :func:`impute_dkf`), and blank frames (no model).

Writes ``OUT/results.json``, ``OUT/imputation.png`` (our curves beside the paper's),
``OUT/imputation_examples.png``, ``OUT/generated.{gif,png}``, ``OUT/continued.{gif,png}``
and ``OUT/alpha.png``, and replaces the part of ``--doc`` between :data:`BEGIN` and
:data:`END` with the table.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from pyro_dvae import cli, runner
from pyro_dvae.data.bouncing_ball import (
    BouncingBallTask,
    block_mask,
    frame_strip,
    missing_pixel_error,
    random_mask,
    write_gif,
)
from pyro_dvae.distributions import point
from pyro_dvae.models.dkf import DKF
from pyro_dvae.models.kvae import KVAE
from pyro_dvae.nn import shift
from pyro_dvae.train import load_checkpoint

P_MISSING = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
N_CONSECUTIVE = (1, 3, 5, 7, 9, 11, 13, 15)
SETTINGS = {"random": P_MISSING, "consecutive": N_CONSECUTIVE}
"""Mask kind → its settings: the probability a frame is missing, or the missing frames."""

PAPER = {
    "random": {
        "kvae_smoothing": (0.0057, 0.0060, 0.0063, 0.0067, 0.0075, 0.0082, 0.0095, 0.0128, 0.0189),
        "kvae_filtering": (0.0077, 0.0077, 0.0082, 0.0089, 0.0101, 0.0115, 0.0124, 0.0157, 0.0214),
        "ae_rnn": (0.0065, 0.0068, 0.0075, 0.0078, 0.0095, 0.0112, 0.0132, 0.0170, 0.0221),
        "vae_rnn": (0.0079, 0.0087, 0.0085, 0.0100, 0.0117, 0.0129, 0.0141, 0.0173, 0.0225),
    },
    "consecutive": {
        "kvae_smoothing": (0.0061, 0.0078, 0.0098, 0.0121, 0.0148, 0.0173, 0.0201, 0.0227),
        "kvae_filtering": (0.0084, 0.0115, 0.0146, 0.0174, 0.0199, 0.0221, 0.0238, 0.0257),
        "ae_rnn": (0.0086, 0.0116, 0.0148, 0.0177, 0.0202, 0.0225, 0.0244, 0.0260),
        "vae_rnn": (0.0088, 0.0121, 0.0151, 0.0181, 0.0207, 0.0231, 0.0252, 0.0269),
    },
}
"""The paper's four curves (Fraccaro et al. 2017, Figure 3: fraction of wrong pixels) at each
of :data:`SETTINGS`, read off the figure as the authors' repository has it (simonkamronn/kvae,
``assets/results.png``): a marker's centre in pixels, against the axis labels 0.01, 0.02 and
0.03 (one pixel is 0.0001). Markers hidden under another curve's (most of KVAE filtering and
AE-RNN in the consecutive panel) are read where the line segments on either side of them meet,
to about ±0.0003. The issue's readings of KVAE smoothing are these, but 0.0188 for 0.0189 at
p = 0.9."""

BEGIN = "<!-- kvae_imputation.py: begin -->"
END = "<!-- kvae_imputation.py: end -->"
"""The markers of the part of ``--doc`` this script writes."""

BATCH = 100
"""Test videos per pass (the decoder's 16 × 16 × 128 maps of 20 frames: ~260 MB)."""

Imputer = Callable[[slice, torch.Tensor], torch.Tensor]
"""``(videos: a slice of the test set, observed (B, T)) -> pixel probabilities (B, T, D)``; only
the missing frames are read (a method may leave the observed ones at 0)."""


@torch.no_grad()
def impute_kvae(model: KVAE, x: torch.Tensor, observed: torch.Tensor, smooth: bool) -> torch.Tensor:
    """Pixel probabilities ``(B, T, D)`` of :meth:`~pyro_dvae.models.kvae.KVAE.impute`."""
    return model.likelihood.mean(model.impute(x, observed, smooth))


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
def kvae_imputer(model: KVAE, x: torch.Tensor, smooth: bool) -> Imputer:
    """:meth:`~pyro_dvae.models.kvae.KVAE.impute` on the test videos ``x (N, T, D)``, decoding
    only the missing frames (the decoder costs most): the frames are encoded once (q's means do
    not depend on the mask), each mask then only runs the LGSSM and decodes its missing a_t."""
    a = torch.cat([model.encoder(x[i : i + BATCH])[0] for i in range(0, len(x), BATCH)])

    @torch.no_grad()
    def impute(videos: slice, observed: torch.Tensor) -> torch.Tensor:
        a_hat = model.dynamics.smooth(a[videos], observed, smooth)[0]
        p = torch.zeros_like(x[videos])
        p[~observed] = model.likelihood.mean(model.decoder(a_hat[~observed]))
        return p

    return impute


def imputers(kvae: KVAE, dkf: DKF | None, x: torch.Tensor) -> dict[str, Imputer]:
    """The methods compared on the test videos ``x (N, T, D)``."""
    methods = {
        "kvae_smoothing": kvae_imputer(kvae, x, smooth=True),
        "kvae_filtering": kvae_imputer(kvae, x, smooth=False),
    }
    if dkf is not None:
        methods["dkf"] = lambda videos, o: impute_dkf(dkf, x[videos], o)
    methods["blank"] = lambda videos, o: torch.zeros_like(x[videos])
    return methods


def mask(kind: str, setting: float, B: int, T: int, context: int, seed: int) -> torch.Tensor:
    """``observed (B, T)`` of one setting, from its own seed (the same for every method)."""
    if kind == "consecutive":
        return block_mask(B, T, int(setting), context)
    generator = torch.Generator().manual_seed(seed + round(1000 * setting))
    return random_mask(B, T, setting, context, generator)


def error_rate(impute: Imputer, x: torch.Tensor, observed: torch.Tensor) -> float:
    """Wrong pixels over pixels of the missing frames of all videos ``x (N, T, D)``."""
    wrong, pixels = 0.0, 0
    for begin in range(0, len(x), BATCH):
        videos = slice(begin, begin + BATCH)
        w, n = missing_pixel_error(impute(videos, observed[videos]), x[videos], observed[videos])
        wrong, pixels = wrong + w.sum().item(), pixels + int(n.sum())
    return wrong / pixels


def imputation_table(
    methods: dict[str, Imputer], x: torch.Tensor, context: int, seed: int
) -> dict[str, dict[str, list[float]]]:
    """``{kind: {method: [error at each setting]}}`` on the test videos ``x (N, T, D)``."""
    table = {}
    for kind, settings in SETTINGS.items():
        rows: dict[str, list[float]] = {name: [] for name in methods}
        for setting in settings:
            observed = mask(kind, setting, *x.shape[:2], context, seed)
            for name, impute in methods.items():
                rows[name].append(error_rate(impute, x, observed))
            print(kind, setting, {k: round(v[-1], 4) for k, v in rows.items()}, flush=True)
        table[kind] = rows
    return table


LABELS = {
    "kvae_smoothing": "KVAE smoothing",
    "kvae_filtering": "KVAE filtering",
    "dkf": "DKF",
    "blank": "blank frames",
    "ae_rnn": "AE-RNN",
    "vae_rnn": "VAE-RNN",
}
COLOURS = {
    "kvae_smoothing": "C0",
    "kvae_filtering": "C1",
    "dkf": "C2",
    "blank": "C3",
    "ae_rnn": "0.45",
    "vae_rnn": "k",
}
PAPER_MARKERS = {"kvae_smoothing": "x", "kvae_filtering": "x", "ae_rnn": "v", "vae_rnn": "s"}
AXES = {"random": "probability of a missing frame", "consecutive": "missing frames after 4"}


def plot_imputation(table: dict, path: Path) -> None:
    """Error against the setting, one panel per mask kind; the paper's curves dotted, KVAE's in
    the colours of ours."""
    fig = Figure(figsize=(11, 3.6))
    for ax, (kind, settings) in zip(fig.subplots(1, 2), SETTINGS.items(), strict=True):
        for name, errors in table[kind].items():
            style = "--" if name == "blank" else "-o"
            ax.plot(settings, errors, style, color=COLOURS[name], label=LABELS[name], ms=3)
        for name, errors in PAPER[kind].items():
            label, style = f"paper: {LABELS[name]}", f"{PAPER_MARKERS[name]}:"
            ax.plot(settings, errors, style, color=COLOURS[name], label=label, ms=4)
        ax.set_xlabel(AXES[kind])
        ax.set_ylabel("fraction of wrong pixels (missing frames)")
        ax.set_title(f"{kind} missing frames")
        ax.grid(alpha=0.3)
    fig.legend(
        *ax.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(0.8, 0.5), fontsize=8
    )
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=120)


def example_rows(
    kvae: KVAE, dkf: DKF | None, x: torch.Tensor, context: int, seed: int, size: int
) -> list[tuple[str, np.ndarray]]:
    """Frame-strip rows of the first test video at p = 0.5 and at 9 consecutive missing frames
    (the input row's missing frames are NaN, drawn blue)."""
    rows = []
    for kind, setting in (("random", 0.5), ("consecutive", 9)):
        observed = mask(kind, setting, 1, x.shape[1], context, seed)
        videos = {
            f"{kind}: truth": x[:1],
            "observed": x[:1].masked_fill(~observed[..., None], float("nan")),
            "KVAE smoothing": impute_kvae(kvae, x[:1], observed, smooth=True),
            "KVAE filtering": impute_kvae(kvae, x[:1], observed, smooth=False),
        }
        if dkf is not None:
            videos["DKF"] = impute_dkf(dkf, x[:1], observed)
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
    return model.dynamics.weights(shift(model.encoder(x)[0]))


def centroids(p: torch.Tensor, size: int) -> np.ndarray:
    """Ball centre (x, y) in pixels of each frame of ``p (T, D)``: the probability-weighted
    mean pixel position."""
    frames = p.reshape(-1, size, size)
    grid = torch.arange(size, dtype=p.dtype) + 0.5
    mass = frames.sum((-2, -1)).clamp_min(1e-6)
    return torch.stack(
        [(frames.sum(-2) * grid).sum(-1) / mass, (frames.sum(-1) * grid).sum(-1) / mass], -1
    ).numpy()


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
        axes[1, i].stackplot(
            np.arange(alpha.shape[1]),
            alpha[i].T.numpy(),
            labels=[f"α^{k + 1}" for k in range(alpha.shape[-1])],
        )
        axes[1, i].set_ylim(0, 1)
        axes[1, i].set_xlabel("t")
    axes[0, 0].set_ylabel("ball centre (px)")
    axes[1, 0].set_ylabel("mixture weights α_t")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def draw_figures(
    kvae: KVAE, task: BouncingBallTask, x: torch.Tensor, context: int, seed: int, out: Path
) -> None:
    """Samples from the prior, 4-frame continuations of test videos and α along test videos."""
    torch.manual_seed(seed)
    T = x.shape[1]
    with torch.no_grad():
        generated = kvae.generate(8, T)
    for name, videos in (
        ("generated", generated),
        ("continued", continue_videos(kvae, x[:8], context, T)),
    ):
        frames = [task.frames(v) for v in videos]
        write_gif(frames, out / f"{name}.gif")
        frame_strip([(f"{name} {i}", v) for i, v in enumerate(frames)], out / f"{name}.png")
    plot_alpha(x[:4], alpha_along(kvae, x[:4]), task.size, out / "alpha.png")


def run_summary(run_dir: Path, checkpoint: str) -> dict:
    """Epochs, best epoch, training seconds and the checkpoint evaluated, from ``last.pt``."""
    history = load_checkpoint(run_dir / "last.pt")["state"]["history"]
    seconds = [r["seconds"] for r in history]
    return {
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        "epochs": len(history),
        "best_epoch": history[-1]["best_epoch"],
        "train_seconds": sum(seconds),
        "median_seconds_per_epoch": float(np.median(seconds)),
        "final_val_loss": history[-1]["val_loss"],
    }


def markdown(results: dict, figure: str) -> str:
    """The doc's generated part: one table per mask kind (paper beside ours), the runs, the
    figure."""
    lines = []
    for kind, settings in SETTINGS.items():
        rows = results["imputation"][kind]
        lines += [
            f"| {AXES[kind]} | " + " | ".join(f"{s:g}" for s in settings) + " |",
            "|---" * (len(settings) + 1) + "|",
        ]
        for name, errors in PAPER[kind].items():
            lines.append(
                f"| paper: {LABELS[name]} | " + " | ".join(f"{e:.4f}" for e in errors) + " |"
            )
        for name, errors in rows.items():
            paper = PAPER[kind].get(name)  # the paper's curve of the same method, if any
            cells = [
                f"**{e:.4f}**" if paper and e <= paper[i] else f"{e:.4f}"
                for i, e in enumerate(errors)
            ]
            lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
        lines.append("")
    met = results["targets_met"]
    lines.append(
        f"Bold: at or below the paper's value for the same method. KVAE smoothing: {met['met']} "
        f"of {met['of']} points. Fractions of wrong pixels over the missing frames of the "
        f"{results['protocol']['test_videos']} test videos."
    )
    lines.append("")
    for name, run in results["runs"].items():
        hours = run["train_seconds"] / 3600
        lines.append(
            f"* {name}: `{run['run_dir']}` ({run['checkpoint']}.pt), {run['epochs']} epochs "
            f"(best {run['best_epoch']}), {hours:.1f} h of training, "
            f"{run['median_seconds_per_epoch']:.0f} s per epoch (median)"
        )
    lines += ["", f"![imputation error]({figure})", ""]
    return "\n".join(lines)


def targets_met(table: dict) -> dict:
    """How many of the paper's points KVAE smoothing matches or beats."""
    results = [
        ours <= paper
        for kind, curves in PAPER.items()
        for ours, paper in zip(table[kind]["kvae_smoothing"], curves["kvae_smoothing"], strict=True)
    ]
    return {"met": sum(results), "of": len(results)}


def write_doc(doc: Path, text: str) -> None:
    """Replace the part of ``doc`` between :data:`BEGIN` and :data:`END` with ``text``."""
    content = doc.read_text()
    if content.count(BEGIN) != 1 or content.count(END) != 1:
        raise ValueError(f"--doc {doc}: expected one line {BEGIN} and one line {END}")
    head, rest = content.split(BEGIN)
    tail = rest.split(END)[1]
    doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kvae", type=Path, required=True, help="a KVAE run directory")
    parser.add_argument("--dkf", type=Path, help="a DKF run directory on the same data")
    parser.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="last",
        help="the weights evaluated (the authors evaluate their last epoch)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/kvae/paper"))
    parser.add_argument("--doc", type=Path, default=Path("docs/kvae.md"))
    parser.add_argument("--context", type=int, default=4, help="frames always observed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with cli.user_errors():
        evaluate(args)


def evaluate(args: argparse.Namespace) -> None:
    cpu = torch.device("cpu")
    cfg, task, kvae = runner.load_run(args.kvae, cpu, args.checkpoint)
    if not isinstance(kvae, KVAE):
        raise ValueError(f"--kvae {args.kvae}: a run of model={cfg.model.name}, not kvae")
    dkf = None
    if args.dkf:
        dkf_cfg, _, dkf = runner.load_run(args.dkf, cpu, args.checkpoint)
        if not isinstance(dkf, DKF) or dkf_cfg.data != cfg.data:
            raise ValueError(f"--dkf {args.dkf}: expected a DKF run on the data of {args.kvae}")
    x = task.test.batch(torch.arange(len(task.test)))
    table = imputation_table(imputers(kvae, dkf, x), x, args.context, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    plot_imputation(table, args.out / "imputation.png")
    rows = example_rows(kvae, dkf, x, args.context, args.seed, task.size)
    frame_strip(rows, args.out / "imputation_examples.png")
    draw_figures(kvae, task, x, args.context, args.seed, args.out)
    runs = {"KVAE": run_summary(args.kvae, args.checkpoint)}
    if args.dkf:
        runs["DKF"] = run_summary(args.dkf, args.checkpoint)
    results = {
        "protocol": {
            "settings": SETTINGS,
            "context_frames": args.context,
            "seed": args.seed,
            "test_videos": len(x),
            "frames": x.shape[1],
            "error": "wrong pixels (p > 1/2 vs truth) / pixels of the missing frames",
        },
        "imputation": table,
        "paper": PAPER,
        "targets_met": targets_met(table),
        "runs": runs,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    figure = Path(os.path.relpath(args.out / "imputation.png", args.doc.parent)).as_posix()
    write_doc(args.doc, markdown(results, figure))
    met = results["targets_met"]
    print(
        f"KVAE smoothing at or below the paper at {met['met']} of {met['of']} points; "
        f"{args.out / 'results.json'}, {args.doc} updated"
    )


if __name__ == "__main__":
    main()

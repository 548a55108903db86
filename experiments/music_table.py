"""Train DKF, SRNN, VRNN and STORN on the JSB chorales within a wall-clock budget, evaluate
their test log-likelihood (ELBO and IWAE, nats per step) and write the table of
``docs/results.md`` (the section between the ``music_table`` markers, appended if missing).

    python experiments/music_table.py --minutes 20            # train (or resume), evaluate, table
    python experiments/music_table.py --models dkf --minutes 5 -- train.lr=3e-3
    python experiments/music_table.py --table                 # table only, from finished runs

Each model trains in ``<root>/<model>`` (default ``outputs/music``) with one CPU thread, the
settings of :data:`SETTINGS` and :data:`PER_MODEL` and any Hydra overrides after ``--``, until
``train.epochs`` or ``--minutes`` of wall-clock time: then it is stopped by SIGTERM between two
epochs (the trainer keeps the last completed epoch). A run directory with ``last.pt`` resumes,
its budget counted again from zero; the wall time reported is the sum over the sessions
(``wall.json``). The evaluation (``experiments/evaluate.py``, K = ``--iwae-samples`` draws per
test chorale) uses the best validation epoch's weights and is redone whenever training ran.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import long_run
import torch
from omegaconf import OmegaConf

from pyro_dvae.data import build_task

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("dkf", "srnn", "vrnn", "storn")
SETTINGS = (
    "data=jsb_chorales", "threads=1", "train.progress=false", "train.batch_size=20",
    "train.epochs=5000", "train.warmup_every=5", "train.clip_norm=10",
)  # fmt: skip
"""Every run: Pyro's DMM batch size and epochs (5,000; the budget stops it first), a KL
warm-up to weight 1 by epoch 25, global gradient-norm clipping at 10; lr: the model config's."""
PER_MODEL = {
    "dkf": ("model.init=glorot", "train.warmup_start=0.2", "train.warmup_every=1",
            "train.warmup_step=0.01"),
}  # fmt: skip
"""Extra settings of one model. DKF: Pyro's DMM's KL annealing, a weight that starts at 0.2
(rising by 0.01 an epoch to 1); from a weight of 0 it collapses onto the prior (docs/results.md).
Glorot init: its deep tanh decoder is blind to z under PyTorch's (docs/results.md, speech)."""
PYRO_DMM_NLL = 6.87
"""Pyro's DMM example: test −ELBO in nats per step after 5,000 epochs (~20 h on a GTX 1080)."""
MARKERS = ("<!-- music_table:start -->", "<!-- music_table:end -->")


def train(model: str, run_dir: Path, minutes: float, overrides: list[str]) -> bool:
    """Train (or resume) ``model`` for at most ``minutes`` (:func:`long_run.train`)."""
    args = [f"model={model}", *SETTINGS, *PER_MODEL.get(model, ()), *overrides]
    return long_run.train(run_dir, minutes, args)


def evaluate(run_dir: Path, iwae_samples: int) -> None:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "evaluate.py"),
            f"run_dir={run_dir}",
            f"iwae_samples={iwae_samples}",
            "device=cpu",
        ],
        cwd=ROOT,
        check=True,
    )


def row(model: str, run_dir: Path) -> str:
    """One table row from a run's results.json, config.yaml and wall.json."""
    results = json.loads((run_dir / "results.json").read_text())
    wall = json.loads((run_dir / "wall.json").read_text())["seconds"]
    nll, neg_elbo = results["nll_per_step"], -results["elbo_per_step"]
    with open(run_dir / "metrics.csv", newline="") as f:
        lr = float(next(csv.DictReader(f))["lr"])
    config = OmegaConf.load(run_dir / "config.yaml")
    warm = config.train
    return (
        f"| {model} | {results['guide']} | {neg_elbo:.2f} | {nll:.2f} | {nll - PYRO_DMM_NLL:+.2f} "
        f"| {results['epochs']} | {results['best_epoch']} | {wall / 60:.1f} "
        f"| {results['seconds_per_epoch']:.1f} | {lr:g} | {config.model.init} "
        f"| {warm.get('warmup_start', 0.0)} + {warm.warmup_step} / {warm.warmup_every} |"
    )


def table(run_dirs: dict[str, Path]) -> str:
    """The section of docs/results.md: heading, settings and one row per evaluated run."""
    finished = {m: d for m, d in run_dirs.items() if (d / "results.json").is_file()}
    K = sorted(
        {json.loads((d / "results.json").read_text())["iwae_samples"] for d in finished.values()}
    )
    samples = "/".join(map(str, K)) or "?"
    return "\n".join(
        [
            "## Music: JSB chorales test set (77 chorales, 4,725 quarter-note steps, 88 keys)",
            "",
            "Made by `python experiments/music_table.py` (one CPU thread per model on a shared "
            "2-core machine; settings in its `SETTINGS`: batch 20, KL warm-up to weight 1 by "
            "epoch 25 (DKF: its `PER_MODEL` settings), gradient-norm clipping at 10, "
            "`configs/model/*.yaml` `music:` sizes). "
            f"Test log-likelihood with the best validation epoch's weights, K = {samples} "
            "importance samples per chorale; nats per time step, summed over the test set and "
            "divided by its 4,725 steps. Pyro's DMM example reports the test −ELBO per step: "
            f"{PYRO_DMM_NLL} after 5,000 epochs (about 20 h on a GTX 1080).",
            "",
            f"The key frequencies of the training set alone (no temporal structure) give "
            f"{marginal_nll():.2f} nats per test step.",
            "",
            f"| model | guide | test −ELBO / step | test NLL / step (IWAE) | NLL − {PYRO_DMM_NLL} "
            "| epochs | best epoch | wall time (min) | s / epoch | lr | init "
            "| KL weight: start + step / every (epochs) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *(row(m, d) for m, d in finished.items()),
        ]
    )


def marginal_nll() -> float:
    """Test NLL per step of independent keys with the training set's frequencies (+½ smoothing)."""
    task = build_task("jsb_chorales", module="pyro_dvae.data.music")
    train = torch.cat([task.train[i] for i in range(len(task.train))])
    test = torch.cat([task.test[i] for i in range(len(task.test))])
    p = (train.sum(0) + 0.5) / (len(train) + 1)
    return -(test * p.log() + (1 - test) * (1 - p).log()).sum(1).mean().item()


def write_section(text: str, path: Path) -> None:
    """Replace the text between the markers in ``path``, or append it with the markers."""
    doc = path.read_text() if path.is_file() else ""
    block = f"{MARKERS[0]}\n{text}\n{MARKERS[1]}"
    if MARKERS[0] in doc and MARKERS[1] in doc:
        head, rest = doc.split(MARKERS[0], 1)
        doc = head + block + rest.split(MARKERS[1], 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per model")
    parser.add_argument("--iwae-samples", type=int, default=100)
    parser.add_argument("--root", type=Path, default=ROOT / "outputs" / "music")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--table", action="store_true", help="only tabulate finished runs")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    opts = parser.parse_args()
    run_dirs = {model: opts.root / model for model in opts.models.split(",")}
    if not opts.table:
        for model, run_dir in run_dirs.items():
            trained = train(model, run_dir, opts.minutes, opts.overrides)
            if trained or not (run_dir / "results.json").is_file():
                evaluate(run_dir, opts.iwae_samples)
    text = table(run_dirs)
    print(text)
    write_section(text, opts.doc)


if __name__ == "__main__":
    main()

"""Seconds per training epoch of any run configuration: what a long run's wall time is made of.

    python benchmarks/epoch.py +experiment=dmm_jsb threads=1 --epochs 3 --json out.json

The arguments other than this script's options are the Hydra overrides of
``experiments/run.py``, composed the same way (with ``train.progress=false`` first: the
progress bar reads the loss back every second). The task, the model and the trainer are built as
for training (nothing is written: the run directory is a temporary one); then, after
``--warmup`` epochs, ``--epochs`` training epochs are timed, each the trainer's own
``train_epoch`` (every step, the DataLoader included) at KL weight 1 with Pyro's validation off
(as ``Trainer.fit`` has it), and one validation pass.
``train_seconds`` is their median; ``ms_per_step`` divides it by the epoch's steps.

JSON: an object with ``overrides``, ``threads``, ``device``, ``train_sequences``,
``steps_per_epoch``, ``train_seconds``, ``train_seconds_all``, ``ms_per_step``,
``validate_seconds`` and ``torch`` (the version).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pyro
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from pyro_dvae.data import Task, build_task
from pyro_dvae.runner import build_model_for, resolve_device, train_config
from pyro_dvae.train import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def trainer_for(cfg: DictConfig, task: Task, run_dir: Path) -> Trainer:
    """The trainer ``experiments/run.py`` would build for ``cfg``, writing into ``run_dir``."""
    device = resolve_device(cfg.device)
    model = build_model_for(cfg, task).to(device)
    tcfg = train_config(cfg, cfg.data.modality)
    return Trainer(model, task.train, task.val, tcfg, run_dir, device, cfg.seed)


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_config(overrides: list[str]) -> DictConfig:
    """The configuration ``experiments/run.py`` composes from ``overrides`` (progress bar off),
    with torch's threads set to its ``threads``."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", ["train.progress=false", *overrides])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return cfg


def save_json(row: dict, path: Path | None) -> None:
    """Write ``row`` to ``path`` (its folder made as needed); nothing when ``path`` is None."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row, indent=1))


def measure(overrides: list[str], epochs: int, warmup: int) -> dict:
    """The JSON object of the module docstring for the run of ``overrides``."""
    cfg = run_config(overrides)
    task = build_task(**cfg.data)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = trainer_for(cfg, task, Path(run_dir))
        pyro.enable_validation(False)  # as Trainer.fit: no argument checks in training
        times = [seconds(lambda e=e: trainer.train_epoch(e, 1.0)) for e in range(warmup + epochs)]
        validate = seconds(trainer.validate)
    steps = len(trainer.train_loader)
    train = statistics.median(times[warmup:])
    return {
        "overrides": overrides,
        "threads": torch.get_num_threads(),
        "device": str(trainer.device),
        "train_sequences": len(task.train),
        "steps_per_epoch": steps,
        "train_seconds": train,
        "train_seconds_all": times[warmup:],
        "ms_per_step": 1000 * train / steps,
        "validate_seconds": validate,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    parser.add_argument("--json", type=Path, default=None)
    opts, overrides = parser.parse_known_args(argv)
    if opts.epochs < 1 or opts.warmup < 0:
        parser.error("--epochs must be >= 1 and --warmup >= 0")
    row = measure(overrides, opts.epochs, opts.warmup)
    print(
        f"{' '.join(overrides)}: {row['train_seconds']:.2f} s an epoch "
        f"({row['steps_per_epoch']} steps, {row['ms_per_step']:.1f} ms each), "
        f"validation {row['validate_seconds']:.2f} s, {row['threads']} thread(s)"
    )
    save_json(row, opts.json)
    return row


if __name__ == "__main__":
    main()

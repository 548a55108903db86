"""From a Hydra config to a trained, evaluated or sampled model; no model-specific code.

The scripts in ``experiments/`` are thin wrappers around :func:`train`, :func:`evaluate` and
:func:`generate`. A run directory holds ``config.yaml`` (the resolved config), ``best.pt``,
``last.pt``, ``metrics.csv``, ``loss.png`` and, after evaluation, ``results.json``.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pyro_dvae.data import Task, build_task
from pyro_dvae.likelihoods import build_likelihood
from pyro_dvae.models import DVAE, build_model
from pyro_dvae.train import TrainConfig, Trainer, load_checkpoint, seed_everything

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is available; use device=auto or cpu")
    return torch.device(name)


def build_model_for(cfg: DictConfig, task: Task) -> DVAE:
    """The model of ``cfg.model`` with its layer sizes for the task's modality."""
    if task.modality not in cfg.model:
        raise ValueError(f"model={cfg.model.name} has no '{task.modality}' settings in its config")
    likelihood = build_likelihood(
        cfg.likelihood.name, task.modality, task.x_dim, **cfg.likelihood.get("options", {})
    )
    params = OmegaConf.to_container(cfg.model[task.modality], resolve=True)
    return build_model(
        cfg.model.name,
        task.x_dim,
        likelihood,
        guide=cfg.guide.name,
        prior=cfg.prior.name,
        init=cfg.model.get("init", "torch"),
        sites=cfg.model.get("sites", "trajectory"),
        **params,
    )


def train_config(cfg: DictConfig, modality: str) -> TrainConfig:
    """``cfg.train`` with its nulls filled from the model's and the modality's defaults."""
    options = OmegaConf.to_container(cfg.train, resolve=True)
    defaults = {**cfg.modality_defaults[modality], "lr": cfg.model.lr[modality]}
    for key, value in defaults.items():
        if options.get(key) is None:
            options[key] = value
    return TrainConfig(**options)


CONTINUATION_KEYS = (
    "train.epochs", "train.early_stop_patience", "train.progress", "train.num_workers",
    "threads", "device", "resume",
)
"""Settings a resumed run may change; everything else is the run's own."""


def _leaves(tree: dict, prefix: str = "") -> dict:
    """``{"a.b": value}`` for every non-dict value of a nested dict."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _given(overrides: Sequence[str], cfg: dict) -> set[str]:
    """The leaves set on the command line: ``key=value`` sets ``key`` (and what is below it),
    a config-group choice such as ``model=dkf`` sets only ``model.name``."""
    leaves, given = _leaves(cfg), set()
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        below = [leaf for leaf in leaves if leaf.startswith(f"{key}.")]
        given.update([f"{key}.name"] if f"{key}.name" in below else below or [key])
    return given


def resumed_config(cfg: DictConfig, saved: dict, overrides: Sequence[str] | None) -> DictConfig:
    """The configuration a resumed run continues with: the run's own (``saved``, from its
    ``last.pt``), except for the :data:`CONTINUATION_KEYS` given on the command line.

    ``overrides`` is the command line's ``key=value`` list (None: every key of ``cfg`` counts as
    given). A given setting that differs from the run's and may not change is an error, so a
    resumed run never silently trains a different model or on different data.
    """
    new = OmegaConf.to_container(cfg, resolve=True)
    old, now = _leaves(saved), _leaves(new)
    given = set(now) if overrides is None else _given(overrides, new)
    changed = sorted(k for k in given if k in old and k in now and old[k] != now[k])
    conflicts = [k for k in changed if k not in CONTINUATION_KEYS]
    if conflicts:
        listing = ", ".join(f"{k}={now[k]!r} (the run has {old[k]!r})" for k in conflicts)
        raise ValueError(
            f"resume=true: {listing}. A resumed run keeps its model, data and training settings; "
            f"only {', '.join(CONTINUATION_KEYS)} may change. Drop those overrides, or start a "
            f"new run in another hydra.run.dir")
    merged = OmegaConf.create({**{k: v for k, v in new.items() if k not in saved}, **saved})
    for key in changed:
        OmegaConf.update(merged, key, now[key])
    merged.resume = True
    return merged


def train(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] | None = None) -> Path:
    """Train ``cfg.model`` on ``cfg.data`` in ``run_dir``; returns ``run_dir``.

    With ``cfg.resume`` the run continues from ``run_dir/last.pt`` with its own settings
    (:func:`resumed_config`; ``overrides`` are the command line's ``key=value`` strings).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last = load_checkpoint(run_dir / "last.pt") if cfg.resume else None
    if last and last.get("config"):
        cfg = resumed_config(cfg, last["config"], overrides)
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    task = build_task(**cfg.data)
    model = build_model_for(cfg, task).to(device)
    tcfg = train_config(cfg, task.modality)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    log.info(
        "%s on %s (%s): %d train / %d val sequences, %d parameters, device %s",
        cfg.model.name,
        task.name,
        task.modality,
        len(task.train),
        len(task.val),
        sum(p.numel() for p in model.parameters()),
        device,
    )
    trainer = Trainer(
        model,
        task.train,
        task.val,
        tcfg,
        run_dir,
        device,
        cfg.seed,
        extra_state={"config": OmegaConf.to_container(cfg, resolve=True)},
    )
    if last:
        trainer.restore(last)
    state = trainer.fit()
    log.info(
        "done: %d epochs, best epoch %d, checkpoints in %s", state.epoch, state.best_epoch, run_dir
    )
    return run_dir


def load_run(
    run_dir: Path, device: torch.device, checkpoint: str = "best"
) -> tuple[DictConfig, Task, DVAE]:
    """The config, task and trained model (``best`` or ``last`` weights) of a run directory."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"run_dir={run_dir}: no config.yaml; is it a pyro-dvae run directory?"
        )
    cfg = OmegaConf.load(config_path)
    task = build_task(**cfg.data)
    model = build_model_for(cfg, task).to(device)
    model.load_state_dict(load_checkpoint(run_dir / f"{checkpoint}.pt", device)["model"])
    model.eval()
    return cfg, task, model


def evaluate(
    run_dir: Path,
    device: torch.device,
    sample: bool = False,
    n_examples: int = 4,
    checkpoint: str = "best",
) -> dict:
    """Evaluate a run on its test set; writes ``results.json`` and ``results.md`` in ``run_dir``."""
    run_dir = Path(run_dir)
    cfg, task, model = load_run(run_dir, device, checkpoint)
    seed_everything(cfg.seed)

    def estimate(x: torch.Tensor) -> torch.Tensor:
        return model.estimate(x.to(device), sample=sample).cpu()

    start = time.perf_counter()
    results = task.evaluate(estimate, run_dir / "eval", n_examples)
    results["eval_seconds"] = time.perf_counter() - start
    results.update(run_summary(cfg, run_dir, checkpoint, sample))
    results["guide"] = model.guide_name
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    (run_dir / "results.md").write_text(markdown_row(results))
    return results


def run_summary(cfg: DictConfig, run_dir: Path, checkpoint: str, sample: bool) -> dict:
    """Model, data, epochs run and seconds per epoch, read from the run's metrics.csv."""
    history = load_checkpoint(run_dir / "last.pt")["state"]["history"]
    return {
        "model": cfg.model.name,
        "data": cfg.data.name,
        "checkpoint": checkpoint,
        "posterior": "sample" if sample else "mean",
        "epochs": len(history),
        "best_epoch": history[-1]["best_epoch"],
        "seconds_per_epoch": statistics.median(r["seconds"] for r in history),
    }


def markdown_row(results: dict) -> str:
    """A header and one markdown table row of the scalar results."""
    keys = [k for k, v in results.items() if isinstance(v, (int, float, str)) and k != "checkpoint"]
    cells = [
        f"{results[k]:.3f}" if isinstance(results[k], float) else str(results[k]) for k in keys
    ]
    return f"| {' | '.join(keys)} |\n|{'---|' * len(keys)}\n| {' | '.join(cells)} |\n"


def generate(run_dir: Path, device: torch.device, n: int, T: int, seed: int = 0) -> list[Path]:
    """Draw ``n`` sequences of length ``T`` from the generative model and render them."""
    _, task, model = load_run(run_dir, device)
    seed_everything(seed)
    with torch.no_grad():
        x = model.generate(n, T).cpu()
    return task.render(x, Path(run_dir) / "generated")

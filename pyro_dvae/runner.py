"""From a Hydra config to a trained, evaluated or sampled model; no model-specific code.

The scripts in ``experiments/`` are thin wrappers around :func:`train`, :func:`evaluate` and
:func:`generate`. A run directory holds ``config.yaml`` (the resolved config), ``best.pt``,
``last.pt``, ``metrics.csv``, ``loss.png`` and, after evaluation, ``results.json``.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pyro_dvae import distributed, plugins
from pyro_dvae.collect import flatten
from pyro_dvae.data import Task, build_task
from pyro_dvae.likelihoods import build_likelihood
from pyro_dvae.loglik import log_likelihood
from pyro_dvae.models import DVAE, build_model
from pyro_dvae.train import TrainConfig, Trainer, load_checkpoint, on_device, seed_everything

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is available; use device=auto or cpu")
    return torch.device(name)


def build_model_for(cfg: DictConfig, task: Task) -> DVAE:
    """The model of ``cfg.model`` with its layer sizes for the task's modality (``task``: anything
    with the ``modality`` and ``x_dim`` of a :class:`Task`)."""
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
        prior_options=OmegaConf.to_container(cfg.prior, resolve=True).get("options"),
        init=cfg.model.get("init", "torch"),
        sites=cfg.model.get("sites", "trajectory"),
        **params,
    )


def train_config(cfg: DictConfig, modality: str) -> TrainConfig:
    """``cfg.train`` with its nulls filled from the model's and the modality's defaults; an
    unknown key (e.g. ``+train.epoch=3``) or a bad value is a ``ValueError`` naming the key."""
    options = OmegaConf.to_container(cfg.train, resolve=True)
    known = [f.name for f in fields(TrainConfig)]
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean train.{close[0]}? " if close else ""
            raise ValueError(f"train.{key}: unknown key; {hint}expected one of {known}")
    defaults = {**cfg.modality_defaults[modality], "lr": cfg.model.lr[modality]}
    for key, value in defaults.items():
        if options.get(key) is None:
            options[key] = value
    return TrainConfig(**options)


CONTINUATION_KEYS = (  # fmt: skip
    "train.epochs",
    "train.early_stop_patience",
    "train.lr_drops",
    "train.lr_drop_factor",
    "train.progress",
    "train.num_workers",
    "train.distributed",
    "threads",
    "device",
    "resume",
    "overwrite",
)
"""Settings a resumed run may change; everything else is the run's own."""


def _given(overrides: Sequence[str], cfg: dict) -> set[str]:
    """The leaves set on the command line: ``key=value`` sets ``key`` (and what is below it),
    a config-group choice such as ``model=dkf`` sets only ``model.name``."""
    leaves, given = flatten(cfg), set()
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
    old, now = flatten(saved), flatten(new)
    given = set(now) if overrides is None else _given(overrides, new)
    # a continuation key newer than the run's config counts as changed when given
    changed = sorted(
        k for k in given if k in now and (old[k] != now[k] if k in old else k in CONTINUATION_KEYS)
    )
    conflicts = [k for k in changed if k not in CONTINUATION_KEYS]
    if conflicts:
        listing = ", ".join(f"{k}={now[k]!r} (the run has {old[k]!r})" for k in conflicts)
        raise ValueError(
            f"resume=true: {listing}. A resumed run keeps its model, data and training settings; "
            f"only {', '.join(CONTINUATION_KEYS)} may change. Drop those overrides, or start a "
            f"new run in another hydra.run.dir"
        )
    merged = OmegaConf.create({**{k: v for k, v in new.items() if k not in saved}, **saved})
    for key in changed:
        OmegaConf.update(merged, key, now[key])
    merged.resume = True
    return merged


def init_weights(model: DVAE, source: Path, device: torch.device) -> None:
    """``train.init_from``: start from the weights of a run directory's ``best.pt`` or of a
    checkpoint file (e.g. scheduled sampling from a teacher-forced run)."""
    path = source / "best.pt" if source.is_dir() else source
    try:
        model.load_state_dict(load_checkpoint(path, device)["model"])
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise ValueError(f"train.init_from={str(source)!r}: {err}") from err
    log.info("initial weights from %s", path)


def train(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] | None = None) -> Path:
    """Train ``cfg.model`` on ``cfg.data`` in ``run_dir``; returns ``run_dir``.

    With ``cfg.resume`` the run continues from ``run_dir/last.pt`` with its own settings
    (:func:`resumed_config`; ``overrides`` are the command line's ``key=value`` strings).
    With ``train.distributed`` under torchrun, every process calls this; they train together
    in rank 0's ``run_dir`` (:mod:`pyro_dvae.distributed`), where rank 0 alone writes.
    """
    plugins.prepare(cfg, Path(run_dir))  # user code imported, names checked before any data
    launch = train_config(cfg, cfg.data.modality)  # bad settings fail before anything starts
    cluster = distributed.start(launch.distributed, resolve_device(cfg.device))
    together = False  # whether every rank leaves at the same point
    try:
        run_dir = _train(cfg, _shared_run_dir(cluster, Path(run_dir)), overrides, cluster)
        together = True
        return run_dir
    except (KeyboardInterrupt, FloatingPointError):  # the trainer stops all ranks at one step
        together = True
        raise
    finally:
        distributed.stop(cluster, together)


def _shared_run_dir(cluster: distributed.Cluster, run_dir: Path) -> Path:
    """Rank 0's run directory (Hydra may have stamped another second on another rank; that
    empty folder is removed)."""
    shared = Path(cluster.broadcast(str(run_dir.resolve())))
    if shared != run_dir.resolve() and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()
    return shared


def _train(
    cfg: DictConfig, run_dir: Path, overrides: Sequence[str] | None, cluster: distributed.Cluster
) -> Path:
    if not cfg.resume:
        claim_run_dir(run_dir, cfg.get("overwrite", False), cluster.main)
    last = load_checkpoint(run_dir / "last.pt") if cfg.resume else None
    if last and last.get("config"):
        cfg = resumed_config(cfg, last["config"], overrides)
    cfg.train.distributed = cluster.connected  # how this run trains now (a resume may change it)
    tcfg = train_config(cfg, cfg.data.modality)  # a resumed run: its own settings
    cluster.share(tcfg.batch_size)
    device = cluster.device
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with cluster.main_first():  # downloads and feature caches once
        task = build_task(**cfg.data)
    model = build_model_for(cfg, task).to(device)
    if tcfg.init_from and not last:
        init_weights(model, Path(tcfg.init_from), device)
    if cluster.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    log.info(
        "%s on %s (%s): %d train / %d val sequences, %d parameters, device %s, %d process(es)",
        cfg.model.name,
        task.name,
        task.modality,
        len(task.train),
        len(task.val),
        sum(p.numel() for p in model.parameters()),
        device,
        cluster.world_size,
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
        cluster=cluster,
    )
    if last:
        trainer.restore(last)
    state = trainer.fit()
    log.info(
        "done: %d epochs, best epoch %d, checkpoints in %s", state.epoch, state.best_epoch, run_dir
    )
    return run_dir


RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "results.json")
"""A run directory holding any of these holds a run (started, finished or evaluated)."""
RUN_OUTPUTS = (
    "last.pt", "best.pt", ".last.pt.tmp", ".best.pt.tmp", "metrics.csv", "loss.png",
    "config.yaml", "results*.json", "results*.md", "eval", "eval_*", "generated", "forecast_*",
)  # fmt: skip
"""What training, evaluation, generation and forecasting write into a run directory."""


def claim_run_dir(run_dir: Path, overwrite: bool, main: bool = True) -> None:
    """Refuse to train into a directory that holds a run unless ``overwrite``; with it, the
    old run's outputs (:data:`RUN_OUTPUTS`) are removed first (by the main process), so no
    stale result survives.

    Raises:
        FileExistsError: naming the directory and the way out (``resume=true`` or
            ``overwrite=true``).
    """
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not found:
        return
    if not overwrite:
        raise FileExistsError(
            f"{run_dir} already holds a run ({', '.join(found)}): continue it with resume=true, "
            "replace it with overwrite=true, or choose another hydra.run.dir"
        )
    if main:
        removed = sorted({p for pattern in RUN_OUTPUTS for p in run_dir.glob(pattern)})
        for path in removed:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        names = ", ".join(p.name for p in removed)
        log.warning("overwrite=true: removed %s from %s", names, run_dir)


def load_run(
    run_dir: Path, device: torch.device, checkpoint: str = "best"
) -> tuple[DictConfig, Task, DVAE]:
    """The config, task and trained model (``best`` or ``last`` weights) of a run directory."""
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint={checkpoint!r}: expected best or last")
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"run_dir={run_dir}: no config.yaml; is it a pyro-dvae run directory?"
        )
    cfg = OmegaConf.load(config_path)
    plugins.prepare(cfg)  # the run's own plugins
    task = build_task(**cfg.data)
    model = build_model_for(cfg, task).to(device)
    path = run_dir / f"{checkpoint}.pt"
    try:
        model.load_state_dict(load_checkpoint(path, device)["model"])
    except RuntimeError as err:  # missing, unexpected or mis-shaped weights
        raise ValueError(
            f"{path} does not hold the weights of the model in {config_path}: {err}"
        ) from err
    model.eval()
    return cfg, task, model


EVAL_MODES = {"teacher_forcing": 0.0, "generation": 1.0}
"""Evaluation mode → probability that the decoder reads its own prediction."""


def check_mode(mode: str) -> None:
    """A ``ValueError`` naming the key unless ``mode`` is one of :data:`EVAL_MODES`."""
    if mode not in EVAL_MODES:
        raise ValueError(f"mode={mode!r}: expected one of {list(EVAL_MODES)}")


def evaluate(
    run_dir: Path,
    device: torch.device,
    sample: bool = False,
    n_examples: int = 4,
    checkpoint: str = "best",
    mode: str = "teacher_forcing",
    iwae_samples: int | None = None,
) -> dict:
    """Evaluate a run on its test set; writes ``results.json`` and ``results.md`` in ``run_dir``.

    With ``iwae_samples`` K > 0 (None: the task's ``iwae_samples``, 0 where it has none) and a
    test set with ``batch``, also ``elbo_per_step``, ``elbo_per_sequence_step`` and
    ``nll_per_step`` (−IWAE_K), in nats per test time step (:func:`test_log_likelihood`).

    ``mode=generation``: the decoder recurrence of an autoregressive model reads its own
    predictions, the encoder the ground truth (spec §7); written to ``results_generation.json``,
    ``results_generation.md`` and ``eval_generation/``. Other models are unchanged by it."""
    check_mode(mode)
    run_dir = Path(run_dir)
    cfg, task, model = load_run(run_dir, device, checkpoint)
    summary = run_summary(cfg, run_dir, checkpoint, sample)
    return evaluate_model(
        cfg, task, model, run_dir, device, summary, sample, n_examples, mode, iwae_samples
    )


def evaluate_model(
    cfg: DictConfig,
    task: Task,
    model: DVAE,
    out_dir: Path,
    device: torch.device,
    summary: dict,
    sample: bool = False,
    n_examples: int = 4,
    mode: str = "teacher_forcing",
    iwae_samples: int | None = None,
) -> dict:
    """:func:`evaluate` of a loaded ``model`` (a run's, or a pretrained one's): the test metrics,
    then ``summary`` (:func:`run_summary`), written to ``out_dir/results*.json`` and ``.md``."""
    check_mode(mode)
    if cfg.get("threads"):  # the run's own CPU threads (a busy machine is far slower with more)
        torch.set_num_threads(cfg.threads)
    model.set_feedback(EVAL_MODES[mode])
    suffix = "" if mode == "teacher_forcing" else f"_{mode}"
    seed_everything(cfg.seed)

    def estimate(x: torch.Tensor) -> torch.Tensor:
        return model.estimate(x.to(device), sample=sample).cpu()

    start = time.perf_counter()
    out_dir = Path(out_dir)
    results = task.evaluate(estimate, out_dir / f"eval{suffix}", n_examples)
    results["eval_seconds"] = time.perf_counter() - start
    K = getattr(task, "iwae_samples", 0) if iwae_samples is None else iwae_samples
    if K:
        results.update(test_log_likelihood(model, task, K, device))
    results.update(summary)
    results["guide"] = model.guide_name
    results["mode"] = mode
    (out_dir / f"results{suffix}.json").write_text(json.dumps(results, indent=2))
    (out_dir / f"results{suffix}.md").write_text(markdown_row(results))
    return results


IWAE_MAX_BATCH = 1000
"""Sequences (draws of one test sequence) per pass of the importance-weighted evaluation."""


@torch.no_grad()
def test_log_likelihood(model: DVAE, task: Task, num_samples: int, device: torch.device) -> dict:
    """``elbo_per_step``, ``elbo_per_sequence_step``, ``nll_per_step`` (IWAE with K =
    ``num_samples``), ``iwae_samples`` and ``loglik_seconds`` over the task's test set, one
    sequence at a time (its K draws are the batch, in passes of at most
    :data:`IWAE_MAX_BATCH`; a padded ``batch`` comes with its mask), by
    :func:`pyro_dvae.loglik.log_likelihood`.

    Raises:
        ValueError: a test set without ``batch(index)``, naming ``iwae_samples``.
    """
    test = task.test
    if not hasattr(test, "batch"):
        raise ValueError(
            f"iwae_samples={num_samples}: the test set of data={task.name} has no batch(index), "
            "so its sequences cannot be scored; use iwae_samples=0"
        )
    start = time.perf_counter()
    batches = (on_device(test.batch(torch.tensor([i])), device) for i in range(len(test)))
    scores = log_likelihood(model, batches, num_samples, IWAE_MAX_BATCH)
    return {
        "elbo_per_step": scores["elbo_per_step"],
        "elbo_per_sequence_step": scores["elbo_per_sequence_step"],
        "nll_per_step": scores["nll_per_step"],
        "iwae_samples": num_samples,
        "loglik_seconds": time.perf_counter() - start,
    }


TRAINING_KEYS = ("epochs", "best_epoch", "seconds_per_epoch")
"""What :func:`run_summary` reads from a run's metrics.csv."""


def run_summary(
    cfg: DictConfig,
    run_dir: Path | None,
    checkpoint: str,
    sample: bool,
    training: dict | None = None,
) -> dict:
    """Model, data, epochs run and seconds per epoch, read from the run's metrics.csv, or given
    as ``training`` (the :data:`TRAINING_KEYS` of a pretrained model's recorded row)."""
    if training is None:
        with open(Path(run_dir) / "metrics.csv", newline="") as f:
            history = list(csv.DictReader(f))
        training = {
            "epochs": len(history),
            "best_epoch": int(history[-1]["best_epoch"]),
            "seconds_per_epoch": statistics.median(float(r["seconds"]) for r in history),
        }
    return {
        "model": cfg.model.name,
        "data": cfg.data.name,
        "checkpoint": checkpoint,
        "posterior": "sample" if sample else "mean",
        **{key: training[key] for key in TRAINING_KEYS},
    }


def markdown_row(results: dict) -> str:
    """A header and one markdown table row of the scalar results. A metric with ``counts`` says
    how many test items its mean covers, ``0.300 (129/300)`` (``– (0/300)`` when none). With a
    ``floor`` (speech), a second row gives the same metrics of the trivial reconstruction."""

    def cell(scores: dict, key: str) -> str:
        value = scores[key]
        text = "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
        count = scores.get("counts", {}).get(key)
        return text if count is None else f"{text} ({count['scored']}/{count['items']})"

    counts = results.get("counts", {})
    keys = [
        k
        for k, v in results.items()
        if k in counts or isinstance(v, (int, float, str)) and k != "checkpoint"
    ]
    rows = [[cell(results, k) for k in keys]]
    floor = results.get("floor")
    if floor:
        label = {"model": f"floor: {floor['estimate']}"}
        rows.append([cell(floor, k) if k in floor["counts"] else label.get(k, "") for k in keys])
    lines = [keys, ["---"] * len(keys), *rows]
    return "".join(f"| {' | '.join(cells)} |\n" for cells in lines)


def generate(run_dir: Path, device: torch.device, n: int, T: int, seed: int = 0) -> list[Path]:
    """Draw ``n`` sequences of length ``T`` from the generative model and render them."""
    _, task, model = load_run(run_dir, device)
    seed_everything(seed)
    with torch.no_grad():
        x = model.generate(n, T).cpu()
    return task.render(x, Path(run_dir) / "generated")

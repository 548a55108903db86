"""Gather finished runs (e.g. a Hydra multirun's sweep folder) into one table.

Runs whose ``config.yaml`` differ only in ``seed`` (and in the execution settings of
:data:`IGNORED_KEYS`) form one row; each metric cell is the mean ± the sample standard
deviation (``ddof=1``) over that row's runs. A run directory is any folder that holds the
``config.yaml`` written by :func:`pyro_dvae.runner.train` (Hydra's own ``.hydra/`` copies and
every other hidden folder are skipped). Its metrics are:

- from ``metrics.csv`` (every trained run): epochs run, best epoch, median seconds per epoch and
  the validation negative ELBO at the best epoch (``val_recon + val_kl``, the loss at KL weight
  1, so runs compare whatever their warm-up); these win over the same keys of ``results.json``,
  and a ``results.json`` written after fewer epochs than ``metrics.csv`` has (a run resumed
  since its evaluation) is reported;
- from ``results.json`` (written by ``experiments/evaluate.py``; ``results_generation.json``
  for ``mode=generation``, chosen with ``results=``): the test-set metrics, each with the number
  of test items its mean covers (``counts``), and for speech the metrics of the trivial
  reconstruction (``floor``, as ``floor_<metric>``). A run not evaluated yet contributes its
  ``metrics.csv`` columns only; a cell averaged over fewer runs than its row holds says so with
  ``(n=k)``.

A test-metric cell reads ``0.30 ± 0.02 (129/300)``: the mean over the row's runs, and the items
scored of the items in the test set, per run (a range such as ``128–130/300`` where the runs
differ).

A folder with ``config.yaml`` but neither file (a run that stopped before its first epoch) is
skipped with a message.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

COLUMNS = {  # metric key -> column title, in table order; absent metrics are left out
    "si_sdr": "SI-SDR (dB)",
    "floor_si_sdr": "floor SI-SDR (dB)",
    "pesq_nb": "PESQ-NB",
    "floor_pesq_nb": "floor PESQ-NB",
    "pesq_wb": "PESQ-WB",
    "floor_pesq_wb": "floor PESQ-WB",
    "estoi": "ESTOI",
    "floor_estoi": "floor ESTOI",
    "rmse": "RMSE",
    "floor_rmse": "floor RMSE",
    "mpjpe_mm": "MPJPE all joints (mm)",
    "mpjpe_mm_subset": "MPJPE subset (mm)",
    "val_neg_elbo": "val −ELBO (best epoch)",
    "epochs": "epochs",
    "best_epoch": "best epoch",
    "seconds_per_epoch": "s / epoch",
}
DECIMALS = {"estoi": 3, "floor_estoi": 3, "rmse": 3, "floor_rmse": 3, "epochs": 1, "best_epoch": 1}
"""Decimals shown in the markdown table (default 2); the CSV keeps full precision."""
COUNTS = ("epochs", "best_epoch")
"""Whole-number metrics: shown without decimals when their mean is a whole number."""

NAME_KEYS = ("model.name", "guide.name", "data.name")
"""Always the first columns of a table (as ``model``, ``guide``, ``data``)."""

IGNORED_KEYS = (
    "seed",
    "threads",
    "device",
    "resume",
    "overwrite",
    "train.progress",
    "train.num_workers",
    "train.distributed",
    "data.n_workers",
)
"""Config keys that do not make two runs different experiments: ``seed`` is averaged over, the
others only say how a run was executed."""


@dataclass(frozen=True)
class Run:
    """One run directory: its flattened ``config.yaml`` (``{"train.epochs": 2, ...}``), its
    numeric metrics, the guide its model resolved (``results.json``'s ``guide``), a warning
    when its results are older than its training, and ``counts``: metric → (test items scored,
    test items)."""

    path: Path
    config: dict
    metrics: dict[str, float]
    guide: str | None = None
    warning: str | None = None
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (``ddof=1``; None for fewer than 2 values) of ``n``
    values."""

    mean: float
    std: float | None
    n: int


@dataclass(frozen=True)
class Row:
    """One configuration: its label columns, seeds, run directories, per-metric statistics and
    per-metric ``(scored, items)`` of each run that recorded them."""

    labels: dict[str, str]
    seeds: list
    runs: list[Path]
    stats: dict[str, Stat]
    counts: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a.b": value}`` for every non-dict value of a nested dict (lists are values)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def natural_key(path: Path) -> list:
    """Sort key that orders ``2`` before ``10`` (Hydra names sweep jobs 0, 1, ..., 10, ...)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Every folder at or below ``sweep_dir`` with a ``config.yaml``, outside hidden folders,
    in natural order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"SWEEP_DIR={sweep_dir}: no such folder")
    found = [
        path.parent
        for path in sweep_dir.rglob("config.yaml")
        if not any(part.startswith(".") for part in path.relative_to(sweep_dir).parts)
    ]
    return sorted(found, key=natural_key)


def training_metrics(path: Path) -> dict[str, float]:
    """Epochs run, best epoch, median seconds per epoch and the validation negative ELBO at the
    best epoch, from a trainer's ``metrics.csv``."""
    with open(path, newline="") as f:
        history = list(csv.DictReader(f))
    required = {"epoch", "val_recon", "val_kl", "seconds", "best_epoch"}
    if not history or not required <= set(history[0]):
        raise ValueError(f"{path}: expected a header with {sorted(required)} and at least one row")
    best_epoch = int(history[-1]["best_epoch"])
    best = next((r for r in history if int(r["epoch"]) == best_epoch), None)
    if best is None:
        raise ValueError(f"{path}: best_epoch {best_epoch} has no row")
    return {
        "epochs": len(history),
        "best_epoch": best_epoch,
        "seconds_per_epoch": statistics.median(float(r["seconds"]) for r in history),
        "val_neg_elbo": float(best["val_recon"]) + float(best["val_kl"]),
    }


def read_results(path: Path) -> dict:
    """A run's ``results.json`` as a dict."""
    try:
        results = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(results, dict):
        raise ValueError(f"{path}: expected a JSON object of results")
    return results


def load_run(run_dir: Path, results: str = "results.json") -> Run | None:
    """The :class:`Run` in ``run_dir`` with the test metrics of its file ``results``; None when
    it has neither ``metrics.csv`` nor that file."""
    run_dir = Path(run_dir)
    csv_path, json_path = run_dir / "metrics.csv", run_dir / results
    if not csv_path.is_file() and not json_path.is_file():
        return None
    config = flatten(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")))
    training = training_metrics(csv_path) if csv_path.is_file() else {}
    scores = read_results(json_path) if json_path.is_file() else {}
    floor = scores.get("floor", {})
    numbers = {**_numbers(scores), **{f"floor_{k}": v for k, v in _numbers(floor).items()}}
    counts = read_counts(scores, json_path)
    counts.update({f"floor_{k}": c for k, c in read_counts(floor, json_path).items()})
    return Run(
        run_dir,
        config,
        {**numbers, **training},
        scores.get("guide"),
        stale_warning(json_path, numbers.get("epochs"), training.get("epochs")),
        counts,
    )


def _numbers(scores: dict) -> dict[str, float]:
    """The int and float values of ``scores`` (not bools)."""
    return {
        k: v for k, v in scores.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def read_counts(scores: dict, path: Path) -> dict[str, tuple[int, int]]:
    """Metric → (items scored, items) from the ``counts`` of results read from ``path``; results
    written before ``counts`` existed give them from ``n_failed`` and ``n_utterances``.

    Raises:
        ValueError: ``counts`` is not ``{metric: {"scored": int, "items": int}}``, naming ``path``.
    """
    if "counts" not in scores:
        n = scores.get("n_utterances")
        return {} if n is None else {m: (n - k, n) for m, k in scores.get("n_failed", {}).items()}
    try:
        return {m: (int(c["scored"]), int(c["items"])) for m, c in scores["counts"].items()}
    except (AttributeError, TypeError, KeyError, ValueError) as err:
        raise ValueError(
            f"{path}: expected counts as {{metric: {{'scored': int, 'items': int}}}} ({err!r})"
        ) from err


def stale_warning(path: Path, evaluated: int | None, trained: int | None) -> str | None:
    """A message when the results file was written after ``evaluated`` epochs but training has
    run ``trained`` (e.g. resumed since); None when they agree or either is unknown."""
    if evaluated is None or trained is None or evaluated == trained:
        return None
    return (
        f"{path}: written after {evaluated} epochs, but metrics.csv has {trained}; its test "
        f"metrics may be of an older checkpoint (run experiments/evaluate.py "
        f"run_dir={path.parent} again)"
    )


def load_runs(
    run_dirs: Iterable[Path], results: str = "results.json"
) -> tuple[list[Run], list[str]]:
    """The runs of ``run_dirs`` (see :func:`load_run`) and one message per skipped folder or
    stale results file."""
    runs, messages = [], []
    for run_dir in run_dirs:
        run = load_run(run_dir, results)
        if run is None:
            messages.append(f"skipped {run_dir}: no metrics.csv or {results} (not trained yet?)")
            continue
        runs.append(run)
        if run.warning:
            messages.append(run.warning)
    return runs, messages


def varying_keys(runs: Sequence[Run], ignore: Iterable[str] = ()) -> list[str]:
    """Config keys, besides :data:`NAME_KEYS` and the ignored ones, whose value differs between
    runs. A key under a section with a ``name`` (``model.speech.z_dim`` under ``model``) counts
    only if it differs between runs with the same ``<section>.name``: choosing another model
    changes its layer sizes without adding a column for each."""
    ignored = {*IGNORED_KEYS, *NAME_KEYS, *ignore}
    keys = list(dict.fromkeys(k for run in runs for k in run.config))
    return [k for k in keys if k not in ignored and _differs(runs, k)]


def _differs(runs: Sequence[Run], key: str) -> bool:
    name_key = f"{key.split('.', 1)[0]}.name"
    seen: dict = {}
    for run in runs:
        section = _token(run.config.get(name_key)) if name_key != key else None
        value = _token(run.config.get(key, "<absent>"))
        if seen.setdefault(section, value) != value:
            return True
    return False


def _token(value) -> str:
    """A hashable, comparable stand-in for a config value (lists included)."""
    return json.dumps(value, sort_keys=True)


def summarise(values: Sequence[float]) -> Stat | None:
    """:class:`Stat` of the finite values; None when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    std = statistics.stdev(finite) if len(finite) > 1 else None
    return Stat(statistics.fmean(finite), std, len(finite))


def group(runs: Sequence[Run], ignore: Iterable[str] = ()) -> list[Row]:
    """One :class:`Row` per configuration (:data:`NAME_KEYS` and :func:`varying_keys`), in the
    order of their first run."""
    keys = [*NAME_KEYS, *varying_keys(runs, ignore)]
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(_token(run.config.get(k)) for k in keys), []).append(run)
    rows = []
    for members in groups.values():
        stats = {m: summarise([run.metrics.get(m) for run in members]) for m in COLUMNS}
        counts = {m: [run.counts[m] for run in members if m in run.counts] for m in COLUMNS}
        rows.append(
            Row(
                labels=_labels(members, keys),
                seeds=[run.config.get("seed") for run in members],
                runs=[run.path for run in members],
                stats={m: s for m, s in stats.items() if s is not None},
                counts={m: c for m, c in counts.items() if c},
            )
        )
    return rows


def _labels(members: Sequence[Run], keys: Sequence[str]) -> dict[str, str]:
    """Column title -> value of a group; a default guide (``guide.name: null``) is shown as the
    one its model resolved (``results.json``'s ``guide``), else as ``default``."""
    first = members[0].config
    labels = {k.removesuffix(".name") if k in NAME_KEYS else k: _text(first.get(k)) for k in keys}
    if labels["guide"] == "null":
        labels["guide"] = next((run.guide for run in members if run.guide), "default")
    return labels


def _text(value) -> str:
    return "null" if value is None else str(value)


def duplicate_seeds(rows: Sequence[Row]) -> list[str]:
    """One message per row in which a seed occurs more than once (repeated runs)."""
    return [
        f"{', '.join(row.labels.values())}: seed {seed} occurs {row.seeds.count(seed)} times "
        f"({', '.join(str(p) for p, s in zip(row.runs, row.seeds, strict=True) if s == seed)})"
        for row in rows
        for seed in dict.fromkeys(row.seeds)
        if row.seeds.count(seed) > 1
    ]


def metric_keys(rows: Sequence[Row]) -> list[str]:
    """The :data:`COLUMNS` that any row has (a value or a count), in table order."""
    return [k for k in COLUMNS if any(k in row.stats or k in row.counts for row in rows)]


def decimals(metric: str, row: Row) -> int:
    """Decimals of ``metric``'s cell in ``row``: :data:`DECIMALS`, or 0 for a whole-number
    mean of one of the :data:`COUNTS`."""
    stat = row.stats.get(metric)
    if metric in COUNTS and stat is not None and stat.mean.is_integer():
        return 0
    return DECIMALS.get(metric, 2)


def format_cell(
    stat: Stat | None, row_size: int, places: int = 2, counts: Sequence[tuple[int, int]] = ()
) -> str:
    """``mean ± std`` to ``places`` decimals (``mean`` alone for one value, ``–`` for none),
    then the test items scored of the items per run, ``(129/300)`` (a range ``(128–130/300)``
    where runs differ), when ``counts`` (one ``(scored, items)`` per run) are given, and
    ``(n=k)`` when the statistic covers fewer runs than the row holds."""
    text = "–" if stat is None else f"{stat.mean:.{places}f}"
    if stat is not None and stat.std is not None:
        text += f" ± {stat.std:.{places}f}"
    if counts:
        scored, items = zip(*counts, strict=True)
        text += f" ({_span(scored)}/{_span(items)})"
    if stat is not None and stat.n < row_size:
        text += f" (n={stat.n})"
    return text


def _span(values: Sequence[int]) -> str:
    """``"129"`` when all values are equal, else ``"128–130"`` (smallest–largest)."""
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}–{high}"


def markdown(rows: Sequence[Row]) -> str:
    """Markdown table: the label columns, the seeds, then ``mean ± std`` of each metric."""
    if not rows:
        return ""
    labels, metrics = list(rows[0].labels), metric_keys(rows)
    titles = [*labels, "seeds", *(COLUMNS[m] for m in metrics)]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for row in rows:
        cells = [*row.labels.values(), ", ".join(map(str, row.seeds))]
        cells += [
            format_cell(row.stats.get(m), len(row.runs), decimals(m, row), row.counts.get(m, ()))
            for m in metrics
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Row]) -> str:
    """CSV of the same table at full precision: label columns, ``seeds``, ``n_runs``,
    ``<metric>_mean``, ``<metric>_std`` (sample, ddof=1; empty for one run), ``<metric>_n`` (runs
    averaged), ``<metric>_scored`` and ``<metric>_items`` (test items scored and test items,
    summed over the runs that recorded them; empty for metrics without counts) for each metric,
    and ``run_dirs``."""
    if not rows:
        return ""
    metrics = metric_keys(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            *rows[0].labels,
            "seeds",
            "n_runs",
            *(f"{m}_{part}" for m in metrics for part in ("mean", "std", "n", "scored", "items")),
            "run_dirs",
        ]
    )
    for row in rows:
        cells = [*row.labels.values(), " ".join(map(str, row.seeds)), len(row.runs)]
        for m in metrics:
            stat, counts = row.stats.get(m), row.counts.get(m)
            cells += (
                ["", "", 0]
                if stat is None
                else [repr(stat.mean), "" if stat.std is None else repr(stat.std), stat.n]
            )
            cells += [sum(c[0] for c in counts), sum(c[1] for c in counts)] if counts else ["", ""]
        writer.writerow([*cells, " ".join(str(p) for p in row.runs)])
    return out.getvalue()


def collect(
    sweep_dir: Path, ignore: Iterable[str] = (), results: str = "results.json"
) -> tuple[list[Row], list[str]]:
    """The rows of every run under ``sweep_dir`` (``results``: the file of test metrics) and
    messages about skipped folders and repeated seeds."""
    runs, messages = load_runs(find_run_dirs(sweep_dir), results)
    if not runs:
        raise FileNotFoundError(
            f"SWEEP_DIR={sweep_dir}: no trained run (a folder with config.yaml and metrics.csv "
            f"or {results}) found"
        )
    rows = group(runs, ignore)
    return rows, messages + duplicate_seeds(rows)

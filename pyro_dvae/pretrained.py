"""The pretrained zoo: named, trained models with the numbers they reach.

``load("dkf-jsb-smoke")`` returns the model ready for evaluation; ``names()`` lists the entries;
``python experiments/evaluate.py pretrained=NAME`` evaluates one on its test set.

An entry is one JSON file, ``pyro_dvae/zoo/<name>.json``, written by
``python experiments/zoo.py add NAME RUN_DIR`` from a finished, evaluated run. It records

* ``config``: the run's resolved configuration;
* ``results``: the run's ``results.json`` row, and ``standard_errors``: the Monte Carlo
  standard errors of its sampled bounds (:data:`MONTE_CARLO`, :func:`standard_errors`);
* ``data``: the data sources it was trained and tested on, each with the data layer's checksum
  (:func:`build_task_recorded`);
* ``weights``: the SHA-256 and size of its weights file (``{"model": state_dict}``, nothing
  else), and a ``url`` where the file is hosted (null: it ships in the package);
* ``name``, ``description``, ``x_dim`` (the data's features, so that :func:`load` reads no
  data), ``training`` (a long run's ``wall.json``: wall seconds, sessions) and ``made_with``
  (torch, Pyro and Python versions).

Weights files of at most :data:`SHIP_MAX_BYTES` ship as ``pyro_dvae/zoo/<name>.pt`` (all shipped
files together at most :data:`SHIP_TOTAL_BYTES`); larger ones are hosted: fetched on first use
into ``$PYRO_DVAE_CACHE/zoo/<name>.pt`` (default ``~/.cache/pyro_dvae``) and verified, as the
data are (:mod:`pyro_dvae.data.sources`). A file is checked against its SHA-256 every time it is
loaded. The ``url`` may be ``https://``, ``file://``, an absolute path, or a relative path, which
names a file committed to the repository outside the package (``zoo/<name>.pt`` under
:data:`REPOSITORY`), read where it is by anyone who installed from a clone, and in no
wheel. Offline, or outside a clone, copy the file to the cache path.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pyro
import torch
from omegaconf import DictConfig, OmegaConf

from pyro_dvae import plugins, runner
from pyro_dvae.collect import flatten
from pyro_dvae.data import Task, build_task, sources
from pyro_dvae.data.base import ROUNDING_INTERVALS
from pyro_dvae.loglik import importance_log_weights
from pyro_dvae.models import DVAE
from pyro_dvae.records import load_checkpoint, replacing, seed_everything
from pyro_dvae.train import on_device

log = logging.getLogger(__name__)

ZOO = Path(__file__).resolve().parent / "zoo"
"""The package's folder of entries (``<name>.json``) and shipped weights (``<name>.pt``)."""
REPOSITORY = ZOO.parents[1]
"""The folder above the package: the repository's root when the package runs from a clone
(``pip install -e .``), against which a relative ``url`` is read."""
SHIP_MAX_BYTES = 2**20
"""The largest weights file that ships inside the package (1 MiB)."""
SHIP_TOTAL_BYTES = 10 * 2**20
"""The most all shipped weights files may weigh together (10 MiB)."""
NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
"""What an entry's name looks like (it names files)."""

MONTE_CARLO = ("elbo_per_step", "elbo_per_sequence_step", "nll_per_step")
"""The sampled bounds of a results row, matched to a tolerance of their standard error."""
TIMINGS = ("eval_seconds", "loglik_seconds")
"""Keys of a results row that measure the machine, not the model: never compared."""
FLOAT32_ROUNDOFF = 2.0**-24
"""u, the unit roundoff of float32, in which the models compute."""
ROUNDING_ULPS = 64
"""Two evaluations of the same weights on the same data and seed differ by rounding alone, but
they do differ: the BLAS kernels' order of summation depends on memory alignment, CPU and
threads. A metric is a sum of float32 results, and a float32 sum of n terms carries an error of
at most ⌈log2 n⌉·u·Σ|terms| in pairwise summation (Higham 2002, §4.2): 16u for up to 2^16
terms per test sequence (a chorale has at most 160 × 88), doubled for the two evaluations
compared and doubled again for the rounding of the network's outputs that enter the sum: 64u of
the metric (3.8e-6 relative; the terms of a metric share their sign). An order-of-magnitude
bound, not a proof for every network; far below any difference between models."""
Z_TOLERANCE = 5.0
"""A sampled bound matches its recorded value when they differ by at most this many standard
errors of the difference of two independent estimates, √2·SE: a false alarm has probability
about 6e-7 (two-sided normal tail at 5)."""


@dataclass(frozen=True)
class Entry:
    """One pretrained model: see the module docstring for the fields."""

    name: str
    description: str
    x_dim: int
    config: dict
    results: dict
    standard_errors: dict
    data: dict
    weights: dict
    training: dict
    made_with: dict

    @property
    def ships(self) -> bool:
        """Whether the weights ship in the package (no ``url``)."""
        return self.weights.get("url") is None

    @property
    def in_repository(self) -> bool:
        """Whether the weights are a file committed to the repository (a relative ``url``)."""
        url = self.weights.get("url")
        return url is not None and repository_file(url) is not None


def repository_file(location: str) -> Path | None:
    """The file of the repository that a relative ``location`` names (under :data:`REPOSITORY`,
    not the working directory); None for a URL or an absolute path."""
    path = Path(location).expanduser()
    return None if "://" in location or path.is_absolute() else REPOSITORY / path


def names() -> list[str]:
    """The names of the zoo's entries, sorted."""
    return sorted(path.stem for path in ZOO.glob("*.json"))


def entry(name: str) -> Entry:
    """The entry ``name``.

    Raises:
        ValueError: an unknown name (listing the known ones) or an unreadable entry file.
    """
    path = ZOO / f"{name}.json"
    if not NAME.fullmatch(name) or not path.is_file():
        raise ValueError(
            f"pretrained={name!r}: no such pretrained model; expected one of {names()}"
        )
    try:
        return Entry(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{path}: not a readable zoo entry ({err})") from err


def sha256_file(path: Path) -> str:
    """The SHA-256 of the bytes of ``path``, as hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def weights_path(item: Entry) -> Path:
    """The verified weights file of ``item``: shipped in :data:`ZOO`, committed to the
    repository (read where it is, in a clone), or hosted and cached in ``cache_dir()/zoo``
    (downloaded there first if absent, :func:`fetch`).

    Raises:
        FileNotFoundError: a shipped file missing, or a hosted one that cannot be fetched.
        ValueError: a file whose SHA-256 is not the entry's, naming it.
    """
    cached = sources.cache_dir() / "zoo" / f"{item.name}.pt"
    in_clone = None if item.ships else repository_file(item.weights["url"])
    if item.ships:
        path = ZOO / f"{item.name}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the weights of pretrained '{item.name}' are missing")
    elif in_clone is not None and in_clone.is_file():
        path = in_clone
    else:
        path = cached
        if not path.is_file():
            fetch(item, path)
    digest = sha256_file(path)
    if digest != item.weights["sha256"]:
        again = "; delete it to download it again" if path == cached else ""
        raise ValueError(
            f"{path}: SHA-256 {digest} is not the {item.weights['sha256']} of pretrained "
            f"'{item.name}': a damaged file or other weights{again}"
        )
    return path


def as_url(location: str) -> str:
    """A URL for ``location``: itself if it has a scheme, else a ``file://`` URL of the path."""
    return location if "://" in location else Path(location).expanduser().resolve().as_uri()


def fetch(item: Entry, target: Path) -> None:
    """Download the hosted weights of ``item`` into ``target``: into a temporary folder beside it
    first, moved into place only once its SHA-256 is the entry's (a failure leaves nothing).

    Raises:
        FileNotFoundError: the URL cannot be read (offline: copy the file to ``target``), or
            names a repository file that this installation, not a clone, lacks.
        OSError: the download's SHA-256 is not the entry's (it is discarded).
    """
    url = item.weights["url"]
    if item.in_repository:  # not in this installation: it is not a clone
        raise FileNotFoundError(
            f"pretrained '{item.name}': its weights are committed to the pyro-dvae repository as "
            f"{url}, which is not under {REPOSITORY}: install from a clone of the repository, "
            f"or copy that file to {target}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staged = Path(tmp) / target.name
        try:
            urllib.request.urlretrieve(as_url(url), staged)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"Could not download pretrained '{item.name}' from {url} ({err}). Offline? Copy "
                f"its weights file to {target}."
            ) from err
        digest = sha256_file(staged)
        if digest != item.weights["sha256"]:
            raise OSError(
                f"{url}: SHA-256 mismatch for pretrained '{item.name}' (got {digest}, expected "
                f"{item.weights['sha256']}); the download was discarded"
            )
        os.replace(staged, target)
    log.info("pretrained %s: fetched %s into %s", item.name, url, target)


@dataclass(frozen=True)
class DataShape:
    """What :func:`runner.build_model_for` needs of a task to size a model."""

    modality: str
    x_dim: int


def build(
    config: dict, x_dim: int, weights: dict, where: str, device: torch.device | str = "cpu"
) -> DVAE:
    """The model of a run's ``config`` for data of ``x_dim`` features with ``weights`` (a state
    dict), in evaluation mode; ``where`` names the weights in errors."""
    cfg = OmegaConf.create(config)
    plugins.prepare(cfg)
    model = runner.build_model_for(cfg, DataShape(cfg.data.modality, x_dim)).to(device)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:  # missing, unexpected or mis-shaped weights
        raise ValueError(
            f"{where} does not hold the weights of the model of its config: {err}"
        ) from err
    return model.eval()


def load(name: str, device: torch.device | str = "cpu") -> DVAE:
    """The pretrained model ``name`` on ``device``, in evaluation mode (no data are read)."""
    item = entry(name)
    path = weights_path(item)
    return build(item.config, item.x_dim, load_checkpoint(path, device)["model"], str(path), device)


@contextmanager
def located() -> Iterator[dict[str, Path]]:
    """Within it, every folder that the data layer locates (:func:`sources.locate`, e.g.
    ``jsb_chorales``) is recorded in the dict it yields, subdir → folder."""
    found: dict[str, Path] = {}
    locate = sources.locate

    def recording(subdir: str, *args, **kwargs) -> Path:
        found[subdir] = locate(subdir, *args, **kwargs)
        return found[subdir]

    sources.locate = recording
    try:
        yield found
    finally:
        sources.locate = locate


def data_checksum(subdir: str, folder: Path) -> dict:
    """The data layer's checksum of the source folder ``subdir``: the SHA-256 of the file of a
    single-file release (:data:`sources.FILE_RELEASES`), :func:`sources.tree_digest` of the
    folder of an archive release (:data:`sources.RELEASES`), else of the whole folder."""
    if subdir in sources.FILE_RELEASES:
        name = sources.FILE_RELEASES[subdir].name
        return {"file": name, "sha256": sha256_file(folder / name)}
    inner = sources.RELEASES[subdir].member_as if subdir in sources.RELEASES else "."
    return {"folder": inner, "tree_digest": sources.tree_digest(folder / inner)}


def build_task_recorded(cfg: DictConfig) -> tuple[Task, dict]:
    """The task of ``cfg.data`` and the checksums (:func:`data_checksum`) of the folders it
    read, subdir → checksum (empty for simulated data)."""
    with located() as found:
        task = build_task(**cfg.data)
    return task, {subdir: data_checksum(subdir, folder) for subdir, folder in found.items()}


@torch.no_grad()
def standard_errors(model: DVAE, task: Task, num_samples: int, device: torch.device) -> dict:
    """Monte Carlo standard errors of :func:`runner.test_log_likelihood`'s three estimators with
    K = ``num_samples`` ≥ 2 draws per test sequence, from K fresh draws per sequence.

    With the K log-weights ``log w_k`` of a sequence of L steps: the ELBO's variance is
    var_k(log w_k) / K; the IWAE's, log mean_k w_k, by the delta method, var_k(w̃_k) / K with
    w̃ = w / mean w (``softmax(log w)·K``). Sequences are independent, so variances add:
    ``elbo_per_step`` SE = √(Σ var) / Σ L, ``elbo_per_sequence_step`` SE = √(Σ var / L²) / N,
    ``nll_per_step`` SE = √(Σ var_IWAE) / Σ L. Computed in float64.
    """
    K, steps = num_samples, 0
    var_elbo = var_sequence = var_iwae = 0.0
    for i in range(len(task.test)):
        x, mask = on_device(task.test.batch(torch.tensor([i])), device)
        log_w = importance_log_weights(model, x, K, mask, runner.IWAE_MAX_BATCH)[:, 0].double()
        length = x.shape[1] if mask is None else int(mask.sum())
        elbo = log_w.var().item() / K
        var_elbo += elbo
        var_sequence += elbo / length**2
        var_iwae += (torch.softmax(log_w, 0) * K).var().item() / K
        steps += length
    errors = (
        math.sqrt(var_elbo) / steps,
        math.sqrt(var_sequence) / len(task.test),
        math.sqrt(var_iwae) / steps,
    )
    return dict(zip(MONTE_CARLO, errors, strict=True))


def tolerance(standard_error: float) -> float:
    """How far an evaluation's sampled bound may lie from its recorded value by chance
    (:data:`Z_TOLERANCE`)."""
    return Z_TOLERANCE * math.sqrt(2) * standard_error


def rounding(value: float) -> float:
    """How far an evaluation's float metric may lie from its recorded ``value`` by rounding
    (:data:`ROUNDING_ULPS` float32 unit roundoffs of it)."""
    return ROUNDING_ULPS * FLOAT32_ROUNDOFF * abs(value)


def differences(item: Entry, results: dict) -> list[str]:
    """Where ``results`` differ from the entry's recorded row, leaf by leaf of the nested
    dicts: a metric of thresholded decisions outside its range under rounding (the task's
    :data:`~pyro_dvae.data.base.ROUNDING_INTERVALS` in ``results``), a :data:`MONTE_CARLO`
    bound by more than :func:`tolerance` (or :func:`rounding`, if larger), another float by
    more than :func:`rounding`, anything else (counts, names) at all; :data:`TIMINGS` and the
    intervals themselves are not compared."""
    intervals = results.get(ROUNDING_INTERVALS, {})
    recorded, now = flatten(item.results), flatten(results)
    found = []
    for key in sorted(set(recorded) | set(now)):
        a, b = recorded.get(key), now.get(key)
        if key in TIMINGS or key.startswith(f"{ROUNDING_INTERVALS}.") or a == b:
            continue
        if key in intervals and a is not None:
            low, high = intervals[key]
            if not low <= a <= high:
                found.append(f"{key}: {b!r}, recorded {a!r} outside [{low!r}, {high!r}]")
            continue
        if isinstance(a, float) and isinstance(b, float):
            se = item.standard_errors.get(key)
            allowed = max(rounding(a), 0.0 if se is None else tolerance(se))
            if abs(b - a) <= allowed:
                continue
            found.append(f"{key}: {b!r}, recorded {a!r} ± {allowed:.3g}")
        else:
            found.append(f"{key}: {b!r}, recorded {a!r}")
    return found


def report(name: str, results: dict) -> str:
    """One line: whether ``results`` reproduce the recorded row of ``name`` (:func:`differences`),
    or where they differ."""
    found = differences(entry(name), results)
    if not found:
        return f"pretrained {name}: reproduces its recorded row"
    return f"pretrained {name}: differs from its recorded row in {'; '.join(found)}"


def evaluate(
    name: str,
    out_dir: Path,
    device: torch.device,
    sample: bool = False,
    n_examples: int = 4,
    mode: str = "teacher_forcing",
    iwae_samples: int | None = None,
) -> dict:
    """Evaluate the pretrained model ``name`` on its test set as :func:`runner.evaluate` does a
    run, writing ``results.json``, ``results.md`` and ``eval/`` into ``out_dir``.

    ``iwae_samples`` None: the K of the recorded row. Epochs, best epoch and seconds per epoch
    are the recorded row's. Data whose checksums differ from the entry's are a warning (the row
    cannot be reproduced on them)."""
    runner.check_mode(mode)
    item = entry(name)
    model = load(name, device)
    cfg = OmegaConf.create(item.config)
    task, checksums = build_task_recorded(cfg)
    if checksums != item.data:
        log.warning(
            "pretrained %s: the data differ from those it was trained on (%s here, %s recorded); "
            "its recorded row will not be reproduced",
            name,
            checksums,
            item.data,
        )
    if iwae_samples is None:
        iwae_samples = item.results.get("iwae_samples")
    summary = runner.run_summary(cfg, None, "best", sample, training=item.results)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return runner.evaluate_model(
        cfg, task, model, Path(out_dir), device, summary, sample, n_examples, mode, iwae_samples
    )


def add(
    name: str,
    run_dir: Path,
    url: str | None = None,
    description: str = "",
    hosted_dir: Path = Path("outputs/zoo"),
) -> tuple[Entry, Path]:
    """Add the finished, evaluated run ``run_dir`` to the zoo as ``name``: its best weights
    (stripped to ``{"model": state_dict}``), config, results row with the standard errors of
    its sampled bounds, data checksums and the weights' SHA-256.

    The weights ship (``ZOO/<name>.pt``) when no ``url`` is given and they fit
    :data:`SHIP_MAX_BYTES` and :data:`SHIP_TOTAL_BYTES`; with a ``url`` they are written to
    ``hosted_dir/<name>.pt``, to be uploaded there. Returns the entry and its weights file.

    Raises:
        ValueError: a bad or taken name, a run that is not evaluated from its best weights, has
            plugins, or whose weights are too large to ship without a ``url`` (the file is
            then left in ``hosted_dir`` for upload).
    """
    run_dir = Path(run_dir)
    check_new_name(name)
    cfg, results = read_evaluated_run(run_dir)
    best = run_dir / "best.pt"
    weights = {key: value.clone() for key, value in load_checkpoint(best)["model"].items()}
    task, checksums = build_task_recorded(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    model = build(config, task.x_dim, weights, str(best))
    K = results.get("iwae_samples") or 0
    if cfg.get("threads"):  # as runner.evaluate_model: the run's own CPU threads
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    errors = standard_errors(model, task, K, torch.device("cpu")) if K >= 2 else {}
    path = write_weights(name, weights, url is None, Path(hosted_dir))
    size = path.stat().st_size
    item = Entry(
        name=name,
        description=description,
        x_dim=task.x_dim,
        config=config,
        results=results,
        standard_errors=errors,
        data=checksums,
        weights={"sha256": sha256_file(path), "bytes": size, "url": url},
        training=read_wall(run_dir),
        made_with={
            "torch": torch.__version__,
            "pyro": pyro.__version__,
            "python": platform.python_version(),
        },
    )
    (ZOO / f"{name}.json").write_text(json.dumps(asdict(item), indent=2) + "\n")
    return item, path


def check_new_name(name: str) -> None:
    """A ``ValueError`` unless ``name`` is a valid, unused entry name."""
    if not NAME.fullmatch(name):
        raise ValueError(f"NAME={name!r}: expected lower-case letters, digits, '.', '_' or '-'")
    if name in names():
        raise ValueError(
            f"NAME={name!r}: already in the zoo ({ZOO / name}.json); remove that entry first"
        )


def read_evaluated_run(run_dir: Path) -> tuple[DictConfig, dict]:
    """The config and results row of a run evaluated from its best weights.

    Raises:
        ValueError: no config, weights or results, results of the last weights, or plugins.
    """
    for file in ("config.yaml", "best.pt", "results.json"):
        if not (run_dir / file).is_file():
            raise ValueError(
                f"{run_dir / file}: missing; add a finished run evaluated with "
                f"python experiments/evaluate.py run_dir={run_dir}"
            )
    cfg = OmegaConf.load(run_dir / "config.yaml")
    results = json.loads((run_dir / "results.json").read_text())
    if results.get("checkpoint") != "best":
        raise ValueError(
            f"{run_dir / 'results.json'}: evaluated with checkpoint={results.get('checkpoint')}; "
            "the zoo keeps the best weights: evaluate with checkpoint=best"
        )
    if cfg.get("plugins"):
        raise ValueError(
            f"{run_dir / 'config.yaml'}: plugins={list(cfg.plugins)}; a pretrained model must "
            "be built from the package alone"
        )
    return cfg, results


def write_weights(name: str, weights: dict, ship: bool, hosted_dir: Path) -> Path:
    """Write ``{"model": weights}`` as ``ZOO/<name>.pt`` (``ship``) or ``hosted_dir/<name>.pt``.
    The bytes depend on the weights alone, not on the file's name (``torch.save`` to memory).

    Raises:
        ValueError: weights to ``ship`` that exceed :data:`SHIP_MAX_BYTES`, or
            :data:`SHIP_TOTAL_BYTES` with those shipped already; the file is then written to
            ``hosted_dir`` and the message says to host it.
    """
    buffer = io.BytesIO()
    torch.save({"model": weights}, buffer)
    size, shipped = buffer.tell(), sum(p.stat().st_size for p in ZOO.glob("*.pt"))
    fits = size <= SHIP_MAX_BYTES and shipped + size <= SHIP_TOTAL_BYTES
    target = (ZOO if ship and fits else hosted_dir) / f"{name}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(target) as staged:
        staged.write_bytes(buffer.getvalue())
    if ship and not fits:
        raise ValueError(
            f"{name}: its weights are {size / 2**20:.2f} MiB (shipped ones: at most "
            f"{SHIP_MAX_BYTES / 2**20:.0f} MiB each, {SHIP_TOTAL_BYTES / 2**20:.0f} MiB in all, "
            f"{shipped / 2**20:.2f} MiB now): host {target} and add it with --url URL"
        )
    return target


def read_wall(run_dir: Path) -> dict:
    """The run's ``wall.json`` (wall seconds and sessions of a long run), or ``{}``."""
    path = run_dir / "wall.json"
    return json.loads(path.read_text()) if path.is_file() else {}

"""What the scripts of ``experiments/`` share at the command line: user errors as one line.

A user's mistake (a missing or empty folder, an unknown key, guide or dataset, a data root
offline) surfaces as a ``ValueError`` or ``OSError`` whose message names the key or file. The
scripts print that message alone and exit with status 2, instead of Hydra's chained traceback;
``HYDRA_FULL_ERROR=1`` shows the traceback. A misspelled key (``train.epoch=3``) is caught
before Hydra answers with its advice to add the key (``+train.epoch=3``), which would send the
user the wrong way: the error names the closest existing key instead.
"""

from __future__ import annotations

import difflib
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pyro_dvae.collect import flatten

USER_ERRORS = (ValueError, OSError)
"""Exceptions whose message is meant for the user (it names the key or file)."""
EXIT_USER_ERROR = 2
HYDRA_SCAFFOLD = {".hydra"}
"""What Hydra writes into a run directory before the script starts (besides ``*.log``)."""


def full_traceback() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def fail(message: str) -> None:
    """Print ``error: message`` (and how to see the traceback) to stderr; exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    print("(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


@contextmanager
def user_errors(run_dir: Path | None = None) -> Iterator[None]:
    """Turn :data:`USER_ERRORS` into one line and exit status 2 (unless ``HYDRA_FULL_ERROR=1``).

    ``run_dir``: a run directory this command may have created; if it holds nothing but
    Hydra's scaffolding (``.hydra/``, empty or log files) when an error ends the command, it is
    removed, so a failed run leaves no empty run directory behind."""
    try:
        yield
    except USER_ERRORS as err:
        if run_dir is not None:
            remove_if_scaffold(Path(run_dir))
        if full_traceback():
            raise
        fail(str(err))


def remove_if_scaffold(run_dir: Path) -> bool:
    """Remove ``run_dir`` if it holds only Hydra's scaffolding; returns whether it did."""
    if not run_dir.is_dir():
        return False
    for entry in run_dir.iterdir():
        if entry.name not in HYDRA_SCAFFOLD and entry.suffix != ".log":
            return False
    shutil.rmtree(run_dir)
    return True


def unknown_override(cfg: DictConfig, overrides: Sequence[str]) -> str | None:
    """The message for the first ``key=value`` override whose key does not exist in ``cfg``
    (composed without it), naming the closest existing key; None when every key exists.

    Overrides that add (``+key``) or delete (``~key``) are not checked, nor Hydra's own
    (``hydra.*``, ``hydra/launcher=...``) or nested group choices (``a/b=c``); a config-group
    choice (``model=dkf``) is a key of ``cfg``."""
    leaves = list(flatten(OmegaConf.to_container(cfg, resolve=False)))
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or key[:1] in "+~" or key.split(".")[0].split("/")[0] == "hydra" or "/" in key:
            continue
        if key in leaves or isinstance(OmegaConf.select(cfg, key, default=None), DictConfig):
            continue
        section = _section(key)
        siblings = [leaf for leaf in leaves if _section(leaf) == section]
        close = difflib.get_close_matches(key, siblings or leaves, n=1, cutoff=0.75)
        if close:
            return f"{key}: no such key; did you mean {close[0]}={value}?"
        if not siblings:
            return f"{key}: no such key (there is no section {section})"
        names = ", ".join(sorted(leaf.rsplit(".", 1)[-1] for leaf in siblings))
        return f"{key}: no such key; the keys of {section or 'the top level'} are {names}"
    return None


def _section(key: str) -> str:
    """``train`` for ``train.epochs``; ``""`` for a top-level key."""
    return key.rsplit(".", 1)[0] if "." in key else ""


def check_overrides(config_dir: Path, config_name: str, argv: Sequence[str]) -> None:
    """Before Hydra starts: a ``key=value`` of the command line whose key is not in the
    configuration is one line naming the closest key (exit 2). Multirun sweeps and calls with
    Hydra flags other than ``--config-dir`` are left to Hydra."""
    args, folders = list(argv), [config_dir]
    for flag in ("--config-dir", "-cd"):
        while flag in args:
            i = args.index(flag)
            folders.append(Path(args[i + 1]).resolve())
            del args[i : i + 2]
    if any(a.startswith("-") for a in args):
        return
    overrides = [a for a in args if "=" in a]
    groups = [  # config-group choices, added ones (+experiment=...) too
        a for a in overrides if any((f / a.partition("=")[0].lstrip("+")).is_dir() for f in folders)
    ]
    if len(folders) > 1:
        search = ",".join(f"file://{folder}" for folder in folders[1:])
        groups.append(f"hydra.searchpath=[{search}]")
    cfg = _compose(config_dir, config_name, groups)
    message = cfg if isinstance(cfg, str) else cfg and unknown_override(cfg, overrides)
    if message:
        fail(message)


def _compose(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig | str | None:
    """The composed config; a one-line message for a config-group option with no YAML file;
    None when composing fails otherwise (Hydra then reports it itself)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException

    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)
    except MissingConfigException as err:
        if not err.missing_cfg_file or "/" not in err.missing_cfg_file or not err.options:
            return None
        group, name = err.missing_cfg_file.rsplit("/", 1)
        return (
            f"{group}={name}: no {group}/{name}.yaml; expected one of {', '.join(err.options)}. "
            f"A config of your own: put {group}/{name}.yaml in a folder and add --config-dir FOLDER"
        )
    except (HydraException, ValueError, OSError):
        return None


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def check_command_line(config_name: str) -> None:
    """:func:`check_overrides` of this process's command line against ``configs/``."""
    check_overrides(CONFIG_DIR, config_name, sys.argv[1:])

"""User code for every registry: ``plugins=[my_pkg.priors, laplace.py]``.

Models, guides, priors, likelihoods and datasets are found by name in registries
(:class:`~pyro_dvae.registry.Registry`) that decorators fill when their module is imported:
``register_model``, ``register_guide`` (DKF), ``register_transition``, ``register_likelihood``,
``register_task``. The top-level ``plugins`` key lists the user's modules to import before
anything is built, each one

* a module name (``my_pkg.priors``), looked up on ``sys.path`` and then in the current
  directory (the folder the user runs ``python /path/to/experiments/run.py`` from), or
* the path of a ``.py`` file, imported as the module named after the file.

The run's config records a ``.py`` file, and a single-file module found in the current
directory, by its absolute path, so ``evaluate.py`` and ``generate.py`` find it from any folder.

:func:`prepare` does that, and then refuses names that are not registered or that do not fit
the model (``model=vrnn guide=dks``) before any data are read.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig, ListConfig, OmegaConf

from pyro_dvae.data import find_task
from pyro_dvae.likelihoods import LIKELIHOODS
from pyro_dvae.models import check_choices


def import_plugin(spec: str) -> ModuleType:
    """Import one plugin: a ``.py`` file path or a module name (module docstring).

    Raises:
        ValueError: a missing file, a module that cannot be found, or a file whose name is
            already taken by another module, naming the ``plugins`` entry.
    """
    if spec.endswith(".py"):
        return _import_file(Path(spec).expanduser().resolve())
    return import_module(spec, "plugins", " or the path of a .py file")


def import_module(name: str, key: str, alternative: str = "") -> ModuleType:
    """Import the module ``name`` given as the config ``key``, looked up on ``sys.path`` and then
    in the current directory.

    Raises:
        ValueError: naming ``key`` and where the module was looked for, when ``name`` itself
            cannot be found (a module that is found but imports a missing one raises that
            ``ModuleNotFoundError`` unchanged).
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is None or not (name == err.name or name.startswith(f"{err.name}.")):
            raise  # the module itself imports something that is missing
        raise ValueError(
            f"{key}: cannot import {name!r} ({err}); give a module found in {cwd} or on "
            f"PYTHONPATH{alternative}"
        ) from None


def _import_file(path: Path) -> ModuleType:
    """The module of the file ``path``, named after its stem, imported once."""
    if not path.is_file():
        raise ValueError(f"plugins: {path} is not a file")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        if getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path:
            return loaded
        raise ValueError(
            f"plugins: {path} would be imported as {name!r}, which is already the module "
            f"{getattr(loaded, '__file__', None) or name}; rename the file"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def plugin_list(value: object) -> list[str]:
    """The ``plugins`` value as a list of entries (a single string is one entry); ``.py``
    paths made absolute."""
    if value is None:
        return []
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, (list, tuple, ListConfig)) or not all(
        isinstance(e, str) for e in entries
    ):
        raise ValueError(f"plugins={value!r}: expected a list of module names or .py paths")
    return [str(Path(e).expanduser().resolve()) if e.endswith(".py") else e for e in entries]


def load_plugins(entries: Iterable[str]) -> list[ModuleType]:
    """Import every entry of ``plugins`` (:func:`import_plugin`), in order."""
    return [import_plugin(entry) for entry in entries]


def recorded(entry: str, module: ModuleType) -> str:
    """How a run's config records the plugin ``entry``: a single-file module of the current
    directory by its absolute path (found again from any folder), anything else as given."""
    path = Path(getattr(module, "__file__", None) or "")
    in_cwd = path.suffix == ".py" and path.parent == Path.cwd()
    return str(path) if "." not in entry and path.stem == entry and in_cwd else entry


def prepare(cfg: DictConfig, run_dir: Path | None = None) -> None:
    """Import ``cfg.plugins`` (with ``resume``, those of the run in ``run_dir`` too), record
    them in ``cfg`` as a run keeps them (:func:`recorded`), and check the names that ``cfg``
    selects: model, guide and prior together (:func:`~pyro_dvae.models.check_choices`),
    likelihood and data.

    Call it before any data are read: a wrong name costs nothing then.

    Raises:
        ValueError: one line naming the key, the valid choices and how to register one.
    """
    entries = plugin_list(cfg.get("plugins"))
    modules = load_plugins(entries)
    if "plugins" in cfg:
        cfg.plugins = [recorded(e, module) for e, module in zip(entries, modules, strict=True)]
    saved = Path(run_dir or "") / "config.yaml"
    if cfg.get("resume") and run_dir is not None and saved.is_file():
        load_plugins(plugin_list(OmegaConf.load(saved).get("plugins")))
    check_choices(
        cfg.model.name,
        OmegaConf.select(cfg, "guide.name", default=None),
        OmegaConf.select(cfg, "prior.name", default=None),
    )
    likelihood = OmegaConf.select(cfg, "likelihood.name", default=None)
    if likelihood is not None:
        LIKELIHOODS.lookup(likelihood)
    module = cfg.data.get("module")
    if module:
        import_module(module, "data.module")
    find_task(cfg.data.name, module)

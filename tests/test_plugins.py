"""User code from outside the library: ``plugins=[...]``, the registries' errors, the README's
worked examples run from a folder outside the repository, and the checks that a guide or prior
fits the model (before any data are read) and has ``rsample`` (when the model is built)."""

import importlib
import os
import pkgutil
import re
import shlex
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest
import torch
from pyro.distributions import (
    Categorical,
    MixtureOfDiagNormals,
    MixtureSameFamily,
    Normal,
)
from torch import nn

import pyro_dvae
from pyro_dvae import plugins, runner
from pyro_dvae.data import TASKS
from pyro_dvae.distributions import IndependentTrajectory
from pyro_dvae.likelihoods import LIKELIHOODS, ExponentialPower, build_likelihood
from pyro_dvae.models import CHOICES, MODELS, build_model, check_choices
from pyro_dvae.models.dkf import GUIDES, register_guide
from pyro_dvae.models.priors import TRANSITIONS, Transition, build_transition, register_transition
from pyro_dvae.train import load_checkpoint
from tests.helpers import compose_config

ROOT = Path(__file__).resolve().parents[1]
QUICK = [
    "train.epochs=1", "data.max_files=8", "threads=1", "train.progress=false",
    "train.warmup_every=0", "train.batch_size=8",
]  # fmt: skip
"""A tiny training in which the prior is in the loss from the first step (KL weight 1)."""


@pytest.fixture(scope="module", autouse=True)
def _whole_library():
    """Every module of the library imported before any test, so that a module a test imports
    first is user code (or an installed package): the library's own modules register their
    models, guides and tasks once, when imported, and must stay imported."""
    for module in pkgutil.walk_packages(pyro_dvae.__path__, "pyro_dvae."):
        importlib.import_module(module.name)


@pytest.fixture(autouse=True)
def _registries():
    """Every registry, and the modules imported, as they were before the test: the user code
    a test imported (its plugins) is forgotten; an installed package it imported first stays
    (numpy's C extensions, e.g., cannot be loaded twice in one process)."""
    registries = (MODELS, CHOICES, GUIDES, TRANSITIONS, LIKELIHOODS, TASKS)
    saved = [dict(r) for r in registries]
    modules, path = set(sys.modules), list(sys.path)
    yield
    for registry, entries in zip(registries, saved, strict=True):
        registry.clear()
        registry.update(entries)
    for name in set(sys.modules) - modules:
        if not _installed(sys.modules[name]):
            del sys.modules[name]
    sys.path[:] = path


INSTALLED = tuple(
    {
        Path(sysconfig.get_path(key)).resolve()
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
    }
)


def _installed(module: types.ModuleType) -> bool:
    """Whether ``module`` is built in, the standard library's or an installed package's (not a
    plugin's file or namespace package)."""
    file = getattr(module, "__file__", None)
    places = [file] if file else list(getattr(module, "__path__", []))
    if not places:
        return True  # built into the interpreter
    return all(
        any(Path(place).resolve().is_relative_to(root) for root in INSTALLED) for place in places
    )


def extending_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Extending\n") : text.index("## Benchmarks\n")]


def readme_files() -> dict[str, str]:
    """The code blocks of the README's Extending section whose first line names a file."""
    blocks = re.findall(r"```(?:python|yaml)\n(.*?)```", extending_section(), re.S)
    return {
        m.group(1): block for block in blocks if (m := re.match(r"# (\S+\.(?:py|yaml))", block))
    }


def readme_commands() -> list[list[str]]:
    """The README's ``python /path/to/pyro-dvae/...`` command lines, with this repository."""
    lines = re.findall(r"^python /path/to/pyro-dvae/(.*)$", extending_section(), re.M)
    return [[sys.executable, *shlex.split(str(ROOT / line))] for line in lines]


def test_the_readme_examples_are_the_files_in_examples():
    files = readme_files()
    expected = {"laplace.py", "prior/laplace.yaml", "gru_filter.py", "guide/gru_filter.yaml"}
    assert set(files) == expected
    for name, text in files.items():
        assert (ROOT / "examples" / name).read_text() == text, name


def test_the_readme_examples_train_from_a_folder_outside_the_repository(data_root, tmp_path):
    folder, elsewhere = tmp_path / "my_dvae", tmp_path / "elsewhere"
    for name, text in readme_files().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    elsewhere.mkdir()
    prior_cmd, guide_cmd = readme_commands()
    assert "'plugins=[laplace]'" in shlex.join(prior_cmd) and "prior=laplace" in prior_cmd

    def train(command: list[str], run_dir: Path) -> dict[str, torch.Tensor]:
        done = subprocess.run(
            [*command, *QUICK, f"hydra.run.dir={run_dir}"], cwd=folder, capture_output=True,
            text=True, env=os.environ.copy(), timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return load_checkpoint(run_dir / "last.pt")["model"]

    prior_run = tmp_path / "prior_run"
    weights = train(prior_cmd, prior_run)
    assert "prior.loc_linear.weight" not in weights  # not the default gated transition
    # log_b starts at 0. One batch, one epoch: one Adam step of lr·|g|/(|g| + 1e-8) per entry,
    # above lr/2 = 1e-3 (DKF's speech lr 2e-3) for any gradient |g| > 1e-8
    assert (weights["prior.log_b"].abs() > 1e-3).all()
    # the run records the plugin by its absolute path: generate.py imports it from anywhere
    assert f"- {folder / 'laplace.py'}" in (prior_run / "config.yaml").read_text()
    done = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "generate.py"), f"run_dir={prior_run}",
         "n=2", "T=8"], cwd=elsewhere, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(list((prior_run / "generated").glob("*.wav"))) == 2

    weights = train(guide_cmd, tmp_path / "guide_run")
    assert "inference.mlp_x_gx.0.weight" not in weights  # not the default DKS guide
    assert weights["inference.rnn.weight_ih_l0"].shape[1] == 257  # FSDD's bins into the GRU
    assert (weights["inference.log_s"].abs() > 1e-3).all()  # from 0, as log_b above


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model=vrnn", "guide=dks"], r"^guide\.name='dks' is not a guide of model=vrnn; "
                                      r"expected one of \['filter'\]$"),
        (["model=vae", "prior=gated"], r"^prior\.name='gated': model=vae has a single prior, its "
                                       r"own; expected prior=default$"),
        (["model=dkf", "guide=smoother"], r"^guide\.name='smoother' is not a guide of DKF; "
                                          r"expected one of \[.*'dks'.*\]\. To add one, decorate "
                                          r"it with @register_guide\('smoother'\)"),
        (["prior.name=laplace"], r"^prior\.name='laplace' is not a Markov prior; expected one of "
                                 r"\['gated', 'linear', 'student_t'\]\. To add one, decorate it "
                                 r"with @register_transition\('laplace'\) \(from "
                                 r"pyro_dvae\.models\.priors import register_transition\) .*"
                                 r"plugins=\[your_module\]$"),
        (["likelihood.name=poisson"], r"^likelihood\.name='poisson' is not a likelihood; .*"
                                      r"@register_likelihood\('poisson'\)"),
        (["+data.module=absent_data"], r"^data\.module: cannot import 'absent_data' \(No module "
                                       r"named 'absent_data'\); give a module found in .* or on "
                                       r"PYTHONPATH$"),
    ],
)  # fmt: skip
def test_a_name_that_does_not_fit_is_refused_before_any_data(
    overrides, message, tmp_path, monkeypatch
):
    def build_task(**_):
        raise AssertionError("data were built")

    monkeypatch.setattr(runner, "build_task", build_task)
    cfg = compose_config([*overrides, f"data.root={tmp_path / 'missing'}"])
    with pytest.raises(ValueError, match=message):
        runner.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_plugins_are_a_file_or_a_module_of_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "heavy.py").write_text(
        "from pyro_dvae.likelihoods import ExponentialPower, register_likelihood\n\n\n"
        "@register_likelihood('heavy')\n"
        "class Heavy(ExponentialPower):\n"
        "    def __init__(self, x_dim, bins_seen=None):\n"
        "        super().__init__(x_dim)\n"
        "        self.bins_seen = bins_seen or x_dim\n"
    )
    (tmp_path / "broken.py").write_text("import not_installed_anywhere\n")
    monkeypatch.chdir(tmp_path)
    module = plugins.import_plugin("heavy")  # found in the current folder
    assert plugins.import_plugin(str(tmp_path / "heavy.py")) is module  # the same module, once
    assert plugins.recorded("heavy", module) == str(tmp_path / "heavy.py")
    assert plugins.recorded("pyro_dvae.likelihoods", sys.modules["pyro_dvae.likelihoods"]) == (
        "pyro_dvae.likelihoods"
    )
    likelihood = build_likelihood("heavy", "speech", 5)
    assert type(likelihood).__name__ == "Heavy" and likelihood.bins_seen == 5
    with pytest.raises(ValueError, match=r"^likelihood\.options=\{'nope': 1\}: not options"):
        build_likelihood("heavy", "speech", 5, nope=1)
    with pytest.raises(ValueError, match=r"^plugins: cannot import 'absent' .* or the path of"):
        plugins.import_plugin("absent")
    with pytest.raises(ValueError, match=r"^plugins: .*absent\.py is not a file$"):
        plugins.import_plugin("absent.py")
    with pytest.raises(ModuleNotFoundError, match="not_installed_anywhere"):  # not masked
        plugins.import_plugin("broken")
    (tmp_path / "shlex.py").write_text("")
    with pytest.raises(ValueError, match=r"shlex\.py would be imported as 'shlex', which is "):
        plugins.import_plugin("shlex.py")


def test_prepare_imports_the_plugins_and_records_them(tmp_path, monkeypatch):
    (tmp_path / "walk.py").write_text(
        "from pyro_dvae.models.priors import LinearTransition, register_transition\n\n\n"
        "@register_transition('walk')\n"
        "class Walk(LinearTransition):\n"
        "    pass\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = compose_config(["plugins=[walk]", "prior.name=walk"])
    plugins.prepare(cfg)
    assert list(cfg.plugins) == [str(tmp_path / "walk.py")]
    assert type(build_transition("walk", 3)).__name__ == "Walk"


class MixtureTransition(Transition):
    """p(z_t | z_{t−1}) a two-component Gaussian mixture per dimension (no rsample)."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.locs = nn.Parameter(torch.tensor([-1.0, 1.0]).repeat(z_dim, 1))

    def forward(self, z_prev):
        locs = z_prev.unsqueeze(-1) + self.locs  # (..., L, 2)
        mixture = Categorical(logits=torch.zeros_like(locs))
        return MixtureSameFamily(mixture, Normal(locs, 1.0)).to_event(1)


class DiagMixtureTransition(Transition):
    """The same mixture over the whole z_t, as ``MixtureOfDiagNormals`` (with rsample)."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.locs = nn.Parameter(torch.stack([-torch.ones(z_dim), torch.ones(z_dim)]))

    def forward(self, z_prev):
        locs = z_prev.unsqueeze(-2) + self.locs  # (..., 2, L)
        return MixtureOfDiagNormals(locs, torch.ones_like(locs), locs.new_zeros(locs.shape[:-1]))


def test_a_prior_step_without_rsample_is_refused_naming_the_class():
    register_transition("test_mixture")(MixtureTransition)
    register_transition("test_diag_mixture")(DiagMixtureTransition)
    message = (
        r"^prior\.name='test_mixture': MixtureTransition returns a step distribution "
        r"Independent\(MixtureSameFamily\), which has no rsample; .*MixtureOfDiagNormals\)$"
    )
    with pytest.raises(ValueError, match=message):
        build_transition("test_mixture", 4)
    with pytest.raises(ValueError, match=message):
        build_model("dkf", 6, ExponentialPower(), prior="test_mixture", z_dim=4)
    # the mixture the message suggests builds, and the model generates from it
    model = build_model("dkf", 6, ExponentialPower(), prior="test_diag_mixture", z_dim=4)
    with torch.no_grad():
        x = model.generate(3, 5)
    assert x.shape == (3, 5, 6) and torch.isfinite(x).all()


def test_a_guide_step_without_rsample_is_refused_naming_the_class():
    @register_guide("test_mixture")
    class MixtureGuide(nn.Module):
        def __init__(self, x_dim, z_dim, **_) -> None:
            super().__init__()
            self.loc = nn.Linear(x_dim, 2 * z_dim)

        def forward(self, x):
            locs = self.loc(x).unflatten(-1, (-1, 2))  # (B, T, L, 2)

            def family(locs):
                mixture = Categorical(logits=torch.zeros_like(locs))
                return MixtureSameFamily(mixture, Normal(locs, 1.0)).to_event(1)

            return IndependentTrajectory(family, locs)

    check_choices("dkf", guide="test_mixture")
    with pytest.raises(ValueError, match=r"^guide\.name='test_mixture': MixtureGuide returns a "):
        build_model("dkf", 6, ExponentialPower(), guide="test_mixture", z_dim=4)

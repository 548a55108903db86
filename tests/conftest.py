"""Shared fixtures. Tests that need real data read it from ``$PYRO_DVAE_DATA``; without it they
skip, and the end of the run says how many and why (:func:`pytest_terminal_summary`)."""

import os
from collections import Counter
from pathlib import Path

import pyro
import pytest
import torch

pytest_plugins = ["pytester"]  # tests/test_conftest.py runs pytest on small test files

# One thread: tiny test models spend their time in thread synchronisation otherwise, and a
# busy machine makes that far worse.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_validate():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    torch.manual_seed(0)
    yield


def missing_data() -> str | None:
    """Why the tests that read real data cannot run (``PYRO_DVAE_DATA`` unset, or not naming a
    folder), or None when they can."""
    root = os.environ.get("PYRO_DVAE_DATA")
    if not root:
        return "PYRO_DVAE_DATA is not set (the shared data folder, e.g. ../shared/data)"
    if not Path(root).is_dir():
        return f"PYRO_DVAE_DATA={root} is not a folder"
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared data folder ``$PYRO_DVAE_DATA``; skips the test, saying why, without it."""
    reason = missing_data()
    if reason:
        pytest.skip(reason)
    return Path(os.environ["PYRO_DVAE_DATA"])


@pytest.fixture(autouse=True, scope="session")
def _feature_cache(tmp_path_factory):
    """Keep downloads and feature caches of the whole session in one temporary folder."""
    if "PYRO_DVAE_CACHE" not in os.environ:
        os.environ["PYRO_DVAE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per reason for skipping, with the number of tests it skipped, e.g.
    ``114 tests skipped: PYRO_DVAE_DATA=/x is not a folder``."""
    reasons = Counter(_skip_reason(report) for report in terminalreporter.stats.get("skipped", []))
    for reason, n in reasons.most_common():
        terminalreporter.write_line(f"{n} test{'s' * (n > 1)} skipped: {reason}", yellow=True)


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason a skipped test (or module) gives, without pytest's ``Skipped:`` prefix."""
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")

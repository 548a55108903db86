"""Shared fixtures. Tests that need real data read it from ``$PYRO_DVAE_DATA``."""

import os
from pathlib import Path

import pyro
import pytest
import torch

# One thread: tiny test models spend their time in thread synchronisation otherwise, and a
# busy machine makes that far worse.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_validate():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = os.environ.get("PYRO_DVAE_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("PYRO_DVAE_DATA is not set to the shared data folder")
    return Path(root)


@pytest.fixture(autouse=True, scope="session")
def _feature_cache(tmp_path_factory):
    """Keep downloads and feature caches of the whole session in one temporary folder."""
    if "PYRO_DVAE_CACHE" not in os.environ:
        os.environ["PYRO_DVAE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield

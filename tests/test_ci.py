""".ci/run refuses to start when the data folder it was pointed at is missing: the data tests
would otherwise skip and CI pass without them."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("pointed", [True, False], ids=["PYRO_DVAE_DATA", "default"])
def test_ci_stops_with_one_line_when_the_data_folder_is_missing(pointed, tmp_path):
    """A copy of .ci/run in an empty checkout ``tmp_path/repo``, with a ``python3`` on PATH that
    records any call; the data folder is ``PYRO_DVAE_DATA`` or, unset, ``../shared/data``. Nothing
    is installed or run, and stderr says which folder is missing."""
    (tmp_path / "repo" / ".ci").mkdir(parents=True)
    script = shutil.copy(ROOT / ".ci" / "run", tmp_path / "repo" / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python3 = bin_dir / "python3"
    python3.write_text(f"#!/bin/sh\ntouch {tmp_path / 'python3_called'}\nexit 3\n")
    python3.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYRO_DVAE_DATA"}
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    missing = tmp_path / "no_data" if pointed else tmp_path / "shared" / "data"
    if pointed:
        env["PYRO_DVAE_DATA"] = str(missing)
    done = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f".ci/run: PYRO_DVAE_DATA={missing} is not a folder; set it to the shared data folder "
        "(default: ../shared/data beside the repository)"
    ]
    assert not (tmp_path / "python3_called").exists()
    assert not (tmp_path / "repo" / ".venv").exists()

"""User errors at the command line: one line, exit status 2, nothing left behind."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_dvae import cli
from pyro_dvae.runner import claim_run_dir
from tests.helpers import compose_config

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "run.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


@pytest.fixture(scope="module")
def config():
    return compose_config(["model=dkf"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", "train.epoch: no such key; did you mean train.epochs=3?"),
        (
            "model.speech.zdim=8",
            "model.speech.zdim: no such key; did you mean model.speech.z_dim=8?",
        ),
        ("train.zzz.a=1", "train.zzz.a: no such key (there is no section train.zzz)"),
        ("sed=3", "sed: no such key; did you mean seed=3?"),
    ],
)
def test_a_misspelled_key_names_the_closest_one(config, override, message):
    assert cli.unknown_override(config, ["model=dkf", override]) == message


def test_existing_keys_new_keys_and_hydra_keys_are_not_flagged(config):
    overrides = [
        "train.epochs=3",
        "model.speech.dense_z_x=[8]",
        "+train.new=1",
        "~seed",
        "hydra.run.dir=x",
        "hydra/job_logging=none",
        "seed=1",
        "data.max_files=3",
    ]
    assert cli.unknown_override(config, overrides) is None
    listing = cli.unknown_override(config, ["train.qqqqqqqqq=1"])
    assert listing.startswith("train.qqqqqqqqq: no such key; the keys of train are batch_size, ")


def test_the_command_line_answers_a_misspelled_key_in_one_line(tmp_path):
    done = run_script("train.epoch=3", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == cli.EXIT_USER_ERROR
    assert (
        done.stderr.splitlines()[0]
        == "error: train.epoch: no such key; did you mean train.epochs=3?"
    )
    assert "+train.epoch" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_an_unknown_config_option_says_where_a_config_of_ones_own_goes(tmp_path):
    done = run_script("prior=laplace", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == cli.EXIT_USER_ERROR
    assert done.stderr.splitlines()[0] == (
        "error: prior=laplace: no prior/laplace.yaml; expected one of default, gated, linear, "
        "student_t. A config of your own: put prior/laplace.yaml in a folder and add "
        "--config-dir FOLDER"
    )


def test_a_user_error_is_one_line_and_leaves_no_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    done = run_script(f"data.root={tmp_path / 'missing'}", f"hydra.run.dir={run_dir}")
    assert done.returncode == cli.EXIT_USER_ERROR
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: data.root={tmp_path / 'missing'}: no folder")
    assert len(lines) == 2 and "HYDRA_FULL_ERROR=1" in lines[1]
    assert not run_dir.exists()
    full = run_script(
        f"data.root={tmp_path / 'missing'}", f"hydra.run.dir={run_dir}", HYDRA_FULL_ERROR="1"
    )
    assert full.returncode != 0 and "Traceback" in full.stderr


def test_a_directory_that_holds_a_run_is_not_trained_into_again(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "eval").mkdir(parents=True)
    for name in ("last.pt", "metrics.csv", "results.json", "results.md", "notes.txt"):
        (run_dir / name).write_text("old")
    done = run_script(f"hydra.run.dir={run_dir}", f"data.root={tmp_path / 'missing'}")
    assert done.returncode == cli.EXIT_USER_ERROR
    assert done.stderr.startswith(
        f"error: {run_dir} already holds a run (last.pt, metrics.csv, "
        "results.json): continue it with resume=true, replace it with "
        "overwrite=true"
    )
    assert (run_dir / "last.pt").read_text() == "old"  # nothing touched, directory kept
    with pytest.raises(FileExistsError, match="already holds a run"):
        claim_run_dir(run_dir, overwrite=False)
    claim_run_dir(run_dir, overwrite=True)
    left = sorted(p.name for p in run_dir.iterdir())
    assert left == [".hydra", "notes.txt"]  # no stale result survives; Hydra's own and ours stay
    claim_run_dir(run_dir, overwrite=False)  # nothing left to refuse


def test_only_hydra_scaffolding_is_removed(tmp_path):
    (tmp_path / "a" / ".hydra").mkdir(parents=True)
    (tmp_path / "a" / "run.log").write_text("")
    assert cli.remove_if_scaffold(tmp_path / "a") and not (tmp_path / "a").exists()
    (tmp_path / "b" / ".hydra").mkdir(parents=True)
    (tmp_path / "b" / "config.yaml").write_text("x")
    assert not cli.remove_if_scaffold(tmp_path / "b") and (tmp_path / "b").exists()


def test_an_offline_download_is_one_line_without_its_chain(capsys, monkeypatch):
    """A download that fails offline raises FileNotFoundError from the URLError: the user sees
    the outer message alone, none of the chained tracebacks."""
    import urllib.error

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stop, cli.user_errors():
        try:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        except OSError as err:
            raise FileNotFoundError("Could not download 'fsdd' from https://x (...)") from err
    assert stop.value.code == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: Could not download 'fsdd' from https://x (...)",
        "(set HYDRA_FULL_ERROR=1 for the traceback)",
    ]

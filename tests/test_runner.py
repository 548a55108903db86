"""End to end through the Hydra entry points, on a small FSDD subset."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pyro_dvae import runner

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["train.epochs=2", "data.max_files=24", "train.progress=false", "train.batch_size=16"]


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def cli(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )


def test_cli_train_then_evaluate(data_root, tmp_path):
    run_dir = tmp_path / "run"
    done = cli("run.py", "model=dkf", *QUICK, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(float(r["kl_weight"]) == 0 for r in rows)
    assert all(math.isfinite(float(r["val_loss"])) and float(r["val_kl"]) > 0 for r in rows)
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    for name in ("config.yaml", "best.pt", "last.pt", "loss.png"):
        assert (run_dir / name).stat().st_size > 0

    done = cli("evaluate.py", f"run_dir={run_dir}")
    assert done.returncode == 0, done.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["n_utterances"] == 24
    assert results["model"] == "dkf" and results["epochs"] == 2
    assert -60 < results["si_sdr"] < 60
    assert 1.0 <= results["pesq_nb"] <= 4.6
    assert 0.0 <= results["estoi"] <= 1.0
    assert results["rmse"] > 0
    assert "pesq_wb" not in results  # 8 kHz: narrow-band only
    assert (run_dir / "results.md").read_text().startswith("|")

    done = cli("generate.py", f"run_dir={run_dir}", "n=2", "T=30")
    assert done.returncode == 0, done.stderr
    wavs = sorted((run_dir / "generated").glob("*.wav"))
    assert len(wavs) == 2
    import soundfile

    audio, fs = soundfile.read(wavs[0])
    assert fs == 8000 and len(audio) >= 29 * 128 and 0 < abs(audio).max() <= 1


def test_bad_override_is_a_clear_error(data_root, tmp_path):
    done = cli("run.py", "model=nope", f"hydra.run.dir={tmp_path}")
    assert done.returncode != 0
    assert "model" in done.stderr and "nope" in done.stderr


def test_resume_through_the_runner_matches_uninterrupted(data_root, tmp_path):
    overrides = [*QUICK, "model=vae", "train.warmup_every=1"]
    full = runner.train(compose_config([*overrides, "train.epochs=3"]), tmp_path / "full")
    runner.train(compose_config(overrides), tmp_path / "part")
    # as on the command line: only what changes is given, the rest is the run's own (model=vae)
    given = ["train.epochs=3", "resume=true", "train.progress=false"]
    part = runner.train(compose_config(given), tmp_path / "part", given)
    read = [list(csv.DictReader(open(d / "metrics.csv"))) for d in (full, part)]
    assert [r["val_loss"] for r in read[0]] == [r["val_loss"] for r in read[1]]
    assert "name: vae" in (part / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("given", "message"),
    [(["model=dkf"], r"model\.name='dkf' \(the run has 'vae'\)"),
     (["data.max_files=12"], r"data\.max_files=12 \(the run has 24\)"),
     (["train.lr=0.01"], r"train\.lr=0\.01 \(the run has None\).*only train\.epochs")],
)
def test_resume_refuses_to_change_the_model_data_or_training(given, message):
    saved = runner.OmegaConf.to_container(compose_config([*QUICK, "model=vae"]), resolve=True)
    cfg = compose_config([*QUICK, *given, "resume=true"])
    with pytest.raises(ValueError, match=message):
        runner.resumed_config(cfg, saved, [*given, "resume=true"])
    # the group choice of the run itself, or a continuation key, is accepted
    again = runner.resumed_config(compose_config(["model=vae", "train.epochs=9"]), saved,
                                  ["model=vae", "train.epochs=9"])
    assert (again.model.name, again.train.epochs, again.data.max_files) == ("vae", 9, 24)
    assert again.resume


def test_evaluate_missing_run_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        runner.evaluate(tmp_path, runner.resolve_device("cpu"))

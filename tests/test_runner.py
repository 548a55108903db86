"""End to end through the Hydra entry points, on a small FSDD subset."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException

from pyro_dvae import runner
from pyro_dvae.train import load_checkpoint
from tests.helpers import compose_config

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["train.epochs=2", "data.max_files=24", "train.progress=false", "train.batch_size=16"]


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
    assert [float(r["kl_weight"]) for r in rows] == [0.5, 1.0]  # warm-up fitted to 2 epochs
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
    logs = sorted(run_dir.glob("*.log"))
    assert [p.name for p in logs] == ["run.log"]  # evaluate/generate log nothing: no empty files
    assert logs[0].stat().st_size > 0


def test_bad_override_is_a_clear_error(data_root, tmp_path):
    done = cli("run.py", "model=nope", f"hydra.run.dir={tmp_path}")
    assert done.returncode != 0
    assert "model" in done.stderr and "nope" in done.stderr


LOSS_COLUMNS = (
    "epoch",
    "kl_weight",
    "lr",
    "train_loss",
    "val_loss",
    "val_recon",
    "val_kl",
    "best_epoch",
)


def _metrics(run_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def _record_epochs(monkeypatch) -> list[int]:
    """The epochs every Trainer runs from now on, filled in as they run."""
    ran, run_epoch = [], runner.Trainer.run_epoch

    def spy(self, epoch):
        ran.append(epoch)
        return run_epoch(self, epoch)

    monkeypatch.setattr(runner.Trainer, "run_epoch", spy)
    return ran


def test_resume_through_the_runner_matches_uninterrupted(data_root, tmp_path, monkeypatch):
    # the configured warm-up: a 2-epoch run resumed to 3 then follows the 3-epoch run's
    overrides = [*QUICK, "model=vae", "train.warmup_every=1", "train.warmup_fit=false"]
    full = runner.train(compose_config([*overrides, "train.epochs=3"]), tmp_path / "full")
    runner.train(compose_config(overrides), tmp_path / "part")
    before = _metrics(tmp_path / "part")
    ran = _record_epochs(monkeypatch)
    # as on the command line: only what changes is given, the rest is the run's own (model=vae)
    given = ["train.epochs=3", "resume=true", "train.progress=false"]
    part = runner.train(compose_config(given), tmp_path / "part", given)
    assert ran == [2]  # a run restarted from scratch would reproduce the losses, not this
    after = _metrics(part)
    assert after[:2] == before  # the rows of epochs 0-1 are kept, timings included
    assert [[r[k] for k in LOSS_COLUMNS] for r in after] == [
        [r[k] for k in LOSS_COLUMNS] for r in _metrics(full)
    ]
    assert "name: vae" in (part / "config.yaml").read_text()


def test_evaluate_best_and_last_use_their_own_weights(data_root, tmp_path, monkeypatch):
    # scripted validation losses (no warm-up): 3, 1, 2 -> best epoch 1, last epoch 2
    losses = iter([3.0, 1.0, 2.0])
    monkeypatch.setattr(runner.Trainer, "validate", lambda self: (next(losses), 0.0, 1))
    overrides = [*QUICK, "model=vae", "train.epochs=3", "train.warmup_every=0", "data.max_files=6"]
    run_dir = runner.train(compose_config(overrides), tmp_path)
    cpu = runner.resolve_device("cpu")
    saved = {name: load_checkpoint(run_dir / f"{name}.pt") for name in ("best", "last")}
    assert saved["best"]["epoch"] == 1 and saved["last"]["state"]["epoch"] == 3
    results = {}
    for name in ("best", "last"):
        weights = runner.load_run(run_dir, cpu, name)[2].state_dict()
        assert all(torch.equal(v, saved[name]["model"][k]) for k, v in weights.items())
        results[name] = runner.evaluate(run_dir, cpu, checkpoint=name, n_examples=1)
        assert results[name]["checkpoint"] == name and results[name]["best_epoch"] == 1
    best, last = saved["best"]["model"], saved["last"]["model"]
    assert any(not torch.equal(v, last[k]) for k, v in best.items())
    assert results["best"]["rmse"] != results["last"]["rmse"]
    with pytest.raises(ValueError, match="checkpoint='final': expected best or last"):
        runner.load_run(run_dir, cpu, "final")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["model=dkf"], r"model\.name='dkf' \(the run has 'vae'\)"),
        (["data.max_files=12"], r"data\.max_files=12 \(the run has 24\)"),
        (["train.lr=0.01"], r"train\.lr=0\.01 \(the run has None\).*only train\.epochs"),
    ],
)
def test_resume_refuses_to_change_the_model_data_or_training(given, message):
    saved = runner.OmegaConf.to_container(compose_config([*QUICK, "model=vae"]), resolve=True)
    cfg = compose_config([*QUICK, *given, "resume=true"])
    with pytest.raises(ValueError, match=message):
        runner.resumed_config(cfg, saved, [*given, "resume=true"])
    # the group choice of the run itself, or a continuation key, is accepted
    again = runner.resumed_config(
        compose_config(["model=vae", "train.epochs=9"]), saved, ["model=vae", "train.epochs=9"]
    )
    assert (again.model.name, again.train.epochs, again.data.max_files) == ("vae", 9, 24)
    assert again.resume


def test_a_run_older_than_a_continuation_key_takes_it_when_given():
    """A run saved before ``train.lr_drops`` existed: given on resume it applies; not given,
    the run goes on without it (the trainer's default, 0)."""
    saved = runner.OmegaConf.to_container(compose_config(QUICK), resolve=True)
    del saved["train"]["lr_drops"]
    given = ["train.lr_drops=2"]
    resumed = runner.resumed_config(compose_config([*QUICK, *given]), saved, given)
    assert resumed.train.lr_drops == 2
    assert "lr_drops" not in runner.resumed_config(compose_config(QUICK), saved, []).train


def test_evaluate_missing_run_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        runner.evaluate(tmp_path, runner.resolve_device("cpu"))


def test_misspelt_train_key_is_named(monkeypatch, tmp_path):
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'train\.epoch'"):
        compose_config(["train.epoch=3"])
    _no_data(monkeypatch)
    with pytest.raises(ValueError, match=r"train\.epoch: unknown key; did you mean train\.epochs"):
        runner.train(compose_config(["+train.epoch=3"]), tmp_path / "run")


def _no_data(monkeypatch) -> None:
    def refuse(**kwargs):
        raise AssertionError("the data was read before the settings were checked")

    monkeypatch.setattr(runner, "build_task", refuse)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=-1", r"train\.epochs=-1: expected an integer >= 0"),
        ("train.batch_size=0", r"train\.batch_size=0: expected an integer >= 1"),
        ("train.lr=-0.001", r"train\.lr=-0\.001: expected a number > 0"),
        (
            "train.optimizer=sgd",
            r"train\.optimizer='sgd': expected one of \('adam', 'clipped_adam'\)",
        ),
        ("train.clip_norm=0", r"train\.clip_norm=0: expected null \(no clipping\) or a number > 0"),
        ("train.lr_decay=1.5", r"train\.lr_decay=1\.5: expected a number in \(0, 1\]"),
        ("train.warmup_start=1.5", r"train\.warmup_start=1\.5: expected a number in \[0, 1\]"),
        ("train.distributed=yes", r"train\.distributed='yes': expected true or false"),
    ],
)
def test_bad_train_settings_fail_before_training(override, message, monkeypatch, tmp_path):
    _no_data(monkeypatch)
    with pytest.raises(ValueError, match=message):
        runner.train(compose_config([override]), tmp_path / "run")
    assert not (tmp_path / "run").exists()

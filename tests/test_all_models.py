"""Every model and guide trains one epoch through the runner on small real subsets."""

import csv
import math

import pytest

from pyro_dvae import runner
from tests.test_runner import compose_config

PAIRS = [
    ("vae", "default"),
    ("dkf", "dks"),
    ("dkf", "st_lr"),
    ("storn", "default"),
    ("vrnn", "default"),
    ("srnn", "smoother"),
    ("srnn", "filter"),
    ("rvae_causal", "causal"),
    ("rvae_causal", "noncausal"),
    ("rvae_noncausal", "noncausal"),
    ("rvae_noncausal", "causal"),
    ("dsae", "default"),
]
QUICK = ["train.epochs=1", "train.batch_size=8", "train.progress=false", "train.warmup_every=0"]


def _one_epoch(tmp_path, overrides):
    run_dir = runner.train(compose_config([*QUICK, *overrides]), tmp_path)
    (row,) = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert math.isfinite(float(row["val_loss"])) and float(row["val_kl"]) >= 0
    assert float(row["kl_weight"]) == 1.0
    return run_dir


@pytest.mark.parametrize("model,guide", PAIRS)
def test_speech_one_epoch(data_root, tmp_path, model, guide):
    run_dir = _one_epoch(tmp_path, [f"model={model}", f"guide={guide}", "data.max_files=6"])
    _, _, trained = runner.load_run(run_dir, runner.resolve_device("cpu"))
    assert guide in ("default", trained.guide_name)


@pytest.mark.parametrize("model", sorted({m for m, _ in PAIRS}))
def test_speech_one_epoch_with_markov_sites(data_root, tmp_path, model):
    _one_epoch(tmp_path, [f"model={model}", "model.sites=markov", "data.max_files=6"])


@pytest.mark.parametrize("model", sorted({m for m, _ in PAIRS}))
def test_motion_one_epoch(data_root, tmp_path, model):
    _one_epoch(tmp_path, [f"model={model}", "data=cmu_mocap", "data.max_files=2"])


@pytest.mark.parametrize("choice", ["prior=linear", "prior=student_t", "guide=mean_field"])
def test_dkf_components_one_epoch(data_root, tmp_path, choice):
    _one_epoch(tmp_path, ["model=dkf", choice, "data.max_files=6"])

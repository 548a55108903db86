"""Scheduled sampling through the trainer and the runner (the model side is tested per model)."""

import csv
import json

import pytest
import torch

from pyro_dvae import forecast, runner
from pyro_dvae.likelihoods import ExponentialPower
from pyro_dvae.models import build_model
from pyro_dvae.train import TrainConfig, Trainer, load_checkpoint, warmup_done
from tests.test_runner import cli, compose_config

TINY = dict(
    z_dim=3,
    dense_x_h=[8],
    dim_rnn_h=5,
    dense_hx_g=[7],
    dim_rnn_g=6,
    dense_gz_z=[4],
    dense_hz_x=[9],
    dense_hz_z=[4],
)
SCHEDULE = dict(scheduled_sampling=True, ss_start=0.25, ss_step=0.25, ss_every=1)


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return list(torch.rand(n, 6, 10, generator=g) + 0.01)


def _trainer(run_dir, epochs, **kw):
    torch.manual_seed(0)
    model = build_model("srnn", 10, ExponentialPower(), **TINY)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=8,
        lr=1e-2,
        warmup_every=0,
        progress=False,
        early_stop_patience=100,
        **{**SCHEDULE, **kw},
    )
    return Trainer(model, _data(16, 0), _data(8, 1), cfg, run_dir, torch.device("cpu"), seed=0)


class Recorder:
    """Wraps ``model.set_feedback`` to record every probability the trainer sets."""

    def __init__(self, model):
        self.values, self.set = [], model.set_feedback
        model.set_feedback = self

    def __call__(self, p, context=0):
        self.values.append(p)
        self.set(p, context)


def test_the_trainer_tells_the_model_the_schedule_every_epoch(tmp_path):
    trainer = _trainer(tmp_path, 5)
    recorder = Recorder(trainer.model)
    state = trainer.fit()
    assert recorder.values == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert [r["feedback_p"] for r in state.history] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert trainer.model.feedback.p == 1.0
    assert [warmup_done(e, trainer.cfg) for e in range(5)] == [False, False, False, True, True]
    assert state.best_epoch >= 3  # epochs before p = 1 are always the best, never compared


def test_without_scheduled_sampling_the_model_is_teacher_forced(tmp_path):
    trainer = _trainer(tmp_path, 2, scheduled_sampling=False)
    recorder = Recorder(trainer.model)
    state = trainer.fit()
    assert recorder.values == [0.0, 0.0]
    assert "feedback_p" not in state.history[0]


def test_resume_in_the_middle_of_the_schedule_is_exact(tmp_path):
    full = _trainer(tmp_path / "full", 4)
    full.fit()
    part = _trainer(tmp_path / "part", 2)
    part.fit()
    resumed = _trainer(tmp_path / "part", 4)
    resumed.resume(tmp_path / "part" / "last.pt")
    resumed.fit()
    for key in ("val_loss", "train_loss", "feedback_p"):
        assert [r[key] for r in full.state.history] == [r[key] for r in resumed.state.history]
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key])


@pytest.mark.parametrize("reset", [False, True])
def test_optimizer_state_is_kept_across_schedule_steps_unless_configured(tmp_path, reset):
    """Two batches per epoch; p changes at epochs 2 and 4 (ss_every=2)."""
    trainer = _trainer(tmp_path, 5, ss_every=2, ss_reset_optimizer=reset)
    trainer.fit()
    steps = {int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()}
    assert steps == ({2} if reset else {10})


def test_init_from_starts_from_a_run_s_weights(tmp_path):
    source = _trainer(tmp_path / "tf", 1, scheduled_sampling=False)
    source.fit()
    model = build_model("srnn", 10, ExponentialPower(), **TINY)
    runner.init_weights(model, tmp_path / "tf", torch.device("cpu"))
    best = load_checkpoint(tmp_path / "tf" / "best.pt")["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, best[key])
    with pytest.raises(ValueError, match=r"train\.init_from=.*nowhere.*no checkpoint"):
        runner.init_weights(model, tmp_path / "nowhere", torch.device("cpu"))
    other = build_model("srnn", 10, ExponentialPower(), **{**TINY, "dim_rnn_h": 7})
    with pytest.raises(ValueError, match=r"(?s)train\.init_from=.*size mismatch"):
        runner.init_weights(other, tmp_path / "tf" / "best.pt", torch.device("cpu"))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ss_every", 0, r"train\.ss_every=0"),
        ("scheduled_sampling", "yes", r"train\.scheduled_sampling='yes'"),
        ("init_from", 3, r"train\.init_from=3"),
    ],
)
def test_bad_schedule_settings_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{key: value})


def test_teacher_forcing_then_scheduled_sampling_then_generation_mode_and_forecast(
    data_root, tmp_path
):
    """The whole path on a small CMU subset: a TF run; an SS run from its weights through the
    config keys; evaluation in both modes; the forecasting script."""
    quick = [
        "model=srnn",
        "data=cmu_mocap",
        "data.max_files=2",
        "train.progress=false",
        "train.batch_size=64",
        "threads=1",
    ]
    tf = runner.train(compose_config([*quick, "train.epochs=1"]), tmp_path / "tf")
    ss = runner.train(
        compose_config(
            [
                *quick,
                "train.epochs=2",
                "train.warmup_every=0",
                "train.scheduled_sampling=true",
                "train.ss_start=0.5",
                "train.ss_step=0.5",
                "train.ss_every=1",
                f"train.init_from={tf}",
                "train.lr=1e-9",  # so that the weights stay those of tf
            ]
        ),
        tmp_path / "ss",
    )
    rows = list(csv.DictReader(open(ss / "metrics.csv")))
    assert [float(r["feedback_p"]) for r in rows] == [0.5, 1.0]
    start, after = (load_checkpoint(d / "best.pt")["model"] for d in (tf, ss))
    for key, value in start.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=1e-7)
    teacher = runner.evaluate(ss, torch.device("cpu"))
    generation = runner.evaluate(ss, torch.device("cpu"), mode="generation")
    assert (teacher["mode"], generation["mode"]) == ("teacher_forcing", "generation")
    assert generation["mpjpe_mm"] != teacher["mpjpe_mm"]
    saved = json.loads((ss / "results_generation.json").read_text())
    assert saved["mpjpe_mm"] == generation["mpjpe_mm"]
    assert json.loads((ss / "results.json").read_text())["mpjpe_mm"] == teacher["mpjpe_mm"]
    with pytest.raises(ValueError, match="mode='free'"):
        runner.evaluate(ss, torch.device("cpu"), mode="free")

    done = cli("forecast.py", f"run_dir={ss}", "context=25", "horizon=25", "samples=2")
    assert done.returncode == 0, done.stderr
    results = json.loads((ss / "forecast_k25_h25" / "results.json").read_text())
    assert results["n_sequences"] > 0 and results["samples"] == 2
    for key in ("forecast", "zero_velocity"):
        at = results[key]["mpjpe_mm"]["at_ms"]
        assert list(at) == ["80", "160", "320", "400", "1000"]
        assert all(0 < v < 5000 for v in at.values())
    zero = results["zero_velocity"]["mpjpe_mm"]["by_frame"]
    assert zero == sorted(zero)  # holding a pose drifts further from the truth with time
    assert (ss / "forecast_k25_h25" / "forecast.png").stat().st_size > 0
    with pytest.raises(ValueError, match=r"context \+ horizon = 60 frames"):
        forecast.run(ss, torch.device("cpu"), context=40, horizon=20)

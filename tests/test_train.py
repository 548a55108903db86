import csv
import math

import pytest
import torch

from pyro_dvae.likelihoods import ExponentialPower
from pyro_dvae.models import build_model
from pyro_dvae.train import TrainConfig, Trainer, kl_weight, load_checkpoint, loss_terms

TINY = dict(z_dim=3, dense_x_gx=[8], dim_rnn_gx=6, dense_ztm1_g=[4], dense_g_z=[5], dense_z_x=[7])


def test_warmup_schedule_matches_spec():
    cfg = TrainConfig()
    weights = [kl_weight(e, cfg) for e in (0, 9, 10, 19, 20, 35, 49, 50, 140)]
    assert weights == pytest.approx([0, 0, 0.2, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert kl_weight(12, TrainConfig(beta=0.5)) == pytest.approx(0.1)
    assert kl_weight(0, TrainConfig(warmup_every=0)) == 1.0


def _data(n=24, T=6, D=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return list(torch.rand(n, T, D, generator=g) + 0.01)


def _trainer(run_dir, epochs, **kw):
    torch.manual_seed(0)
    model = build_model("dkf", 10, ExponentialPower(), **TINY)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=8,
        lr=1e-2,
        warmup_every=1,
        warmup_step=0.5,
        early_stop_patience=100,
        progress=False,
        **kw,
    )
    return Trainer(model, _data(), _data(8, seed=1), cfg, run_dir, torch.device("cpu"), seed=0)


def test_loss_terms_add_up_to_the_elbo(tmp_path):
    trainer = _trainer(tmp_path, 1)
    x = torch.stack(_data(4))
    torch.manual_seed(5)
    recon, kl = loss_terms(trainer.model, x)
    torch.manual_seed(5)
    loss = trainer.loss_fn(trainer.model.model, trainer.model.guide, x, 1.0)
    torch.testing.assert_close(recon + kl, loss)
    assert kl > 0


def test_resume_reaches_the_same_losses(tmp_path):
    full = _trainer(tmp_path / "full", 4)
    full.fit()
    part = _trainer(tmp_path / "part", 2)
    part.fit()
    resumed = _trainer(tmp_path / "part", 4)
    resumed.resume(tmp_path / "part" / "last.pt")
    resumed.fit()
    a = [r["val_loss"] for r in full.state.history]
    b = [r["val_loss"] for r in resumed.state.history]
    assert len(b) == 4
    assert a == pytest.approx(b, rel=1e-6)
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(value, resumed.model.state_dict()[key])


def test_outputs_and_best_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, 5)
    state = trainer.fit()
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(5))
    assert [float(r["kl_weight"]) for r in rows] == [0, 0.5, 1, 1, 1]
    full_weight = [r for r in state.history if r["kl_weight"] == 1]
    best = min(full_weight, key=lambda r: r["val_loss"])
    assert state.best_epoch == best["epoch"]
    saved = load_checkpoint(tmp_path / "best.pt")
    assert saved["epoch"] == best["epoch"]
    if best["epoch"] != 4:  # best.pt holds the best weights, not the last ones
        last = load_checkpoint(tmp_path / "last.pt")["model"]
        assert any(not torch.equal(v, last[k]) for k, v in saved["model"].items())
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_early_stopping_waits_for_warmup(tmp_path):
    trainer = _trainer(tmp_path, 50)
    trainer.cfg.early_stop_patience = 2
    state = trainer.fit()
    assert state.best_epoch >= 2  # epochs 0-1 are warm-up: always "best", never compared
    assert state.epoch - 1 == state.best_epoch + 2 < 49
    assert state.best_val == min(r["val_loss"] for r in state.history if r["epoch"] >= 2)


def test_nan_loss_keeps_last_good_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, 2)
    trainer.fit()
    before = load_checkpoint(tmp_path / "last.pt")
    trainer.cfg.epochs = 3
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(math.nan)
    with pytest.raises(FloatingPointError, match="last.pt"):
        trainer.fit()
    after = load_checkpoint(tmp_path / "last.pt")
    assert after["state"]["epoch"] == before["state"]["epoch"] == 2
    resumed = _trainer(tmp_path, 3)
    resumed.resume(tmp_path / "last.pt")
    resumed.fit()
    assert resumed.state.epoch == 3


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="last.pt"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")

import csv
import math
import os
import signal

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from pyro.optim.clipped_adam import ClippedAdam

from pyro_dvae import train
from pyro_dvae.likelihoods import ExponentialPower
from pyro_dvae.models import build_model
from pyro_dvae.train import (
    Batches,
    TrainConfig,
    Trainer,
    fitted_warmup,
    kl_weight,
    load_checkpoint,
    loss_terms,
    warmup_done,
    warmup_length,
)
from tests.helpers import compose_config

TINY = dict(z_dim=3, dense_x_gx=[8], dim_rnn_gx=6, dense_ztm1_g=[4], dense_g_z=[5], dense_z_x=[7])
LOSS_KEYS = (
    "epoch",
    "kl_weight",
    "lr",
    "train_loss",
    "val_loss",
    "val_recon",
    "val_kl",
    "best_epoch",
)
"""The columns of a history row that do not depend on timing."""


def test_warmup_schedule_matches_spec():
    cfg = TrainConfig()
    weights = [kl_weight(e, cfg) for e in (0, 9, 10, 19, 20, 35, 49, 50, 140)]
    assert weights == pytest.approx([0, 0, 0.2, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert kl_weight(12, TrainConfig(beta=0.5)) == pytest.approx(0.1)
    assert kl_weight(0, TrainConfig(warmup_every=0)) == 1.0
    dmm = TrainConfig(warmup_start=0.2, warmup_every=1, warmup_step=0.1)  # Pyro's DMM's ramp
    assert [kl_weight(e, dmm) for e in (0, 1, 2, 7, 8, 9)] == [0.2, 0.3, 0.4, 0.9, 1.0, 1.0]
    assert [warmup_done(e, dmm) for e in (7, 8)] == [False, True]


def test_a_run_too_short_for_its_warmup_ramps_to_full_weight_in_its_last_epoch():
    paper = TrainConfig(epochs=2)
    assert warmup_length(paper) == 50 and fitted_warmup(paper) == 2
    assert [kl_weight(e, paper, 2) for e in range(3)] == [0.5, 1.0, 1.0]
    assert [warmup_done(e, paper, 2) for e in range(2)] == [False, True]
    five = TrainConfig(epochs=5, warmup_start=0.2, beta=0.5)
    weights = [kl_weight(e, five, fitted_warmup(five)) for e in range(5)]
    assert weights == pytest.approx([0.18, 0.26, 0.34, 0.42, 0.5])  # 0.5 · (0.2 + 0.8 (e+1)/5)
    assert [fitted_warmup(TrainConfig(epochs=n)) for n in (50, 51)] == [50, None]
    dmm = dict(warmup_start=0.2, warmup_every=1, warmup_step=0.1)  # full weight from epoch 8
    assert warmup_length(TrainConfig(**dmm)) == 8
    assert [fitted_warmup(TrainConfig(epochs=n, **dmm)) for n in (8, 9)] == [8, None]
    for off in (dict(warmup_fit=False), dict(warmup_every=0), dict(warmup_start=1.0)):
        assert fitted_warmup(TrainConfig(epochs=2, **off)) is None


def _prior_weights(trainer) -> dict:
    return {k: v.clone() for k, v in trainer.model.prior.state_dict().items()}


def test_a_short_run_trains_its_prior_and_keeps_its_schedule_when_resumed(tmp_path, caplog):
    """The paper's warm-up (weight 0 for 10 epochs) would leave a 2-epoch run's prior
    untouched: fitted to the run, the weight is 0.5 then 1 and the prior moves."""
    trainer = _trainer(tmp_path, 2, warmup_every=10, warmup_step=0.2, warmup_fit=True)
    before = _prior_weights(trainer)
    with caplog.at_level("INFO", logger="pyro_dvae.train"):
        trainer.fit()
    assert [row["kl_weight"] for row in trainer.state.history] == [0.5, 1.0]
    assert _differ(before, _prior_weights(trainer))
    assert "KL warm-up fitted to this 2-epoch run" in caplog.text
    assert "best.pt during warm-up: the latest epoch" in caplog.text
    assert "was never trained" not in caplog.text
    longer = _trainer(tmp_path, 4, warmup_every=10, warmup_step=0.2, warmup_fit=True)
    longer.resume(tmp_path / "last.pt")
    longer.fit()  # the schedule chosen at the start stays: full weight, not the paper's 0
    assert [row["kl_weight"] for row in longer.state.history] == [0.5, 1.0, 1.0, 1.0]


def test_a_run_that_never_trained_its_prior_says_so(tmp_path, caplog):
    trainer = _trainer(tmp_path, 2, warmup_every=10, warmup_step=0.2)  # warmup_fit=False
    before = _prior_weights(trainer)
    with caplog.at_level("WARNING", logger="pyro_dvae.train"):
        trainer.fit()
    assert [row["kl_weight"] for row in trainer.state.history] == [0.0, 0.0]
    assert not _differ(before, _prior_weights(trainer))  # weight 0: no gradient reaches it
    assert caplog.text.count("the prior p(z) was never trained") == 1
    caplog.clear()
    with caplog.at_level("WARNING", logger="pyro_dvae.train"):
        _trainer(tmp_path / "during", 12, warmup_every=10, warmup_step=0.2).fit()
    assert "ended during the KL warm-up (weight 0.2 of 1)" in caplog.text


def _data(n=24, T=6, D=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return list(torch.rand(n, T, D, generator=g) + 0.01)


def _trainer(run_dir, epochs, seed=0, **kw):
    """A tiny DKF; ``seed`` sets its initial weights and every RNG of the trainer."""
    torch.manual_seed(seed)
    model = build_model("dkf", 10, ExponentialPower(), **TINY)
    options = dict(
        batch_size=8,
        lr=1e-2,
        warmup_every=1,
        warmup_step=0.5,
        warmup_fit=False,
        early_stop_patience=100,
    )  # the schedule as configured, even for short runs
    cfg = TrainConfig(epochs=epochs, progress=False, **{**options, **kw})
    return Trainer(model, _data(), _data(8, seed=1), cfg, run_dir, torch.device("cpu"), seed=seed)


def _record_epochs(trainer) -> list[int]:
    """The epochs ``trainer`` runs from now on, filled in as they run."""
    ran, run_epoch = [], trainer.run_epoch

    def spy(epoch):
        ran.append(epoch)
        return run_epoch(epoch)

    trainer.run_epoch = spy
    return ran


def _losses(history: list[dict]) -> list[dict]:
    return [{k: row[k] for k in LOSS_KEYS} for row in history]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _differ(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_loss_terms_add_up_to_the_elbo(tmp_path):
    trainer = _trainer(tmp_path, 1)
    x = torch.stack(_data(4))
    torch.manual_seed(5)
    recon, kl = loss_terms(trainer.model, x)
    torch.manual_seed(5)
    loss = trainer.loss(x, None, 1.0)
    torch.testing.assert_close(recon + kl, loss)
    assert kl > 0


def _resume_other_seed(run_dir, epochs, **kw):
    """A trainer with other initial weights and RNG states, resumed from ``run_dir/last.pt``,
    and the epochs it runs: only a real restore brings it back on the original run's track."""
    trainer = _trainer(run_dir, epochs, seed=1, **kw)
    ran = _record_epochs(trainer)
    fresh = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.resume(run_dir / "last.pt")
    assert _differ(fresh, trainer.model.state_dict())
    return trainer, ran


def test_resume_reaches_the_same_losses(tmp_path):
    full = _trainer(tmp_path / "full", 4)
    full.fit()
    _trainer(tmp_path / "part", 2).fit()
    saved = load_checkpoint(tmp_path / "part" / "last.pt")["state"]["history"]
    resumed, ran = _resume_other_seed(tmp_path / "part", 4)
    resumed.fit()
    assert ran == [2, 3]
    assert resumed.state.history[:2] == saved  # the first two rows are kept, timings included
    assert _losses(resumed.state.history) == _losses(full.state.history)  # exactly
    _assert_same_weights(full.model.state_dict(), resumed.model.state_dict())
    rows = [
        list(csv.DictReader(open(d / "metrics.csv")))
        for d in (tmp_path / "full", tmp_path / "part")
    ]
    assert [[r[k] for k in LOSS_KEYS] for r in rows[0]] == [
        [r[k] for k in LOSS_KEYS] for r in rows[1]
    ]


def test_resume_rewrites_the_metrics_a_crash_cut_short(tmp_path):
    _trainer(tmp_path, 2).fit()
    complete = (tmp_path / "metrics.csv").read_text()
    # a kill between the final last.pt and its metrics.csv leaves the previous epoch's rows
    (tmp_path / "metrics.csv").write_text("".join(complete.splitlines(keepends=True)[:2]))
    (tmp_path / "loss.png").unlink()
    resumed, ran = _resume_other_seed(tmp_path, 2)
    resumed.fit()
    assert ran == [] and (tmp_path / "metrics.csv").read_text() == complete
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_a_stop_signal_waits_for_the_epochs_writes(tmp_path, monkeypatch, caplog):
    save = train.atomic_save

    def save_and_stop(obj, path):  # SIGTERM arrives while best.pt of epoch 0 is written
        if path.name == "best.pt":
            os.kill(os.getpid(), signal.SIGTERM)
        save(obj, path)

    monkeypatch.setattr(train, "atomic_save", save_and_stop)
    trainer = _trainer(tmp_path, 3)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_checkpoint(tmp_path / "last.pt")["state"]["epoch"] == 1
    assert len(list(csv.DictReader(open(tmp_path / "metrics.csv")))) == 1
    assert not list(tmp_path.glob(".*.tmp"))
    assert caplog.messages[-1] == (
        f"stopped by SIGTERM: {tmp_path / 'last.pt'} holds epochs 0-0; continue with resume=true"
    )
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is put back


def test_best_checkpoint_holds_the_best_epochs_weights(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, 6)
    # scripted validation losses: warm-up epochs 0-1 (always "best", never compared), then
    # 6, 4, 5, 7 at full KL weight: the best epoch is 3, the last one 5
    # (validate() returns sums over the validation frames: here over 1 frame)
    scripted = iter([(v, 0.0, 1) for v in (1.0, 1.0, 6.0, 4.0, 5.0, 7.0)])
    monkeypatch.setattr(trainer, "validate", lambda: next(scripted))
    weights, end_epoch = [], trainer.end_epoch

    def snapshot(row):
        weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        end_epoch(row)

    monkeypatch.setattr(trainer, "end_epoch", snapshot)
    state = trainer.fit()
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(6))
    assert [float(r["kl_weight"]) for r in rows] == [0, 0.5, 1, 1, 1, 1]
    assert [int(r["best_epoch"]) for r in rows] == [0, 1, 2, 3, 3, 3]
    assert (state.best_epoch, state.best_val, state.patience) == (3, 4.0, 2)
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best["epoch"] == 3
    _assert_same_weights(best["model"], weights[3])
    _assert_same_weights(last["model"], weights[5])
    assert _differ(best["model"], last["model"])
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_early_stopping_waits_for_warmup(tmp_path):
    trainer = _trainer(tmp_path, 50)
    trainer.cfg.early_stop_patience = 2
    state = trainer.fit()
    assert state.best_epoch >= 2  # epochs 0-1 are warm-up: always "best", never compared
    assert state.epoch - 1 == state.best_epoch + 2 < 49
    assert state.best_val == min(r["val_loss"] for r in state.history if r["epoch"] >= 2)


def _scripted_validation(trainer, monkeypatch, losses) -> None:
    """``trainer.validate`` returns ``losses`` in turn (sums over one frame, no KL)."""
    scripted = iter([(v, 0.0, 1) for v in losses])
    monkeypatch.setattr(trainer, "validate", lambda: next(scripted))


# warm-up epochs 0-1, then best at epoch 3 (4.0), a stall of 2 (epochs 4-5), the drop, a new
# best at epoch 6 (3.0), a stall of 2 (epochs 7-8): early stopping after epoch 8
DROP_SCRIPT = (1.0, 1.0, 6.0, 4.0, 5.0, 7.0, 3.0, 3.5, 3.5, 9.9)


def test_an_lr_drop_goes_on_from_the_best_weights_at_the_lower_lr(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, 10, early_stop_patience=2, lr_drops=1, lr_drop_factor=0.1)
    _scripted_validation(trainer, monkeypatch, DROP_SCRIPT)
    weights, run_epoch = {}, trainer.run_epoch

    def snapshot(epoch):  # the weights each epoch starts from, and the optimiser's state
        state = trainer.optimizer.state_dict()["state"]
        weights[epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        weights[epoch, "steps"] = [float(s["step"]) for s in state.values()]
        return run_epoch(epoch)

    monkeypatch.setattr(trainer, "run_epoch", snapshot)
    trainer.fit()
    history = trainer.state.history
    assert [r["epoch"] for r in history] == list(range(9))
    assert [r["lr"] for r in history] == [1e-2] * 6 + [pytest.approx(1e-3)] * 3
    assert [r["best_epoch"] for r in history] == [0, 1, 2, 3, 3, 3, 6, 6, 6]
    assert (trainer.state.lr_drops, trainer.state.best_val) == (1, 3.0)
    best_then = weights[4]  # the weights after epoch 3, the best before the drop
    _assert_same_weights(weights[6], best_then)  # epoch 6 starts from them ...
    assert _differ(weights[6], weights[5])  # ... not from where epoch 5 left off
    assert weights[6, "steps"] == [0.0] * len(weights[6, "steps"])  # and a fresh Adam
    assert max(weights[5, "steps"]) == 5 * 3  # where epoch 5 began: 5 epochs of 3 steps


def test_a_resume_from_the_stalled_epoch_redoes_the_drop_exactly(tmp_path, monkeypatch):
    options = dict(early_stop_patience=2, lr_drops=1)
    full = _trainer(tmp_path / "full", 10, **options)
    _scripted_validation(full, monkeypatch, DROP_SCRIPT)
    full.fit()
    part = _trainer(tmp_path / "part", 6, **options)  # stops after epoch 5, the stall
    _scripted_validation(part, monkeypatch, DROP_SCRIPT)
    part.fit()
    assert part.state.lr_drops == 0 and part.state.patience == 2
    resumed, ran = _resume_other_seed(tmp_path / "part", 10, **options)
    _scripted_validation(resumed, monkeypatch, DROP_SCRIPT[6:])
    resumed.fit()
    assert ran == [6, 7, 8]
    assert _losses(resumed.state.history) == _losses(full.state.history)
    _assert_same_weights(full.model.state_dict(), resumed.model.state_dict())


def test_an_early_stopped_run_resumed_with_a_drop_goes_on(tmp_path, monkeypatch):
    done = _trainer(tmp_path, 10, early_stop_patience=2)
    _scripted_validation(done, monkeypatch, DROP_SCRIPT)
    assert done.fit().epoch == 6  # early-stopped after epoch 5
    resumed, ran = _resume_other_seed(tmp_path, 10, early_stop_patience=2, lr_drops=1)
    _scripted_validation(resumed, monkeypatch, DROP_SCRIPT[6:])
    resumed.fit()
    assert ran == [6, 7, 8] and resumed.state.lr_drops == 1


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
    assert after["state"] == before["state"] and after["state"]["epoch"] == 2
    _assert_same_weights(after["model"], before["model"])
    assert all(v.isfinite().all() for v in after["model"].values())
    resumed, ran = _resume_other_seed(tmp_path, 3)
    resumed.fit()
    assert ran == [2]
    assert resumed.state.history[:2] == before["state"]["history"]
    full = _trainer(tmp_path / "full", 3)
    full.fit()
    assert _losses(resumed.state.history) == _losses(full.state.history)


def _record_steps(trainer, record) -> None:
    """Calls ``record(optimizer)`` before and after every optimiser step, in a list."""
    step = trainer.optimizer.step

    def spy(*args, **kwargs):
        record("before", trainer.optimizer)
        out = step(*args, **kwargs)
        record("after", trainer.optimizer)
        return out

    trainer.optimizer.step = spy


def _grads(optimizer) -> list[torch.Tensor]:
    return [
        p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
    ]


def test_clip_norm_bounds_the_gradient_norm_the_optimiser_sees(tmp_path):
    norms = {}
    for clip in (None, 0.05):
        trainer = _trainer(tmp_path / str(clip), 1, clip_norm=clip)
        seen = norms[clip] = []
        _record_steps(
            trainer,
            lambda when, opt, seen=seen: (
                when == "before"
                and seen.append(
                    torch.linalg.vector_norm(torch.stack([g.norm() for g in _grads(opt)]))
                )
            ),
        )
        trainer.fit()
    assert len(norms[0.05]) == 3 and min(norms[None]) > 0.05  # unclipped gradients are larger
    assert max(norms[0.05]) <= 0.05 * (1 + 1e-5)
    assert max(norms[0.05]) == pytest.approx(0.05, rel=1e-5)


def test_clipped_adam_clamps_every_gradient_element(tmp_path):
    bound = 2**-10  # exact in float32
    trainer = _trainer(tmp_path, 1, optimizer="clipped_adam", clip_norm=bound)
    assert isinstance(trainer.optimizer, ClippedAdam)
    largest = {"before": [], "after": []}
    _record_steps(
        trainer,
        lambda when, opt: largest[when].append(max(g.abs().max().item() for g in _grads(opt))),
    )
    trainer.fit()
    assert min(largest["before"]) > bound  # the raw gradients exceed the bound ...
    assert max(largest["after"]) == bound  # ... and the optimiser stepped with clamped ones
    unclipped = _trainer(tmp_path / "none", 1, optimizer="clipped_adam")
    assert unclipped.optimizer.param_groups[0]["clip_norm"] == math.inf


def test_lr_decay_with_clipped_adam_resumes_exactly(tmp_path):
    options = dict(optimizer="clipped_adam", clip_norm=0.5, lr_decay=0.5)
    full = _trainer(tmp_path / "full", 4, **options)
    lrs = []
    _record_steps(
        full, lambda when, opt: when == "before" and lrs.append(opt.param_groups[0]["lr"])
    )
    full.fit()
    # 3 steps per epoch, at lr · 0.5^epoch
    assert lrs == [1e-2] * 3 + [5e-3] * 3 + [2.5e-3] * 3 + [1.25e-3] * 3
    assert [r["lr"] for r in full.state.history] == [1e-2, 5e-3, 2.5e-3, 1.25e-3]
    _trainer(tmp_path / "part", 2, **options).fit()
    resumed, ran = _resume_other_seed(tmp_path / "part", 4, **options)
    resumed.fit()
    assert ran == [2, 3]
    assert _losses(resumed.state.history) == _losses(full.state.history)
    _assert_same_weights(full.model.state_dict(), resumed.model.state_dict())
    full_state = full.optimizer.state_dict()["state"]
    resumed_state = resumed.optimizer.state_dict()["state"]
    assert all(
        torch.equal(full_state[i]["exp_avg_sq"], resumed_state[i]["exp_avg_sq"]) for i in full_state
    )


# --- Adam's betas and weight decay; Pyro's DMM recipe -------------------------------------------


@pytest.mark.parametrize("optimizer", ["adam", "clipped_adam"])
def test_betas_and_weight_decay_reach_the_optimiser(optimizer):
    """Two steps written out (float64): g' = g + λθ, m = β1 m + (1 − β1) g',
    v = β2 v + (1 − β2) g'², θ −= lr m̂ / (√v̂ + ε'), with β = (0.5, 0.75), λ = 0.3. The
    optimisers differ only in where ε sits: ε' = ε (Adam), ε / √(1 − β2^k) (ClippedAdam). Adam
    runs fused on the CPU, so this checks the fused kernel's update."""
    theta = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    cfg = TrainConfig(lr=0.1, betas=[0.5, 0.75], weight_decay=0.3, optimizer=optimizer)
    opt = train.build_optimizer([theta], cfg)
    if optimizer == "adam":
        assert opt.defaults["fused"]  # on the CPU: torch's fused kernel
    expected, m, v = theta.detach().clone(), 0.0, 0.0
    for k, g in enumerate([[0.2, 0.4], [-0.6, 0.1]], start=1):
        g = torch.tensor(g, dtype=torch.float64)
        g_decayed = g + 0.3 * expected
        m, v = 0.5 * m + 0.5 * g_decayed, 0.75 * v + 0.25 * g_decayed**2
        eps = 1e-8 if optimizer == "adam" else 1e-8 / math.sqrt(1 - 0.75**k)
        expected = expected - 0.1 * (m / (1 - 0.5**k)) / ((v / (1 - 0.75**k)).sqrt() + eps)
        theta.grad = g
        opt.step()
    torch.testing.assert_close(theta.detach(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(betas=[0.9]), r"train\.betas=\[0\.9\]: expected two numbers in \[0, 1\)"),
        (dict(betas=[0.9, 1.0]), r"train\.betas=\[0\.9, 1\.0\]: expected two numbers"),
        (dict(betas="0.9"), r"train\.betas='0\.9': expected two numbers"),
        (dict(weight_decay=-1.0), r"train\.weight_decay=-1\.0: expected a number >= 0"),
        (dict(weight_decay=True), r"train\.weight_decay=True: expected a number >= 0"),
        (dict(l2=-1e-4), r"train\.l2=-0\.0001: expected a number >= 0"),
    ],
)
def test_bad_adam_settings_name_their_key(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


def test_the_dmm_recipe_is_pyros_per_frame(data_root):
    """+experiment=dmm_jsb: Pyro's DMM settings, its clamp and L2 term divided by the mean
    number of frames per training step (Pyro's loss is the sum over a batch, ours the mean per
    frame), its per-step LR decay per epoch; the KL weight rises from 0.2 to 1 at epoch 1000, and
    all 5,000 epochs are trained, as Pyro does (a patience of 5,000: no early stopping)."""
    from pyro_dvae.data import build_task
    from pyro_dvae.runner import train_config

    cfg = compose_config(["+experiment=dmm_jsb"])
    tcfg = train_config(cfg, "music")
    train_set = build_task(**cfg.data).train
    steps = math.ceil(len(train_set) / tcfg.batch_size)
    frames_per_step = float(train_set.lengths.sum()) / steps  # 13,807 / 12
    assert (tcfg.optimizer, tcfg.lr, tcfg.betas, tcfg.batch_size) == ("clipped_adam", 3e-4,
                                                                    (0.96, 0.999), 20)  # fmt: skip
    assert tcfg.clip_norm == pytest.approx(10 / frames_per_step, rel=1e-3)  # 4 digits given
    assert tcfg.weight_decay == pytest.approx(2.0 / frames_per_step, rel=1e-3)
    assert tcfg.lr_decay == pytest.approx(0.99996**steps, rel=1e-8)
    assert tcfg.epochs == 5000 and tcfg.early_stop_patience == 5000 and not fitted_warmup(tcfg)
    assert [kl_weight(e, tcfg) for e in (0, 1, 500, 999, 1000)] == pytest.approx(
        [0.2, 0.2008, 0.6, 0.9992, 1.0]
    )
    assert warmup_length(tcfg) == 1000
    assert [warmup_done(e, tcfg) for e in (999, 1000)] == [False, True]
    options = OmegaConf.to_container(cfg.prior, resolve=True)
    assert options == {
        "name": "gated",
        "options": {"hidden": 200, "scale": "softplus", "loc_init": "identity"},
    }


def test_the_dmm_authors_recipe_is_theirs_per_frame(data_root):
    """+experiment=dmm_jsb_authors: their cost is the batch's sum of per-chorale −ELBOs plus
    0.05 ‖θ‖², its gradient divided by the batch size, then clipped to norm 1; ours is the mean
    per frame, so their L2 gradient (0.1 θ per batch) and their norm are divided by the batch's
    frames (20 chorales of the training set's mean length). KL weight 0.01 + updates / 5000;
    their guide and transition sizes; up to their 2,000 epochs, stopping after 300 without a
    better validation bound (their figures are at the epoch of best validation)."""
    from pyro_dvae.data import build_task
    from pyro_dvae.runner import train_config

    cfg = compose_config(["+experiment=dmm_jsb_authors"])
    tcfg = train_config(cfg, "music")
    train_set = build_task(**cfg.data).train
    frames_per_chorale = float(train_set.lengths.sum()) / len(train_set)  # 13,807 / 229
    steps = math.ceil(len(train_set) / tcfg.batch_size)
    assert (tcfg.optimizer, tcfg.lr, tcfg.betas, tcfg.batch_size) == ("adam", 8e-4,
                                                                    (0.9, 0.999), 20)  # fmt: skip
    assert tcfg.l2 == pytest.approx(0.1 / (20 * frames_per_chorale), rel=1e-3)  # 4 digits given
    assert tcfg.clip_norm == pytest.approx(1 / frames_per_chorale, rel=1e-4)
    assert tcfg.weight_decay == 0 and tcfg.lr_decay == 1 and tcfg.batches == "sorted"
    assert tcfg.epochs == 2000 and tcfg.early_stop_patience == 300 and not fitted_warmup(tcfg)
    updates = [1 + e * steps for e in (0, 1, 100, 412, 413)]  # their counter starts at 1
    expected = [min(1.0, 0.01 + u / 5000) for u in updates]
    assert [kl_weight(e, tcfg) for e in (0, 1, 100, 412, 413)] == pytest.approx(expected, abs=3e-4)
    music = cfg.model.music
    assert (music.dense_x_gx, music.input_activation, music.rnn, music.dim_rnn_gx) == (
        [600],
        "relu",
        "lstm",
        600,
    )
    assert (music.rnn_dropout, music.dense_z_x, music.guide_scale) == (0.1, [200, 200],
                                                                       "sqrt_softplus")  # fmt: skip
    assert OmegaConf.to_container(cfg.prior.options) == {
        "hidden": 400, "scale": "sqrt_softplus", "loc_init": "identity"
    }  # fmt: skip


def test_a_guide_without_an_analytic_kl_trains_on_the_sampled_log_ratio(tmp_path):
    """guide=iaf: the trainer's validation terms fall back to log q − log p of the draw and add
    up to its loss; an epoch trains to finite losses."""
    torch.manual_seed(0)
    model = build_model("dkf", 10, ExponentialPower(), guide="iaf", iaf_hidden=9, **TINY)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-2, progress=False, warmup_every=0)
    trainer = Trainer(model, _data(), _data(8, seed=1), cfg, tmp_path, torch.device("cpu"))
    x = torch.stack(_data(4))
    torch.manual_seed(5)
    recon, kl = loss_terms(model, x)
    torch.manual_seed(5)
    torch.testing.assert_close(recon + kl, trainer.loss(x, None, 1.0))
    row = trainer.fit().history[0]
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_kl"])


def test_a_resident_split_gives_the_batches_of_the_dataset():
    """``Batches`` with a device keeps the split as one tensor and gathers batches from it:
    the same batches as the dataset's own gathers; padded sequences are not kept."""
    from pyro_dvae.data.motion import Clip, WindowDataset
    from pyro_dvae.data.music import PianoRolls
    from pyro_dvae.data.speech import ChunkDataset

    g = torch.Generator().manual_seed(0)
    chunks = ChunkDataset(torch.rand(7, 5, 3, generator=g))
    clips = [
        Clip(name=f"c{i}", action="walk", x=torch.rand(9, 4, generator=g), first=0)
        for i in range(2)
    ]
    windows = WindowDataset(clips, [[0, 2, 4], [1, 3]], seq_len=5)
    for dataset in (chunks, windows):
        resident = Batches(dataset, torch.device("cpu"))
        assert resident.resident is not None and resident.resident.shape[0] == len(dataset)
        for index in ([3, 0, 1], [4]):
            assert torch.equal(resident[index], Batches(dataset)[index])
    rolls = PianoRolls([np.ones((3, 88), dtype=np.uint8), np.ones((5, 88), dtype=np.uint8)])
    assert Batches(rolls, torch.device("cpu")).resident is None


def test_fixed_validation_noise_draws_the_same_z_every_time_and_leaves_training_alone(tmp_path):
    """``val_noise=fixed``: two validations at the same weights give the same ELBO (the same
    draws), and the random stream the training continues with is the one it had before them;
    ``fresh``: each validation draws anew from that stream."""
    fixed = _trainer(tmp_path / "fixed", 1, val_noise="fixed")
    state = torch.get_rng_state()
    first, second = fixed.validate(), fixed.validate()
    assert first == second
    assert torch.equal(torch.get_rng_state(), state)
    fresh = _trainer(tmp_path / "fresh", 1)
    first, second = fresh.validate(), fresh.validate()
    assert first != second
    with pytest.raises(ValueError, match="train.val_noise='same': expected one of"):
        TrainConfig(val_noise="same")

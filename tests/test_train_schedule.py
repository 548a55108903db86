"""Trainer options of the KVAE authors' recipe: a staircase LR decay and parameters frozen for
the first epochs (their ``kf_update_steps``)."""

import pytest

from pyro_dvae.likelihoods import ExponentialPower
from pyro_dvae.models import build_model
from pyro_dvae.train import TrainConfig, frozen_parameters, learning_rate
from tests.test_train import (
    TINY,
    _assert_same_weights,
    _differ,
    _losses,
    _record_steps,
    _resume_other_seed,
    _trainer,
)

ROUND_OFF = 1e-14
"""Relative error of ``lr · decay^k`` for k ≤ 3: at most 4 float64 roundings of 2^-53 each."""


def test_staircase_decay_steps_every_lr_decay_every_epochs():
    """The authors' tf.train.exponential_decay(0.007, step, 20 epochs, 0.85, staircase=True)."""
    kvae = TrainConfig(lr=0.007, lr_decay=0.85, lr_decay_every=20)
    lrs = [learning_rate(e, kvae) for e in (0, 19, 20, 39, 40, 79)]
    expected = [0.007, 0.007, 0.00595, 0.00595, 0.0050575, 0.004298875]  # 0.007 · 0.85^k
    assert lrs == pytest.approx(expected, rel=ROUND_OFF)
    every_epoch = TrainConfig(lr=0.5, lr_decay=0.5)
    assert [learning_rate(e, every_epoch) for e in range(3)] == [0.5, 0.25, 0.125]


def test_the_trainer_steps_at_the_staircase_lr(tmp_path):
    trainer = _trainer(tmp_path, 3, lr_decay=0.5, lr_decay_every=2)
    lrs = []
    _record_steps(
        trainer, lambda when, opt: when == "before" and lrs.append(opt.param_groups[0]["lr"])
    )
    trainer.fit()
    assert lrs == [1e-2] * 6 + [5e-3] * 3  # 3 steps per epoch
    assert [row["lr"] for row in trainer.state.history] == [1e-2, 1e-2, 5e-3]


def _prior(trainer) -> dict:
    return {k: v.clone() for k, v in trainer.model.prior.state_dict().items()}


def _others(trainer) -> dict:
    return {
        k: v.clone() for k, v in trainer.model.state_dict().items() if not k.startswith("prior.")
    }


def test_frozen_modules_get_no_update_and_no_share_of_the_clipped_norm(tmp_path):
    """``freeze=[prior]`` for 1 epoch: the prior is untouched (no Adam state either) while the
    rest learns; in epoch 1 it learns. The clipped norm is that of the other gradients only."""
    options = dict(freeze=["prior"], freeze_epochs=1, clip_norm=0.05, warmup_every=0)
    trainer = _trainer(tmp_path, 2, **options)  # KL weight 1: the prior has gradients
    frozen = {id(p) for p in trainer.model.prior.parameters()}
    assert {id(p) for p in trainer.frozen} == frozen
    seen = []
    _record_steps(
        trainer,
        lambda when, opt: (
            when == "before"
            and seen.append(
                [p.grad for group in opt.param_groups for p in group["params"] if id(p) in frozen]
            )
        ),
    )
    prior, others = _prior(trainer), _others(trainer)
    epoch, run_epoch = [], trainer.run_epoch

    def after_first_epoch(e):
        row = run_epoch(e)
        if e == 0:
            epoch.append((_prior(trainer), _others(trainer), dict(trainer.optimizer.state)))
        return row

    trainer.run_epoch = after_first_epoch
    trainer.fit()
    prior_0, others_0, adam_0 = epoch[0]
    _assert_same_weights(prior, prior_0)
    assert _differ(others, others_0)
    assert not frozen & {id(p) for p in adam_0}
    assert _differ(prior_0, _prior(trainer))  # epoch 1: the prior learns
    assert all(g is None for step in seen[:3] for g in step)  # epoch 0: 3 steps, no gradient
    assert all(g is not None for step in seen[3:] for g in step)


def test_a_resumed_run_keeps_its_parameters_frozen(tmp_path):
    options = dict(freeze=["prior"], freeze_epochs=2, warmup_every=0)
    full = _trainer(tmp_path / "full", 3, **options)
    full.fit()
    _trainer(tmp_path / "part", 1, **options).fit()
    resumed, ran = _resume_other_seed(tmp_path / "part", 3, **options)
    resumed.fit()
    assert ran == [1, 2]
    assert _losses(resumed.state.history) == _losses(full.state.history)
    _assert_same_weights(full.model.state_dict(), resumed.model.state_dict())


def test_freeze_names_whole_modules_or_parameters():
    model = build_model("dkf", 10, ExponentialPower(), **TINY)
    assert len(frozen_parameters(model, ("prior.gate_hidden",))) == 2  # weight and bias
    assert len(frozen_parameters(model, ("prior.gate_hidden.bias",))) == 1
    with pytest.raises(ValueError, match=r"train.freeze: 'prior.gate' names no parameter"):
        frozen_parameters(model, ("prior.gate",))  # a prefix of names, not a module


@pytest.mark.parametrize(
    "option,key",
    [
        (dict(lr_decay_every=0), "train.lr_decay_every=0"),
        (dict(freeze="prior"), "train.freeze='prior'"),
        (dict(freeze=[""]), "train.freeze"),
        (dict(freeze_epochs=-1), "train.freeze_epochs=-1"),
    ],
)
def test_bad_values_name_the_key(option, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.").replace("[", r"\[")):
        TrainConfig(**option)


def test_an_unknown_module_is_named_before_training(tmp_path):
    with pytest.raises(ValueError, match="train.freeze: 'dynamics' names no parameter"):
        _trainer(tmp_path, 1, freeze=["dynamics"], freeze_epochs=1)

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from pyro import poutine

from pyro_dvae import forecast as forecasting
from pyro_dvae.distributions import PosteriorMean
from pyro_dvae.feedback import Feedback
from pyro_dvae.forecast import (
    Extend,
    evaluate_forecasts,
    forecast,
    frame_errors,
    hold_last,
    log_spectral_distance,
    summarise,
    windows,
)
from pyro_dvae.likelihoods import MPJPE, ExponentialPower
from pyro_dvae.models import build_model

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("vae", "dkf", "storn", "vrnn", "srnn", "rvae_causal", "rvae_noncausal", "dsae")
B, K, H, D = 3, 5, 4, 12


def _model(name: str, likelihood=None):
    """``name`` with its motion layer sizes (small) on D = 12 features."""
    params = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / f"{name}.yaml"))
    return build_model(name, D, likelihood or MPJPE(), **params["motion"]).eval()


@pytest.mark.parametrize("name", MODELS)
def test_every_model_forecasts_from_its_context(name):
    model = _model(name)
    x = 0.1 * torch.randn(B, K, D)
    torch.manual_seed(1)
    sampled = forecast(model, x, H)
    torch.manual_seed(1)
    assert torch.equal(forecast(model, x, H), sampled)
    mean = forecast(model, x, H, mean=True)
    assert mean.shape == (B, H, D) and torch.isfinite(mean).all()
    assert not torch.allclose(sampled, mean)
    moved = forecast(model, x + 0.1, H, mean=True)
    if name == "vae":  # frame-wise i.i.d. latents: the context says nothing about the future
        torch.testing.assert_close(moved, mean)
    else:
        assert not torch.allclose(moved, mean)
    assert model.feedback is None or model.feedback.teacher_forcing


def test_extend_rolls_the_markov_prior_forward():
    """DKF: the context's posterior mean path is kept, then z_t ~ p(z_t | z_{t−1}) (same noise
    as drawing the transition by hand), or its mean."""
    model = _model("dkf")
    x = 0.1 * torch.randn(B, K, D)
    given = poutine.trace(PosteriorMean()(model.guide)).get_trace(x).nodes["z"]["value"]
    future = torch.zeros(B, K + H, D)
    for mean in (False, True):
        torch.manual_seed(2)
        trace = poutine.trace(Extend({"z": given}, mean)(model.model)).get_trace(future)
        z = trace.nodes["z"]["value"]
        assert torch.equal(z[:, :K], given)
        torch.manual_seed(2)
        z_prev = given[:, -1]
        for t in range(K, K + H):
            step = model.prior(z_prev)
            z_prev = step.mean if mean else step.rsample()
            torch.testing.assert_close(z[:, t], z_prev)


def test_autoregressive_forecast_reads_the_context_then_its_predictions():
    """STORN, mean path: the context's posterior means, then the prior mean 0; the decoder
    reads x_{1:K}, then its own predictions."""
    model = _model("storn", ExponentialPower())
    context = torch.rand(B, K, D)
    z = torch.cat([model.posterior(context).mean, torch.zeros(B, H, model.z_dim)], dim=1)
    x = torch.cat([context, torch.full((B, H, D), 7.0)], dim=1)  # the future is never read
    y = model.decode_free(z, x, Feedback(1.0, context=K))
    expected = torch.exp(y[:, K:])
    torch.testing.assert_close(forecast(model, context, H, mean=True), expected)
    teacher = torch.exp(model.decode(z, torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)))
    torch.testing.assert_close(expected[:, 0], teacher[:, K])  # first step: x_K is real
    assert not torch.allclose(expected[:, 1], teacher[:, K + 1])


def test_markov_sites_forecast_like_one_trajectory_site():
    model = _model("srnn")
    x = 0.1 * torch.randn(B, K, D)
    trajectory = forecast(model, x, H, mean=True)
    model.use_sites("markov")
    torch.testing.assert_close(forecast(model, x, H, mean=True), trajectory)


def test_log_spectral_distance_in_db():
    power = torch.ones(2, 3, 4)
    torch.testing.assert_close(log_spectral_distance(power, 10 * power), torch.full((2, 3), 10.0))
    torch.testing.assert_close(log_spectral_distance(power, 0.01 * power), torch.full((2, 3), 20.0))
    one_bin = power.clone()
    one_bin[..., 0] = 10.0  # 10 dB off in one bin of four: sqrt(10² / 4)
    torch.testing.assert_close(log_spectral_distance(power, one_bin), torch.full((2, 3), 5.0))
    silent = power.clone()
    silent[..., 0] = 0.0  # bins far below the peak are floored (80 dB down) on both sides
    estimate = power.clone()
    estimate[..., 0] = 1e-12
    torch.testing.assert_close(log_spectral_distance(silent, estimate), torch.zeros(2, 3))


def test_summary_reports_the_standard_horizons_reached():
    errors = {"mpjpe_mm": torch.arange(1.0, 26.0).expand(4, 25)}
    out = summarise(errors, 40.0, (80, 160, 320, 400, 1000))["mpjpe_mm"]
    assert out["at_ms"] == {"80": 2.0, "160": 4.0, "320": 8.0, "400": 10.0, "1000": 25.0}
    assert out["mean"] == 13.0 and out["by_frame"][:3] == [1.0, 2.0, 3.0]
    short = summarise({"e": torch.ones(1, 10)}, 40.0, (80, 1000))["e"]["at_ms"]
    assert list(short) == ["80"]


def test_zero_velocity_holds_the_last_context_frame():
    context = torch.arange(12.0).reshape(1, 4, 3)
    torch.testing.assert_close(hold_last(context, 2), torch.tensor([[[9.0, 10, 11]] * 2]))


def test_too_long_a_forecast_is_a_clear_error():
    task = SimpleNamespace(modality="motion", name="cmu_mocap", test=SimpleNamespace(seq_len=50))
    with pytest.raises(ValueError, match=r"context \+ horizon = 60 frames.*50 \(data.seq_len\)"):
        windows(task, 60)
    speech = SimpleNamespace(
        modality="speech", name="fsdd", test=[{"x": torch.ones(20, 3)}, {"x": torch.ones(30, 3)}]
    )
    with pytest.raises(ValueError, match="longest test utterance of fsdd has 30"):
        windows(speech, 31)
    assert windows(speech, 25).shape == (1, 25, 3)


# --- metrics by value: 3 joints, the subset {0, 2} ------------------------------------------


class _Windows(list):
    """Motion test windows ``(N, T, D)`` as :func:`~pyro_dvae.forecast.windows` reads them."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__(x)
        self.seq_len = x.shape[1]

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        return torch.stack([self[i] for i in index])


def _motion_task(x: torch.Tensor) -> SimpleNamespace:
    """A motion task whose test windows are ``x (N, T, 9)``: 3 joints, subset {0, 2}, 25 fps."""
    return SimpleNamespace(modality="motion", name="toy", test=_Windows(x), frame_rate=25.0,
                           skeleton=SimpleNamespace(n_joints=3), subset=[0, 2])  # fmt: skip


def _displaced(k: float, frames: int) -> torch.Tensor:
    """``(1, frames, 9)`` in metres: joint 0 at (3k, 4k, 0) mm (5k mm from the origin), joint 1
    at (0, 0, 12) mm, joint 2 at the origin."""
    joints = torch.tensor([[3.0 * k, 4.0 * k, 0.0], [0.0, 0.0, 12.0], [0.0, 0.0, 0.0]]) / 1000
    return joints.flatten().expand(1, frames, 9)


def test_subset_mpjpe_averages_over_the_subset_joints_only():
    """Errors 5, 12 and 0 mm: all joints (5 + 12 + 0) / 3 = 17/3 mm, joints {0, 2} 5/2 mm."""
    truth = torch.zeros(1, 2, 9)
    errors = frame_errors(_motion_task(truth), truth, _displaced(1.0, 2))
    torch.testing.assert_close(errors["mpjpe_mm"], torch.full((1, 2), 17 / 3))
    torch.testing.assert_close(errors["mpjpe_mm_subset"], torch.full((1, 2), 2.5))


def test_forecast_errors_are_averaged_over_the_samples(monkeypatch):
    """Draw k = 1, 2, 3 puts joint 0 5k mm off (joint 1 12 mm, joint 2 0 mm), the truth being
    0: the mean error over draws is (5 · 2 + 12) / 3 = 22/3 mm over all joints and 5 · 2 / 2 =
    5 mm over joints {0, 2}; the zero-velocity baseline holds the truth (0 mm)."""
    K, H, draws = 2, 2, iter([1.0, 2.0, 3.0])
    monkeypatch.setattr(forecasting, "forecast", lambda *_: _displaced(next(draws), H))
    results, x, first = evaluate_forecasts(None, _motion_task(torch.zeros(1, K + H, 9)), K, H,
                                           samples=3)  # fmt: skip
    assert results["samples"] == 3 and x.shape == (1, K + H, 9)
    torch.testing.assert_close(first, _displaced(1.0, H))
    model, baseline = results["forecast"], results["zero_velocity"]
    # float32 errors: per joint a sum of 3 squares and a square root, then means of 3 joints and
    # 3 draws; each step rounds once (u = 6e-8), so ≤ ~10 u = 6e-7 relative in all
    assert model["mpjpe_mm"]["by_frame"] == pytest.approx([22 / 3] * H, rel=1e-6)
    assert model["mpjpe_mm"]["at_ms"]["80"] == pytest.approx(22 / 3, rel=1e-6)
    assert model["mpjpe_mm_subset"]["mean"] == pytest.approx(5.0, rel=1e-6)
    assert baseline["mpjpe_mm"]["mean"] == baseline["mpjpe_mm_subset"]["mean"] == 0.0

"""Speech metrics against closed forms and known reference behaviour."""

import json
import math

import numpy as np
import pesq
import pystoi
import pytest
import soxr

from pyro_dvae import metrics
from pyro_dvae.data import audio

# The packages' outputs on VoiceBank-DEMAND p287_001 (clean reference, noisy estimate, 16 kHz,
# 31,367 samples), computed once with pesq 0.0.4 / pystoi 0.4.1 on the float64 samples read by
# soundfile; the alternatives a wrong call would give are pinned beside them.
PINNED_16K = {
    "pesq_wb": 1.7623153924942017,  # pesq.pesq(16000, clean, noisy, "wb"): P.862.2 MOS-LQO
    "pesq_nb": 2.4710869789123535,  # pesq.pesq(16000, clean, noisy, "nb"): P.862.1 MOS-LQO
    "estoi": 0.6180148065942218,  # pystoi.stoi(clean, noisy, 16000, extended=True)
    "si_sdr": 12.752437951123547,  # by hand: a = <c, n> / |c|^2, 10 log10(|a c|^2 / |n - a c|^2)
    "rmse": 0.016975645838447594,  # by hand: g = <n, c> / |n|^2, sqrt(mean((g n - c)^2))
}
STOI_16K = 0.845798927010507  # pystoi.stoi(..., extended=False): what classic STOI would give
# The same pair decimated by 2 (every other sample, no filter) at 8 kHz: narrow band only.
PINNED_8K = {"pesq_nb": 2.5660078525543213, "estoi": 0.6183102100393667}
PACKAGE_TOL = 1e-6  # PESQ is C code with float32 internals; pystoi resamples through scipy


@pytest.fixture(scope="module")
def clean_noisy(data_root):
    """A VoiceBank-DEMAND clean / noisy pair at 16 kHz, float32 ``(31367,)`` each."""
    folder = data_root / "speech_fixtures_16k/voicebank_demand"
    clean = audio.read_audio(folder / "clean/p287_001.wav", 16000)
    noisy = audio.read_audio(folder / "noisy/p287_001.wav", 16000)
    return clean, noisy


def test_metrics_are_pinned_to_the_packages_values_on_voicebank(clean_noisy):
    clean, noisy = clean_noisy
    assert len(clean) == 31367
    row = metrics.utterance_metrics(clean, noisy, 16000)
    assert row == {k: pytest.approx(v, abs=PACKAGE_TOL) for k, v in PINNED_16K.items()}
    row_8k = metrics.utterance_metrics(clean[::2], noisy[::2], 8000)
    assert set(row_8k) == {"si_sdr", "rmse", "estoi", "pesq_nb"}
    assert row_8k["pesq_nb"] == pytest.approx(PINNED_8K["pesq_nb"], abs=PACKAGE_TOL)
    assert row_8k["estoi"] == pytest.approx(PINNED_8K["estoi"], abs=PACKAGE_TOL)
    assert metrics.pesq_score(clean, noisy, 16000, "wb") == pytest.approx(PINNED_16K["pesq_wb"])
    assert metrics.pesq_score(clean, noisy, 16000) == pytest.approx(PINNED_16K["pesq_nb"])


def test_the_pinned_values_are_the_packages_outputs_and_tell_the_variants_apart(clean_noisy):
    clean, noisy = (x.astype(np.float64) for x in clean_noisy)
    assert pesq.pesq(16000, clean, noisy, "wb") == pytest.approx(PINNED_16K["pesq_wb"], abs=1e-6)
    assert pesq.pesq(16000, clean, noisy, "nb") == pytest.approx(PINNED_16K["pesq_nb"], abs=1e-6)
    assert pesq.pesq(8000, clean[::2], noisy[::2], "nb") == pytest.approx(
        PINNED_8K["pesq_nb"], abs=1e-6
    )
    estoi, stoi = (pystoi.stoi(clean, noisy, 16000, extended=e) for e in (True, False))
    assert estoi == pytest.approx(PINNED_16K["estoi"], abs=1e-6)
    assert stoi == pytest.approx(STOI_16K, abs=1e-6)
    assert pystoi.stoi(clean[::2], noisy[::2], 8000, extended=True) == pytest.approx(
        PINNED_8K["estoi"], abs=1e-6
    )
    # the variants a wrong call would give are far outside the tolerance
    assert abs(stoi - estoi) > 0.2 and PINNED_16K["pesq_nb"] - PINNED_16K["pesq_wb"] > 0.5
    a = (clean @ noisy) / (clean @ clean)
    by_hand = 10 * math.log10(a**2 * (clean @ clean) / ((noisy - a * clean) ** 2).sum())
    assert by_hand == pytest.approx(PINNED_16K["si_sdr"], abs=1e-9)
    g = (noisy @ clean) / (noisy @ noisy)
    assert math.sqrt(((g * noisy - clean) ** 2).mean()) == pytest.approx(
        PINNED_16K["rmse"], abs=1e-12
    )


def test_si_sdr_with_orthogonal_noise_equals_the_closed_form():
    rng = np.random.default_rng(0)
    x, n = rng.standard_normal(1000), rng.standard_normal(1000)
    n -= (n @ x) / (x @ x) * x  # orthogonal to x: the projection of x + n on x is x itself
    expected = 10 * math.log10((x @ x) / (n @ n))
    assert metrics.si_sdr(x, x + n) == pytest.approx(expected, abs=1e-9)
    assert metrics.si_sdr(x, x + 0.1 * n) == pytest.approx(expected + 20, abs=1e-9)


def test_si_sdr_is_scale_invariant_and_has_no_mean_removal():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal(500), rng.standard_normal(500)
    assert metrics.si_sdr(x, 3.0 * (x + y)) == pytest.approx(metrics.si_sdr(x, x + y), abs=1e-9)
    # a constant offset is an error (no mean removal): sum (x + 1 - a x)^2 with a = 1 + <x,1>/|x|^2
    offset = metrics.si_sdr(x, x + 1.0)
    a = 1 + x.sum() / (x @ x)
    assert offset == pytest.approx(10 * math.log10(a**2 * (x @ x) / ((x + 1 - a * x) ** 2).sum()))


def test_si_sdr_of_half_the_reference_plus_orthogonal_noise_by_hand():
    ref = np.array([1.0, 1.0, 1.0, 1.0])
    noise = 0.25 * np.array([1.0, -1.0, 1.0, -1.0])  # <ref, noise> = 0, |noise|^2 = 0.25
    # projection a = 1/2: |a ref|^2 = 1, residual = noise: 10 log10(1 / 0.25) = 6.0206 dB
    # (without the projection, ref itself as target: 10 log10(4 / 1.25) = 5.05 dB)
    assert metrics.si_sdr(ref, 0.5 * ref + noise) == pytest.approx(10 * math.log10(4), abs=1e-12)
    assert metrics.si_sdr(ref, 0.5 * ref + noise / 10) == pytest.approx(
        10 * math.log10(400), abs=1e-12
    )


def test_si_sdr_of_a_silent_reference_is_an_error_and_of_a_silent_estimate_0_db():
    with pytest.raises(metrics.MetricInputError, match="silent"):
        metrics.si_sdr(np.zeros(100), np.ones(100))
    # the spec's eps makes target and residual equally tiny: 0 dB, documented
    assert metrics.si_sdr(np.ones(100), np.zeros(100)) == pytest.approx(0.0, abs=1e-12)


def test_every_metric_rejects_signals_of_different_lengths(clean_noisy):
    clean, noisy = clean_noisy
    calls = [
        metrics.si_sdr,
        metrics.rmse,
        lambda r, e: metrics.pesq_score(r, e, 16000, "wb"),  # the pesq package accepts it
        lambda r, e: metrics.estoi(r, e, 16000),
        lambda r, e: metrics.utterance_metrics(r, e, 16000),
    ]
    for metric in calls:
        with pytest.raises(metrics.MetricInputError, match=r"\(31367,\).*\(31000,\).*same length"):
            metric(clean, noisy[:31000])
        with pytest.raises(metrics.MetricInputError, match="1-D"):
            metric(np.stack([clean, clean]), np.stack([noisy, noisy]))


def test_rmse_uses_the_optimal_gain():
    ref, est = np.array([1.0, 2.0, 0.0]), np.array([1.0, 0.0, 1.0])
    # alpha = <est, ref> / |est|^2 = 1 / 2; alpha est - ref = (-0.5, -2, 0.5); mean square 4.5 / 3
    assert metrics.rmse(ref, est) == pytest.approx(math.sqrt(1.5))
    assert metrics.rmse(ref, 5 * ref) == pytest.approx(0.0, abs=1e-12)


def test_pesq_is_high_for_clean_speech_and_lower_for_noisy(clean_noisy):
    clean, noisy = clean_noisy
    assert metrics.pesq_score(clean, clean, 16000, "wb") > 4
    assert metrics.pesq_score(clean, clean, 16000, "nb") > 4
    assert metrics.pesq_score(clean, noisy, 16000, "wb") < 3
    clean8, noisy8 = (soxr.resample(s, 16000, 8000) for s in (clean, noisy))
    assert metrics.pesq_score(clean8, clean8, 8000, "nb") > 4
    assert metrics.pesq_score(clean8, noisy8, 8000, "nb") < metrics.pesq_score(clean8, clean8, 8000)


def test_pesq_failure_gives_nan(clean_noisy):
    short = clean_noisy[0][8000:9600]  # 0.1 s: too short for PESQ
    assert math.isnan(metrics.pesq_score(short, short, 16000, "wb"))


def test_estoi_is_one_for_identical_signals_and_nan_when_too_short(clean_noisy):
    clean, noisy = clean_noisy
    assert metrics.estoi(clean, clean, 16000) == pytest.approx(1.0, abs=1e-6)
    assert 0.2 < metrics.estoi(clean, noisy, 16000) < 0.95
    assert math.isnan(metrics.estoi(clean[:4000], clean[:4000], 16000))  # 0.25 s < 384 ms


def test_median_ci_by_hand():
    median, ci = metrics.median_ci([4.0, 1.0, 100.0, 3.0, 2.0, float("nan")])
    # sorted 1 2 3 4 100: median 3, q25 = 2, q75 = 4 -> IQR 2, n = 5 (NaN ignored)
    assert median == 3.0
    assert ci == pytest.approx(1.57 * 2 / math.sqrt(5))


def test_summarise_excludes_and_counts_failures_and_is_strict_json():
    rows = [
        {"si_sdr": 10.0, "pesq_nb": 3.0},
        {"si_sdr": 20.0, "pesq_nb": float("nan")},
        {"si_sdr": 30.0, "pesq_nb": 4.0},
    ]
    result = metrics.summarise(rows, ["a", "b", "c"])
    assert result["si_sdr"] == 20.0 and result["pesq_nb"] == 3.5
    assert result["n_utterances"] == 3
    assert result["n_failed"] == {"si_sdr": 0, "pesq_nb": 1}
    assert result["counts"] == {
        "si_sdr": {"scored": 3, "items": 3},
        "pesq_nb": {"scored": 2, "items": 3},
    }
    assert result["median"]["si_sdr"] == {"median": 20.0, "ci": pytest.approx(1.57 * 10 / 3**0.5)}
    assert result["per_utterance"][1] == {"name": "b", "si_sdr": 20.0, "pesq_nb": None}
    json.dumps(result, allow_nan=False)
    assert "per_utterance" not in metrics.summarise(rows, ["a", "b", "c"], max_listed=2)


def test_worker_processes_give_the_same_rows_as_one_process(clean_noisy):
    clean, noisy = clean_noisy
    refs, ests = [clean[:16000], clean[16000:40000]], [noisy[:16000], noisy[16000:40000]]
    parallel = metrics.evaluate_pairs(refs, ests, 16000, n_workers=2)
    serial = metrics.evaluate_pairs(refs, ests, 16000, n_workers=1)
    assert [pytest.approx(row, rel=1e-9) for row in serial] == parallel  # BLAS rounding may differ
    assert set(parallel[0]) == {"si_sdr", "rmse", "estoi", "pesq_nb", "pesq_wb"}


def test_summarise_counts_a_metric_no_utterance_has_as_zero_scored():
    rows = [{"estoi": float("nan"), "rmse": 0.5}, {"estoi": float("nan"), "rmse": 0.25}]
    result = metrics.summarise(rows, ["a", "b"])
    assert result["estoi"] is None and result["rmse"] == 0.375
    assert result["counts"] == {
        "estoi": {"scored": 0, "items": 2},
        "rmse": {"scored": 2, "items": 2},
    }


@pytest.mark.parametrize("recorded_fs", [None, 16000, 44100])
def test_wide_band_pesq_of_a_recording_at_16_khz_or_above(clean_noisy, recorded_fs):
    clean, noisy = clean_noisy
    row = metrics.utterance_metrics(clean, noisy, 16000, recorded_fs)
    assert row == {k: pytest.approx(v, abs=PACKAGE_TOL) for k, v in PINNED_16K.items()}


def test_wide_band_pesq_is_refused_for_a_recording_below_16_khz(clean_noisy):
    """Upsampled from 8 kHz, the band 4-8 kHz is empty: no wide-band score (NaN, not scored);
    the other metrics are those of the pair as it is."""
    clean, noisy = clean_noisy
    row = metrics.utterance_metrics(clean, noisy, 16000, recorded_fs=8000)
    assert math.isnan(row["pesq_wb"])
    expected = {k: v for k, v in PINNED_16K.items() if k != "pesq_wb"}
    assert {k: v for k, v in row.items() if k != "pesq_wb"} == {
        k: pytest.approx(v, abs=PACKAGE_TOL) for k, v in expected.items()
    }
    refs, ests = [clean[:16000], clean[16000:]], [noisy[:16000], noisy[16000:]]
    for n_workers in (1, 2):
        rows = metrics.evaluate_pairs(refs, ests, 16000, n_workers, recorded_fs=[8000, 16000])
        assert math.isnan(rows[0]["pesq_wb"]) and 1 <= rows[1]["pesq_wb"] <= 4.7
        summary = metrics.summarise(rows, ["a", "b"])
        assert summary["counts"]["pesq_wb"] == {"scored": 1, "items": 2}
        assert summary["pesq_wb"] == rows[1]["pesq_wb"]

"""Audio primitives: window, STFT round trip, chunking, resampling, bad files."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from pyro_dvae.data import audio
from pyro_dvae.metrics import si_sdr


def test_stft_sizes_follow_the_64_ms_rule():
    assert audio.stft_size(8000) == (512, 128)
    assert audio.stft_size(16000) == (1024, 256)
    assert audio.stft_size(22050) == (2048, 512)  # 0.064 * 22050 = 1411.2 -> next power of two


def test_sine_window_values_and_constant_overlap_add():
    w = audio.sine_window(4)
    expected = [math.sin(math.pi / 8), math.sin(3 * math.pi / 8)]
    torch.testing.assert_close(w, torch.tensor(expected + expected[::-1]))
    # at a 25 % hop, the squared windows of the 4 overlapping frames add up to 2 everywhere
    w, hop = audio.sine_window(512).double(), 128
    total = sum(w[k * hop : (k + 1) * hop] ** 2 for k in range(4))
    torch.testing.assert_close(total, torch.full((hop,), 2.0, dtype=torch.float64))


def test_stft_istft_round_trip_on_real_speech(data_root):
    x = audio.read_audio(
        data_root / "speech_fixtures_16k/cmu_arctic/cmu_arctic_us_aew_a0001.wav", 16000
    )
    spec = audio.stft(torch.from_numpy(x), 1024, 256)
    assert spec.shape == (1 + len(x) // 256, 513)
    y = audio.istft(spec, 1024, 256, len(x)).numpy()
    assert si_sdr(x, y) > 60


def test_stft_of_a_sinusoid_peaks_at_its_bin():
    n = torch.arange(4096, dtype=torch.float32)
    spec = audio.stft(torch.cos(2 * math.pi * 40 / 512 * n), 512, 128)  # exactly bin 40
    assert spec.shape == (33, 257)
    assert (spec.abs()[5:-5].argmax(dim=1) == 40).all()


def test_a_chunk_has_seq_len_frames_and_257_bins_at_8khz():
    wlen, hop = audio.stft_size(8000)
    x = np.random.default_rng(0).standard_normal(20000).astype(np.float32)
    power = audio.chunk_power(x, wlen, hop, seq_len=50)
    assert power.shape == (3, 50, 257)  # (1 + 20000 // 128) // 50 = 157 // 50 = 3
    assert power.dtype == torch.float32


def test_chunk_count_and_positions_on_a_ramp():
    hop, seq_len = 128, 50
    x = np.arange(3 * seq_len * hop - 1, dtype=np.float32)  # 1 + 19199 // 128 = 150 frames
    chunks = audio.chunk(x, hop, seq_len)
    assert chunks.shape == (3, 49 * 128)
    assert chunks[:, 0].tolist() == [0, 6400, 12800]  # chunk i starts at frame i * seq_len
    assert audio.chunk(x[: 2 * seq_len * hop - 129], hop, seq_len).shape == (1, 6272)  # 99 frames
    assert audio.chunk(x[:100], hop, seq_len).shape == (0, 6272)


def test_overlapping_chunks_start_every_step_frames():
    hop, seq_len = 128, 50
    x = np.arange(3 * seq_len * hop - 1, dtype=np.float32)  # 150 frames
    chunks = audio.chunk(x, hop, seq_len, step=20)
    assert chunks.shape == (6, 49 * 128)  # starts at frames 0, 20, ..., 100; 100 + 49 = 149
    assert chunks[:, 0].tolist() == [i * 20 * hop for i in range(6)]
    assert chunks[-1, -1] <= x[-1]
    np.testing.assert_array_equal(
        audio.chunk(x, hop, seq_len, step=seq_len), audio.chunk(x, hop, seq_len)
    )


def test_each_chunk_is_divided_by_its_own_peak():
    wlen, hop, seq_len = 512, 128, 50
    rng = np.random.default_rng(1)
    x = rng.standard_normal(2 * seq_len * hop).astype(np.float32)
    x[seq_len * hop :] *= 0.01  # second chunk 40 dB quieter
    chunks = audio.chunk(x, hop, seq_len)
    normalised = audio.peak_normalise(chunks)
    np.testing.assert_allclose(np.abs(normalised).max(axis=1), 1.0)
    expected = audio.stft(torch.from_numpy(normalised), wlen, hop).abs().square()
    torch.testing.assert_close(audio.chunk_power(x, wlen, hop, seq_len), expected)
    torch.testing.assert_close(audio.chunk_power(7 * x, wlen, hop, seq_len), expected)


def test_all_zero_chunks_are_dropped():
    x = np.zeros(2 * 50 * 128, np.float32)
    x[:100] = 1.0
    assert audio.chunk_power(x, 512, 128, 50).shape == (1, 50, 257)


def test_resampling_ljspeech_to_16khz_keeps_the_duration(data_root):
    path = data_root / "ljspeech_subset/wavs/LJ001-0001.wav"
    info = sf.info(path)
    assert info.samplerate == 22050
    x = audio.read_audio(path, 16000)
    assert abs(len(x) - info.frames * 16000 / 22050) <= 1
    assert x.dtype == np.float32 and x.ndim == 1


def test_find_audio_is_recursive_and_case_insensitive(tmp_path):
    for name in ["b.WAV", "sub/a.flac", "sub/deep/c.Wav", "notes.txt", "d.mp3"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in audio.find_audio(tmp_path)]
    assert found == ["b.WAV", "sub/a.flac", "sub/deep/c.Wav"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        audio.find_audio(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'empty'}: no wav or flac file"):
        audio.find_audio(tmp_path / "empty")


def test_bad_files_raise_an_error_naming_them(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 8000)
    sf.write(tmp_path / "zeros.wav", np.zeros(8000, np.float32), 8000)
    (tmp_path / "garbage.wav").write_bytes(b"RIFF not really a wav file")
    for name, what in [("empty", "empty"), ("zeros", "zero"), ("garbage", "unreadable")]:
        with pytest.raises(audio.AudioFileError, match=f"{name}.wav.*{what}"):
            audio.read_audio(tmp_path / f"{name}.wav", 8000)


@pytest.mark.parametrize("fs", [16000, 8000])  # as stored, and resampled (which spreads a NaN)
def test_non_finite_samples_raise_an_error_naming_the_file(tmp_path, fs):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (16000, 2)).astype(np.float32)
    cases = {
        "nan": [(1600, 0, np.nan)],
        "inf": [(8000, 1, np.inf)],
        "neg_inf": [(16, 0, -np.inf)],
        "nan_and_inf": [(4800, 0, np.nan), (3200, 1, np.inf)],
    }  # (frame, channel, value)
    for name, samples in cases.items():
        bad = x.copy()
        for row, col, value in samples:
            bad[row, col] = value
        sf.write(tmp_path / f"{name}.wav", bad, 16000, subtype="FLOAT")
        first = min(row for row, _, _ in samples)
        with pytest.raises(
            audio.AudioFileError,
            match=rf"{name}\.wav: {len(samples)} non-finite "
            rf"samples \(NaN or inf\), the first at {first / 16000:.3f} s",
        ):
            audio.read_audio(tmp_path / f"{name}.wav", fs)
    sf.write(tmp_path / "fine.wav", x, 16000, subtype="FLOAT")
    assert np.isfinite(audio.read_audio(tmp_path / "fine.wav", fs)).all()


def test_stereo_files_are_averaged(tmp_path):
    left = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    sf.write(tmp_path / "stereo.flac", np.stack([left, 0.5 * left], axis=1), 8000)
    np.testing.assert_allclose(
        audio.read_audio(tmp_path / "stereo.flac", 8000), 0.75 * left, atol=1e-4
    )


def test_griffin_lim_recovers_the_magnitude(data_root):
    x = audio.read_audio(
        data_root / "speech_fixtures_16k/cmu_arctic/cmu_arctic_us_aew_a0002.wav", 8000
    )[:8000]
    power = audio.stft(torch.from_numpy(x), 512, 128).abs().square()
    y = audio.griffin_lim(power.numpy(), 512, 128)
    assert len(y) == 128 * (len(power) - 1)
    rebuilt = audio.stft(torch.from_numpy(y).float(), 512, 128).abs()
    convergence = (rebuilt - power.sqrt()).norm() / power.sqrt().norm()
    assert convergence < 0.3

"""Speech tasks: splits, chunk features, feature cache, bad files, evaluation and rendering."""

import json
import logging
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
import yaml

from pyro_dvae import metrics
from pyro_dvae.data import audio, speech
from pyro_dvae.data.base import build_task

CONFIGS = Path(__file__).parents[2] / "configs" / "data"


@pytest.fixture(scope="module")
def fsdd_files(data_root) -> list[Path]:
    return audio.find_audio(data_root / "fsdd" / "recordings")


@pytest.fixture(scope="module")
def arctic(data_root) -> Path:
    return data_root / "speech_fixtures_16k" / "cmu_arctic"


@pytest.fixture(scope="module")
def fsdd_small(fsdd_files, data_root):
    """FSDD with 60 train files (one speaker-digit block of 40 and 20 more), 20 val, 3 test."""
    splits = speech.fsdd_split(fsdd_files, range(5, 10))
    splits = {"train": splits["train"][:60], "val": splits["val"][:20], "test": splits["test"][:3]}
    folder = data_root / "fsdd" / "recordings"
    return speech.make_task(
        "fsdd",
        splits,
        folder,
        speech.Features(8000),
        True,
        lambda p: p.stem.split("_")[1],
        n_workers=2,
    )


def fsdd_index(path: Path) -> tuple[str, str, int]:
    digit, speaker, index = path.stem.split("_")
    return digit, speaker, int(index)


def test_fsdd_split_follows_the_official_index(fsdd_files):
    splits = speech.fsdd_split(fsdd_files, (5, 6, 7, 8, 9))
    assert {k: len(v) for k, v in splits.items()} == {"train": 2400, "val": 300, "test": 300}
    assert set(splits["test"]) == {p for p in fsdd_files if fsdd_index(p)[2] <= 4}
    assert all(10 <= fsdd_index(p)[2] <= 49 for p in splits["train"])
    # speaker-balanced validation: 5 takes of every (speaker, digit)
    blocks = Counter(fsdd_index(p)[:2] for p in splits["val"])
    assert len(blocks) == 60 and set(blocks.values()) == {5}
    assert sum(map(len, splits.values())) == len(set().union(*map(set, splits.values())))


def test_unexpected_fsdd_names_are_skipped_with_a_warning():
    with pytest.warns(UserWarning, match="readme.wav"):
        splits = speech.fsdd_split([Path("3_theo_7.wav"), Path("readme.wav")], (7,))
    assert splits == {"train": [], "val": [Path("3_theo_7.wav")], "test": []}


def test_random_split_is_seeded_disjoint_and_complete(data_root):
    folder = data_root / "asterisk_en_allison_16k" / "audio"
    files = audio.find_audio(folder)
    splits = speech.random_split(files, folder, 0.1, 0.1, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"test": 56, "val": 56, "train": 446}
    assert sorted(sum(splits.values(), [])) == files
    assert speech.random_split(list(reversed(files)), folder, 0.1, 0.1, seed=0) == splits
    assert speech.random_split(files, folder, 0.1, 0.1, seed=1)["test"] != splits["test"]


def test_concatenation_gives_many_more_chunks_than_per_file_chunking(fsdd_files):
    files = speech.fsdd_split(fsdd_files, range(5, 10))["train"][:80]  # digit 0, george + jackson
    features = speech.Features(8000)
    per_file = speech.build_chunks(files, features, None)
    joined = speech.build_chunks(files, features, [fsdd_index(p)[1] for p in files])
    assert len(joined["power"]) >= 30 and len(joined["power"]) >= 10 * len(per_file["power"])
    assert re.search(
        r"\d+ of 80 files give no 50-frame chunk.*concat_utterances=true", per_file["problems"][0]
    )
    # the longest stream in frames: the longest trimmed file, or the longest speaker's stream
    lengths = [len(audio.trim_silence(audio.read_audio(p, 8000))) for p in files]
    assert per_file["longest"] == 1 + max(lengths) // 128
    by_speaker = Counter()
    for path, n in zip(files, lengths, strict=True):
        by_speaker[fsdd_index(path)[1]] += n
    assert joined["longest"] == 1 + max(by_speaker.values()) // 128


def test_wav_folder_items_match_a_direct_computation(arctic):
    dirs = {"train_dir": str(arctic), "val_dir": str(arctic), "test_dir": str(arctic)}
    task = build_task("wav_folder", **dirs)
    assert (task.x_dim, task.fs, task.modality) == (513, 16000, "speech")
    first = audio.trim_silence(audio.read_audio(audio.find_audio(arctic)[0], 16000))
    torch.testing.assert_close(task.train[0], audio.chunk_power(first, 1024, 256, 50)[0])
    assert task.train[0].shape == (50, 513) and task.train[0].dtype == torch.float32
    assert len(task.test) == 8
    item = task.test[0]
    assert item["name"] == audio.find_audio(arctic)[0].stem
    torch.testing.assert_close(item["wave"], torch.from_numpy(first / np.abs(first).max()))
    spec = audio.stft(item["wave"], 1024, 256)
    assert item["x"].shape == (1 + len(first) // 256, 513)
    torch.testing.assert_close(item["x"], spec.abs().square())
    torch.testing.assert_close(
        torch.polar(item["x"].sqrt(), item["phase"]), spec, atol=1e-4, rtol=1e-4
    )


def test_feature_cache_is_hit_then_invalidated(monkeypatch, tmp_path, arctic):
    monkeypatch.setenv("PYRO_DVAE_CACHE", str(tmp_path))
    calls = Counter()

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(audio, "read_audio", counted("read", audio.read_audio))
    monkeypatch.setattr(audio, "stft", counted("stft", audio.stft))
    dirs = {"train_dir": str(arctic), "val_dir": str(arctic), "test_dir": str(arctic)}
    first = build_task("wav_folder", max_files=3, **dirs)
    assert calls["read"] == 9 and calls["stft"] > 0
    assert len(list((tmp_path / "features").glob("wav_folder-*.pt"))) == 3
    calls.clear()
    again = build_task("wav_folder", max_files=3, **dirs)
    assert calls == {}
    torch.testing.assert_close(again.train.power, first.train.power)
    build_task("wav_folder", max_files=3, top_db=20, **dirs)
    assert calls["read"] == 9


def test_bad_files_are_skipped_with_a_warning_naming_them(tmp_path, arctic):
    for path in audio.find_audio(arctic)[:2]:
        x, fs = sf.read(path)
        sf.write(tmp_path / path.name, x, fs)
    sf.write(tmp_path / "empty.wav", np.zeros(0), 16000)
    sf.write(tmp_path / "zeros.wav", np.zeros(16000), 16000)
    sf.write(tmp_path / "tiny.flac", np.random.default_rng(0).uniform(-1, 1, 500), 16000)
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00garbage")
    with pytest.warns(UserWarning) as record:
        task = build_task(
            "wav_folder", train_dir=str(tmp_path), val_dir=str(tmp_path), test_dir=str(tmp_path)
        )
    messages = " ".join(str(w.message) for w in record)
    for name, why in [
        ("empty.wav", "empty"),
        ("zeros.wav", "zero"),
        ("garbage.wav", "unreadable"),
        ("tiny.flac", "fewer than one STFT window"),
    ]:
        assert re.search(f"skipped [^ ]*{name}: [^;]*{why}", messages)
    assert len(task.test) == 2


def test_files_with_nan_or_inf_samples_are_skipped_with_a_warning_naming_them(tmp_path, arctic):
    good = audio.find_audio(arctic)[:2]
    for path in good:
        x, fs = sf.read(path)
        sf.write(tmp_path / path.name, x, fs, subtype="FLOAT")
        x[len(x) // 2] = np.nan if path == good[0] else -np.inf
        sf.write(tmp_path / f"bad_{path.name}", x, fs, subtype="FLOAT")
    with pytest.warns(UserWarning) as record:
        task = build_task(
            "wav_folder",
            train_dir=str(tmp_path),
            val_dir=str(tmp_path),
            test_dir=str(tmp_path),
            fs=8000,
        )  # resampled: NaN would spread
    messages = [str(w.message) for w in record]
    for path in good:
        assert any(
            re.search(f"skipped [^ ]*bad_{path.name}: 1 non-finite samples", m) for m in messages
        )
    assert sorted(task.test.names) == sorted(p.stem for p in good)
    assert torch.isfinite(task.train.power).all() and torch.isfinite(task.val.power).all()
    assert all(torch.isfinite(wave).all() for wave in task.test.waves)


def test_a_split_of_only_non_finite_files_fails_clearly(tmp_path, arctic):
    x, fs = sf.read(audio.find_audio(arctic)[0])
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, fs, subtype="FLOAT")
    with (
        pytest.raises(ValueError, match="train split has no usable recording among its 1 files"),
        pytest.warns(UserWarning, match="nan.wav: 1 non-finite"),
    ):
        build_task("wav_folder", train_dir=str(tmp_path), val_dir=str(arctic), test_dir=str(arctic))


def trimmed_frames(path: Path, fs: int = 16000, hop: int = 256) -> tuple[int, int]:
    """Samples and STFT frames of a file after resampling and silence trimming."""
    n = len(audio.trim_silence(audio.read_audio(path, fs)))
    return n, 1 + n // hop


def test_seq_len_longer_than_every_file_names_the_key_and_the_longest(arctic):
    dirs = {"train_dir": str(arctic), "val_dir": str(arctic), "test_dir": str(arctic)}
    files = [audio.find_audio(arctic)[i] for i in (0, 4)]  # the 2 of 8 that max_files=2 takes
    samples, frames = zip(*map(trimmed_frames, files), strict=True)
    longest = max(frames)
    with (
        pytest.raises(
            ValueError,
            match=rf"data\.seq_len={longest + 1} frames is longer than "
            rf"the longest file of the train split of data=wav_folder: {longest} frames"
            rf" .*at most {longest}, or set data\.concat_utterances=true",
        ),
        pytest.warns(UserWarning, match="2 of 2 files give no"),
    ):
        build_task("wav_folder", max_files=2, seq_len=longest + 1, **dirs)
    with pytest.warns(UserWarning, match="1 of 2 files give no"):
        assert len(build_task("wav_folder", max_files=2, seq_len=longest, **dirs).train) == 1
    joined = 1 + sum(samples) // 256  # all the files of one folder form one stream
    with pytest.raises(
        ValueError,
        match=rf"data\.seq_len={joined + 1} frames is longer than the "
        rf"longest concatenated stream .*: {joined} frames .*at most {joined}$",
    ):
        build_task("wav_folder", max_files=2, seq_len=joined + 1, concat_utterances=True, **dirs)
    assert (
        len(
            build_task(
                "wav_folder", max_files=2, seq_len=joined, concat_utterances=True, **dirs
            ).train
        )
        == 1
    )
    with pytest.raises(ValueError, match=r"data\.seq_len=1: expected at least 2"):
        build_task("wav_folder", max_files=2, seq_len=1, **dirs)


def test_a_split_without_chunks_raises_a_helpful_error(tmp_path, fsdd_files):
    for path in fsdd_files[:2]:  # two short digits, 0.3-0.5 s each
        x, fs = sf.read(path)
        sf.write(tmp_path / path.name, x, fs)
    with (
        pytest.raises(ValueError, match="train split.*concat_utterances=true"),
        pytest.warns(UserWarning, match="2 of 2 files give no 50-frame chunk"),
    ):
        build_task(
            "wav_folder",
            train_dir=str(tmp_path),
            val_dir=str(tmp_path),
            test_dir=str(tmp_path),
            fs=8000,
        )


def test_train_chunk_hop_overlaps_training_chunks_only(arctic):
    dirs = {"train_dir": str(arctic), "val_dir": str(arctic), "test_dir": str(arctic)}
    plain = build_task("wav_folder", max_files=2, **dirs)
    overlapping = build_task("wav_folder", max_files=2, train_chunk_hop=10, **dirs)
    first = audio.trim_silence(audio.read_audio(audio.find_audio(arctic)[0], 16000))
    expected = audio.chunk_power(first, 1024, 256, 50, step=10)
    assert len(overlapping.train) >= 4 * len(plain.train)
    torch.testing.assert_close(overlapping.train[: len(expected)], expected)
    torch.testing.assert_close(overlapping.val.power, plain.val.power)
    with pytest.raises(ValueError, match=r"data\.train_chunk_hop=60.*1\.\.seq_len \(50\)"):
        build_task("wav_folder", max_files=2, train_chunk_hop=60, **dirs)


def test_wav_folder_names_a_missing_folder_key(arctic):
    with pytest.raises(ValueError, match=r"data\.val_dir"):
        build_task("wav_folder", train_dir=str(arctic), test_dir=str(arctic))
    with pytest.raises(ValueError, match="modality"):
        build_task(
            "wav_folder",
            modality="motion",
            train_dir=str(arctic),
            val_dir=str(arctic),
            test_dir=str(arctic),
        )


@pytest.mark.parametrize("name", ["fsdd", "asterisk16k"])
def test_config_files_build_their_task(name, data_root):
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    task = build_task(**{**cfg, "max_files": 40})
    assert task.name == name and task.modality == "speech"
    assert task.x_dim == {"fsdd": 257, "asterisk16k": 513}[name]
    assert len(task.train) > 0 and len(task.val) > 0 and len(task.test) == 40
    assert task.train[0].shape == (50, task.x_dim)


def test_the_wav_folder_config_asks_for_its_folders():
    cfg = yaml.safe_load((CONFIGS / "wav_folder.yaml").read_text())
    with pytest.raises(ValueError, match=r"data\.train_dir"):
        build_task(**cfg)


def test_evaluate_identity_is_near_perfect_and_a_flat_spectrum_is_not(fsdd_small, tmp_path):
    result = fsdd_small.evaluate(lambda x: x, tmp_path / "identity", n_examples=2)
    assert result["n_utterances"] == 3
    assert result["si_sdr"] > 30 and result["rmse"] < 1e-4
    assert result["pesq_nb"] > 4
    assert {"si_sdr", "pesq_nb", "estoi", "rmse", "median", "n_failed"} <= set(result)
    assert "pesq_wb" not in result
    assert set(result["median"]["si_sdr"]) == {"median", "ci"}
    json.dumps(result, allow_nan=False)
    wavs = sorted((tmp_path / "identity" / "wavs").glob("*.wav"))
    assert [p.stem for p in wavs] == sorted(fsdd_small.test.names)
    assert (tmp_path / "identity" / "spectrograms.png").stat().st_size > 0

    def flat_spectrum(x):
        return x.mean(dim=1, keepdim=True).expand_as(x)

    flat = fsdd_small.evaluate(flat_spectrum, tmp_path / "flat")
    assert flat["si_sdr"] < 10 and flat["si_sdr"] < result["si_sdr"] - 50


def test_the_floor_is_the_training_mean_spectrum_resynthesised_with_the_original_phase(
    fsdd_small, tmp_path
):
    """The floor of every test utterance, recomputed here step by step: the training frames'
    mean power in every frame, the utterance's own phase, iSTFT, the common scale, metrics."""
    result = fsdd_small.evaluate(lambda x: x, tmp_path, n_examples=0)
    floor = result["floor"]
    power = fsdd_small.train.power.numpy().astype(np.float64)
    mean = torch.from_numpy(power.reshape(-1, power.shape[-1]).mean(0)).float()
    assert torch.equal(fsdd_small.mean_spectrum(), mean)  # so the waveforms below are identical
    f = fsdd_small.features
    for i, row in enumerate(floor["per_utterance"]):
        item = fsdd_small.test[i]
        x = item["wave"].numpy()
        x_hat = audio.istft(
            torch.polar(mean.expand(item["x"].shape).sqrt(), item["phase"]), f.wlen, f.hop, len(x)
        ).numpy()
        scale = 0.9 / np.nanmax(np.abs(np.concatenate([x, x_hat])))
        expected = metrics.utterance_metrics(scale * x, scale * x_hat, 8000)
        assert row["name"] == item["name"] and set(row) == {"name", *expected}
        for key, value in expected.items():  # float64 dot products of N < 1e5 samples: the
            # workers' BLAS may round differently, by at most N eps < 2.3e-11 relative
            assert (
                row[key] is None
                if math.isnan(value)
                else row[key] == pytest.approx(value, rel=1e-9)
            )
    assert floor["estimate"] == speech.FLOOR and floor["n_utterances"] == 3
    assert floor["counts"]["si_sdr"] == {"scored": 3, "items": 3}
    assert floor["si_sdr"] < result["si_sdr"] - 30
    json.dumps(result, allow_nan=False)


def test_the_mean_spectrum_averages_every_training_frame_by_hand():
    train = speech.ChunkDataset(torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]))
    val = speech.ChunkDataset(torch.zeros(1, 2, 2))
    task = speech.SpeechTask("t", speech.Features(8000), train, val, test=None)
    assert task.mean_spectrum().tolist() == [4.0, 5.0]  # (1 + 3 + 5 + 7) / 4, (2 + 4 + 6 + 8) / 4
    constant = task.floor_estimate()(torch.rand(1, 3, 2))
    assert constant.tolist() == [[[4.0, 5.0]] * 3]


def test_resampling_message_by_hand():
    rates = {"a.wav": 22050, "b.wav": 16000, "c.wav": 22050, "d.wav": 8000}
    assert speech.resampling_message("x", rates, 16000) == (
        "data=x: resampled 1 file from 8000 Hz and 2 files from 22050 Hz to 16000 Hz"
    )
    assert speech.resampling_message("x", {"a": 44100, "b": 44100}, 16000) == (
        "data=x: resampled 2 files from 44100 Hz to 16000 Hz"
    )
    assert speech.resampling_message("x", {"b.wav": 16000}, 16000) is None


def write_at(path: Path, source: Path, fs: int) -> None:
    """``source`` (16 kHz) resampled to ``fs`` and written to ``path``."""
    x, fs_source = sf.read(source, dtype="float32")
    sf.write(path, soxr.resample(x, fs_source, fs), fs)


def test_resampling_is_logged_once_and_upsampled_audio_gets_no_wide_band_pesq(
    tmp_path, arctic, caplog
):
    """train: 2 files at 22050 Hz, 1 at 16 kHz; val: 1 at 44100 Hz; test: 2 at 8 kHz, 1 at
    16 kHz. Wide-band PESQ scores the 16 kHz test file only, in the model's and the floor's
    results."""
    files = audio.find_audio(arctic)
    plan = {"train": [22050, 22050, 16000], "val": [44100], "test": [8000, 8000, 16000]}
    for split, rates in plan.items():
        (tmp_path / split).mkdir()
        for k, fs in enumerate(rates):
            write_at(tmp_path / split / f"{k}.wav", files[k], fs)
    dirs = {f"{split}_dir": str(tmp_path / split) for split in plan}
    caplog.set_level(logging.INFO, logger="pyro_dvae.data.speech")
    expected = (
        "data=wav_folder: resampled 2 files from 8000 Hz, 2 files from 22050 Hz and "
        "1 file from 44100 Hz to 16000 Hz"
    )
    task = build_task("wav_folder", n_workers=1, **dirs)
    assert [r.getMessage() for r in caplog.records] == [expected]
    assert task.test.rates == [8000, 8000, 16000]
    caplog.clear()
    result = task.evaluate(lambda x: x, tmp_path / "eval", n_examples=0)
    assert [r.getMessage() for r in caplog.records] == [
        "pesq_wb refused for 2 of 3 test utterances recorded below 16000 Hz (2 at 8000 Hz) and "
        "resampled up: they hold nothing above half their rate, so their score would not be "
        "wide-band"
    ]
    for scores in (result, result["floor"]):
        assert scores["counts"]["pesq_wb"] == {"scored": 1, "items": 3}
        assert scores["counts"]["pesq_nb"] == {"scored": 3, "items": 3}
        listed = [row["pesq_wb"] for row in scores["per_utterance"]]
        assert listed[:2] == [None, None] and scores["pesq_wb"] == listed[2] > 1


def test_render_writes_audio_and_a_figure(fsdd_small, tmp_path):
    paths = fsdd_small.render(fsdd_small.val.power[:2], tmp_path)
    assert [p.name for p in paths] == ["sample_00.wav", "sample_01.wav", "samples.png"]
    info = sf.info(paths[0])
    assert (info.samplerate, info.frames) == (8000, 49 * 128)

"""Speech tasks: power spectrograms of real recordings (spec §8.1) and the evaluation of §8.2.

Training and validation items are ``|STFT|^2`` chunks of exactly ``seq_len`` frames, ``(T, F)``
float32, each cut from a silence-trimmed stream and divided by its own peak before the STFT.
With ``concat_utterances`` the trimmed, peak-normalised utterances of one speaker (one folder) are
joined, in file order, into one stream before chunking, so short recordings are used too.
Test items are whole trimmed utterances divided by their peak. Features are computed once per
split and cached under ``sources.cache_dir() / "features"``, keyed by the files (path, size,
mtime) and every feature parameter. Files recorded at another rate are resampled to ``fs``; one
log line per task build says how many, from which rates.

Registered datasets: ``fsdd`` (8 kHz), ``asterisk16k`` (16 kHz) and ``wav_folder`` (your own
train / val / test folders, e.g. WSJ0).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from matplotlib.figure import Figure
from torch.utils.data import Dataset

from pyro_dvae import metrics
from pyro_dvae.data import audio, sources
from pyro_dvae.data.base import Estimator, Task, register_task

log = logging.getLogger(__name__)

CACHE_VERSION = 3
"""Bump when the feature computation changes, so stale caches are not read."""

FLOOR = "training mean power spectrum at every frame, original phase"
"""What the ``floor`` of a speech evaluation resynthesises (:meth:`SpeechTask.floor_estimate`)."""

FSDD_NAME = re.compile(r"(\d)_([A-Za-z]+)_(\d+)")


@dataclass(frozen=True)
class Features:
    """Feature parameters: sample rate, STFT (spec §8.1) and chunking."""

    fs: int
    wlen_sec: float = 0.064
    hop_percent: float = 0.25
    seq_len: int = 50
    top_db: float = 30.0

    @property
    def wlen(self) -> int:
        return audio.stft_size(self.fs, self.wlen_sec, self.hop_percent)[0]

    @property
    def hop(self) -> int:
        return audio.stft_size(self.fs, self.wlen_sec, self.hop_percent)[1]

    @property
    def n_freq(self) -> int:
        return self.wlen // 2 + 1


class ChunkDataset(Dataset):
    """Fixed-length training items: ``power`` is ``(N, T, F)``; item ``i`` is ``power[i]``."""

    def __init__(self, power: torch.Tensor) -> None:
        self.power = power

    def __len__(self) -> int:
        return len(self.power)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.power[i]

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Items ``index`` ``(B,)`` stacked to ``(B, T, F)``."""
        return self.power[index]


class UtteranceDataset(Dataset):
    """Whole test utterances. Item ``i`` is a dict: ``name`` (str), ``wave`` ``(N,)`` (trimmed,
    peak 1), ``x`` its power spectrogram ``(T, F)`` and ``phase`` ``(T, F)`` for resynthesis.
    ``rates[i]`` is the rate (Hz) utterance ``i`` was recorded at, before resampling."""

    def __init__(
        self, names: list[str], waves: list[torch.Tensor], wlen: int, hop: int, rates: list[int]
    ) -> None:
        self.names, self.waves, self.wlen, self.hop, self.rates = names, waves, wlen, hop, rates

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i: int) -> dict:
        spec = audio.stft(self.waves[i], self.wlen, self.hop)
        return {
            "name": self.names[i],
            "wave": self.waves[i],
            "x": spec.abs().square(),
            "phase": spec.angle(),
        }


class SpeechTask(Task):
    """A speech corpus with chunked train / val sets and a whole-utterance test set."""

    modality = "speech"

    def __init__(
        self,
        name: str,
        features: Features,
        train: ChunkDataset,
        val: ChunkDataset,
        test: UtteranceDataset,
        n_workers: int | None = None,
    ) -> None:
        self.name, self.features = name, features
        self.train, self.val, self.test = train, val, test
        self.x_dim = features.n_freq
        self.fs = features.fs
        self.n_workers = n_workers

    def evaluate(self, estimate: Estimator, out_dir: Path, n_examples: int = 4) -> dict:
        """Spec §8.2 on every test utterance (:meth:`resynthesise`): SI-SDR, RMSE, PESQ, ESTOI
        (the returned dict, with the number of utterances each mean covers, is described in
        :func:`pyro_dvae.metrics.summarise`), and under ``floor`` the same metrics of
        :meth:`floor_estimate`, the level that a spectrogram constant over time already reaches
        because the original phase carries much of the signal. Writes every reconstruction to
        ``out_dir/wavs/<name>.wav`` and ``out_dir/spectrograms.png`` of the first ``n_examples``
        utterances."""
        out_dir = Path(out_dir)
        (out_dir / "wavs").mkdir(parents=True, exist_ok=True)
        refs, ests, examples = self.resynthesise(estimate, n_examples)
        for name, x_hat in zip(self.test.names, ests, strict=True):
            sf.write(out_dir / "wavs" / f"{name}.wav", x_hat, self.fs)
        if examples:
            self._plot(examples, out_dir / "spectrograms.png", ("original", "reconstruction"))
        self._warn_narrow_band()
        result = self._score(refs, ests)
        floor_refs, floor_ests, _ = self.resynthesise(self.floor_estimate())
        result["floor"] = {"estimate": FLOOR, **self._score(floor_refs, floor_ests)}
        return result

    def resynthesise(
        self, estimate: Estimator, n_examples: int = 0
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[tuple]]:
        """Every test utterance ``x`` and its reconstruction ``x_hat``: the estimated power
        ``(1, T, F)`` with the original phase → iSTFT, both scaled by
        ``0.9 / max(max|x_hat|, max|x|)``.

        Returns:
            The references and the reconstructions (float32 ``(N_i,)`` each, in test order), and
            ``(name, power (T, F), estimated power (T, F))`` of the first ``n_examples``.
        """
        f = self.features
        refs, ests, examples = [], [], []
        for i in range(len(self.test)):
            item = self.test[i]
            with torch.no_grad():
                power = estimate(item["x"][None])[0].detach().float().cpu().clamp_min(0)
            x = item["wave"].numpy()
            x_hat = audio.istft(torch.polar(power.sqrt(), item["phase"]), f.wlen, f.hop, len(x))
            x_hat = x_hat.numpy()
            scale = 0.9 / np.nanmax(np.abs(np.concatenate([x, x_hat])))
            refs.append(scale * x)
            ests.append(scale * x_hat)
            if i < n_examples:
                examples.append((item["name"], item["x"].numpy(), power.numpy()))
        return refs, ests, examples

    def mean_spectrum(self) -> torch.Tensor:
        """The training set's mean power spectrum ``(F,)`` float32: every bin averaged over all
        training frames (accumulated in float64)."""
        return self.train.power.mean((0, 1), dtype=torch.float64).float()

    def floor_estimate(self) -> Estimator:
        """The trivial reconstruction: :meth:`mean_spectrum` at every frame, ``(B, T, F)`` →
        ``(B, T, F)``, whatever the input."""
        spectrum = self.mean_spectrum()
        return lambda x: spectrum.expand(x.shape)

    def _score(self, refs: list[np.ndarray], ests: list[np.ndarray]) -> dict:
        """:func:`pyro_dvae.metrics.summarise` of the metrics of every (reference, estimate)."""
        rows = metrics.evaluate_pairs(refs, ests, self.fs, self.n_workers, self.test.rates)
        return metrics.summarise(rows, self.test.names)

    def _warn_narrow_band(self) -> None:
        """Log which test utterances get no ``pesq_wb`` (recorded below 16 kHz, resampled up)."""
        low = Counter(r for r in self.test.rates if r < metrics.WIDE_BAND_FS)
        if self.fs == metrics.WIDE_BAND_FS and low:
            rates = ", ".join(f"{n} at {r} Hz" for r, n in sorted(low.items()))
            log.warning(
                "pesq_wb refused for %d of %d test utterances recorded below %d Hz (%s) and "
                "resampled up: they hold nothing above half their rate, so their score would not "
                "be wide-band",
                low.total(),
                len(self.test),
                metrics.WIDE_BAND_FS,
                rates,
            )

    def render(self, x: torch.Tensor, out_dir: Path) -> list[Path]:
        """Griffin-Lim waveforms of generated power spectrograms ``(N, T, F)``, written as
        ``out_dir/sample_<i>.wav`` (peak 0.9), plus ``out_dir/samples.png`` of the first 8."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        power = x.detach().float().cpu().numpy()
        paths = []
        for i, p in enumerate(power):
            y = audio.griffin_lim(p, self.features.wlen, self.features.hop)
            paths.append(out_dir / f"sample_{i:02d}.wav")
            sf.write(paths[-1], 0.9 * y / max(np.abs(y).max(), 1e-12), self.fs)
        paths.append(out_dir / "samples.png")
        self._plot([(f"sample {i}", p) for i, p in enumerate(power[:8])], paths[-1], ("generated",))
        return paths

    def _plot(self, rows: list[tuple], path: Path, titles: tuple[str, ...]) -> None:
        """One figure row per ``(name, power (T, F), ...)``: log-power spectrograms, 80 dB range."""
        t_max = self.features.hop / self.fs
        fig = Figure(figsize=(4 * len(titles), 2.2 * len(rows)), layout="constrained")
        axes = fig.subplots(len(rows), len(titles), squeeze=False)
        for (name, *powers), row_axes in zip(rows, axes, strict=True):
            db = [10 * np.log10(np.maximum(p, 1e-12)).T for p in powers]
            vmax = max(d.max() for d in db)
            for d, title, ax in zip(db, titles, row_axes, strict=True):
                extent = (0, t_max * d.shape[1], 0, self.fs / 2000)
                image = ax.imshow(
                    d,
                    origin="lower",
                    aspect="auto",
                    extent=extent,
                    cmap="magma",
                    vmin=vmax - 80,
                    vmax=vmax,
                )
                ax.set(title=f"{name}: {title}", xlabel="time (s)", ylabel="kHz")
            fig.colorbar(image, ax=row_axes.tolist(), label="dB")
        fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------
# Feature computation and cache


def load_utterances(files: Sequence[Path], features: Features) -> tuple[list, list[str]]:
    """Read, resample and trim ``files``. Returns ``[(path, waveform (N,), recorded rate), ...]``
    and one message per skipped file (unreadable, empty, NaN or infinite samples, all zeros, or
    shorter than one window after trimming)."""
    kept, problems = [], []
    for path in files:
        try:
            x = audio.trim_silence(audio.read_audio(path, features.fs), features.top_db)
            if len(x) < features.wlen:
                raise audio.AudioFileError(
                    f"{path}: {len(x)} samples after silence trimming, fewer than one STFT window "
                    f"({features.wlen})"
                )
        except audio.AudioFileError as err:
            problems.append(f"skipped {err}")
            continue
        kept.append((path, x, audio.recorded_rate(path)))
    return kept, problems


def build_chunks(
    files: Sequence[Path],
    features: Features,
    groups: Sequence[str] | None,
    step: int | None = None,
) -> dict:
    """Training features of ``files``: ``{"power": (N, seq_len, F), "problems": [warnings raised on
    the way], "longest": STFT frames of the longest stream (0 when no file is usable), "rates":
    {path: recorded rate} of the files used}``.

    ``groups`` (one label per file) switches on concatenation: the trimmed utterances of a group,
    each divided by its peak, are joined in file order into one stream before chunking.
    ``step``: frames between chunk starts (default ``seq_len``, non-overlapping).
    """
    f = features
    utterances, problems = load_utterances(files, f)
    if groups is None:
        streams = [x for _, x, _ in utterances]
        power = [audio.chunk_power(x, f.wlen, f.hop, f.seq_len, step) for x in streams]
        short = [str(path) for (path, *_), p in zip(utterances, power, strict=True) if len(p) == 0]
        if short:
            problems.append(
                f"{len(short)} of {len(utterances)} files give no {f.seq_len}-frame chunk "
                f"({(f.seq_len - 1) * f.hop / f.fs:.2f} s) and are unused, e.g. {short[:3]}; "
                f"concat_utterances=true would use them"
            )
    else:
        label = dict(zip(files, groups, strict=True))
        joined: dict[str, list[np.ndarray]] = {}
        for path, x, _ in utterances:
            joined.setdefault(label[path], []).append(audio.peak_normalise(x))
        streams = [np.concatenate(joined[g]) for g in sorted(joined)]
        power = [audio.chunk_power(x, f.wlen, f.hop, f.seq_len, step) for x in streams]
    return {
        "power": torch.cat(power) if power else torch.zeros(0, f.seq_len, f.n_freq),
        "problems": problems,
        "longest": max((1 + len(x) // f.hop for x in streams), default=0),
        "rates": {str(path): rate for path, _, rate in utterances},
    }


def build_utterances(files: Sequence[Path], features: Features, base: Path) -> dict:
    """Test items of ``files``: ``{"names": [path below base, "/" → "__"], "waves": [trimmed
    waveform divided by its peak, float32 (N,)], "rates": {path: recorded rate}, "problems":
    [warnings raised on the way]}``, the utterances in the same order in all three."""
    utterances, problems = load_utterances(files, features)
    return {
        "names": ["__".join(p.relative_to(base).with_suffix("").parts) for p, *_ in utterances],
        "waves": [torch.from_numpy(audio.peak_normalise(x)).float() for _, x, _ in utterances],
        "rates": {str(path): rate for path, _, rate in utterances},
        "problems": problems,
    }


def _cache_path(task: str, split: str, files: Sequence[Path], config: dict) -> Path:
    """Cache file of one split, keyed by the files' paths, sizes and mtimes and by ``config``."""
    listing = [(str(p.resolve()), *_size_mtime(p)) for p in files]
    blob = json.dumps({"version": CACHE_VERSION, "files": listing, **config}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:24]
    return sources.cache_dir() / "features" / f"{task}-{split}-{key}.pt"


def _size_mtime(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _cached(path: Path, build: Callable[[], dict]) -> dict:
    """``torch.load(path)`` if present, else ``build()`` saved there; re-issues stored warnings."""
    if path.is_file():
        data = torch.load(path)
    else:
        data = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(data, tmp)
        os.replace(tmp, path)
    for message in data["problems"]:
        warnings.warn(message, stacklevel=3)
    return data


def _cap(files: list[Path], max_files: int | None) -> list[Path]:
    """At most ``max_files`` files, evenly spread over the sorted list (deterministic)."""
    if max_files is None or len(files) <= max_files:
        return files
    return [files[i * len(files) // max_files] for i in range(max_files)]


def resampling_message(name: str, rates: dict[str, int], fs: int) -> str | None:
    """``data=NAME: resampled 300 files from 22050 Hz to 16000 Hz`` for ``rates`` (file →
    recorded rate); None when every file is at ``fs``."""
    counts = Counter(rate for rate in rates.values() if rate != fs)
    if not counts:
        return None
    parts = [f"{n} file{'s' * (n != 1)} from {rate} Hz" for rate, n in sorted(counts.items())]
    listing = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return f"data={name}: resampled {listing} to {fs} Hz"


def no_chunk_message(
    name: str,
    split: str,
    features: Features,
    longest: int,
    n_files: int,
    concat: bool,
    max_files: int | None,
) -> str:
    """Why a split has no training chunk: no usable file, or ``seq_len`` above the ``longest``
    stream (in frames)."""
    if longest == 0:
        return (
            f"data={name}: the {split} split has no usable recording among its {n_files} files "
            f"(each skipped file is named in a warning; data.max_files={max_files})"
        )
    what = "concatenated stream" if concat else "file"
    advice = "" if concat else ", or set data.concat_utterances=true to join the files"
    seconds = longest * features.hop / features.fs
    return (
        f"data.seq_len={features.seq_len} frames is longer than the longest {what} of the "
        f"{split} split of data={name}: {longest} frames ({seconds:.2f} s) after silence "
        f"trimming, among {n_files} files; set data.seq_len to at most {longest}{advice}"
    )


def make_task(
    name: str,
    splits: dict[str, list[Path]],
    base: Path,
    features: Features,
    concat_utterances: bool,
    group_of: Callable[[Path], str],
    max_files: int | None = None,
    n_workers: int | None = None,
    train_chunk_hop: int | None = None,
) -> SpeechTask:
    """Build (or load from the cache) the features of ``splits`` = ``{"train", "val", "test"}`` file
    lists and wrap them in a :class:`SpeechTask`. ``group_of`` gives a file's concatenation group
    (its speaker); test names are paths below ``base``. ``train_chunk_hop`` (frames between the
    starts of training chunks; default ``seq_len``) makes training chunks overlap; validation
    chunks never do."""
    if features.seq_len < 2:
        raise ValueError(
            f"data.seq_len={features.seq_len}: expected at least 2 STFT frames per training chunk"
        )
    if train_chunk_hop is not None and not 0 < train_chunk_hop <= features.seq_len:
        raise ValueError(
            f"data.train_chunk_hop={train_chunk_hop}: expected null or 1..seq_len "
            f"({features.seq_len}) frames between the starts of training chunks"
        )
    config = {k: float(v) for k, v in asdict(features).items()}  # 30 and 30.0: the same key
    chunk_sets, rates = {}, {}
    for split in ("train", "val"):
        files = _cap(sorted(splits[split]), max_files)
        groups = [group_of(p) for p in files] if concat_utterances else None
        step = train_chunk_hop if split == "train" and train_chunk_hop != features.seq_len else None
        key = {**config, "groups": groups, **({"step": step} if step else {})}
        path = _cache_path(name, split, files, key)
        chunks = _cached(path, partial(build_chunks, files, features, groups, step))
        if len(chunks["power"]) == 0:
            raise ValueError(
                no_chunk_message(
                    name,
                    split,
                    features,
                    chunks["longest"],
                    len(files),
                    concat_utterances,
                    max_files,
                )
            )
        chunk_sets[split] = ChunkDataset(chunks["power"])
        rates.update(chunks["rates"])
    test_files = _cap(sorted(splits["test"]), max_files)
    test_path = _cache_path(name, "test", test_files, {**config, "base": str(base)})
    test = _cached(test_path, partial(build_utterances, test_files, features, base))
    if not test["waves"]:
        raise ValueError(
            f"data={name}: the test split has no usable recording among its {len(test_files)} "
            f"files (each skipped file is named in a warning)"
        )
    rates.update(test["rates"])
    message = resampling_message(name, rates, features.fs)
    if message:
        log.info(message)
    utterances = UtteranceDataset(
        test["names"], test["waves"], features.wlen, features.hop, list(test["rates"].values())
    )
    return SpeechTask(name, features, chunk_sets["train"], chunk_sets["val"], utterances, n_workers)


# ---------------------------------------------------------------------------------------------
# Corpora


def fsdd_split(files: Sequence[Path], val_indices: Sequence[int]) -> dict[str, list[Path]]:
    """Official FSDD split by the file name ``{digit}_{speaker}_{index}.wav``: index 0-4 = test;
    ``val_indices`` (default 5-9: 5 takes of every speaker and digit) = validation; the rest =
    train. Files with other names are skipped with a warning."""
    splits: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    for path in files:
        match = FSDD_NAME.fullmatch(path.stem)
        if match is None:
            warnings.warn(
                f"skipped {path}: not an FSDD name '{{digit}}_{{speaker}}_{{index}}.wav'",
                stacklevel=2,
            )
            continue
        index = int(match.group(3))
        split = "test" if index < 5 else "val" if index in val_indices else "train"
        splits[split].append(path)
    return splits


def random_split(
    files: Sequence[Path], base: Path, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Path]]:
    """Seeded split by file: the files, sorted by their path below ``base``, are permuted with
    ``numpy.random.default_rng(seed)``; the first ``round(test_fraction n)`` are test, the next
    ``round(val_fraction n)`` validation, the rest train."""
    files = sorted(files, key=lambda p: p.relative_to(base).as_posix())
    order = np.random.default_rng(seed).permutation(len(files))
    n_test, n_val = round(test_fraction * len(files)), round(val_fraction * len(files))
    parts = {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }
    return {split: sorted(files[i] for i in idx) for split, idx in parts.items()}


def _check_modality(name: str, modality: str) -> None:
    if modality != "speech":
        raise ValueError(f"data={name}: modality must be 'speech', got {modality!r}")


@register_task("fsdd")
def build_fsdd(
    name: str = "fsdd",
    modality: str = "speech",
    root: str | None = None,
    max_files: int | None = None,
    fs: int = 8000,
    wlen_sec: float = 0.064,
    hop_percent: float = 0.25,
    seq_len: int = 50,
    top_db: float = 30.0,
    concat_utterances: bool = True,
    val_indices: Sequence[int] = (5, 6, 7, 8, 9),
    n_workers: int | None = None,
    train_chunk_hop: int | None = None,
) -> SpeechTask:
    """Free Spoken Digit Dataset (``<root>/fsdd/recordings``), split by :func:`fsdd_split`;
    concatenation groups are speakers."""
    _check_modality(name, modality)
    folder = sources.locate("fsdd", root) / "recordings"
    splits = fsdd_split(audio.find_audio(folder), tuple(val_indices))
    features = Features(fs, wlen_sec, hop_percent, seq_len, top_db)
    return make_task(
        name,
        splits,
        folder,
        features,
        concat_utterances,
        lambda p: FSDD_NAME.fullmatch(p.stem).group(2),
        max_files,
        n_workers,
        train_chunk_hop,
    )


@register_task("asterisk16k")
def build_asterisk16k(
    name: str = "asterisk16k",
    modality: str = "speech",
    root: str | None = None,
    max_files: int | None = None,
    fs: int = 16000,
    wlen_sec: float = 0.064,
    hop_percent: float = 0.25,
    seq_len: int = 50,
    top_db: float = 30.0,
    concat_utterances: bool = True,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    n_workers: int | None = None,
    train_chunk_hop: int | None = None,
) -> SpeechTask:
    """Asterisk prompts of one speaker (``<root>/asterisk_en_allison_16k/audio``), split by
    :func:`random_split`; concatenation groups are folders."""
    _check_modality(name, modality)
    folder = sources.locate("asterisk_en_allison_16k", root) / "audio"
    splits = random_split(audio.find_audio(folder), folder, val_fraction, test_fraction, split_seed)
    features = Features(fs, wlen_sec, hop_percent, seq_len, top_db)
    return make_task(
        name,
        splits,
        folder,
        features,
        concat_utterances,
        lambda p: str(p.parent),
        max_files,
        n_workers,
        train_chunk_hop,
    )


@register_task("wav_folder")
def build_wav_folder(
    name: str = "wav_folder",
    modality: str = "speech",
    root: str | None = None,
    max_files: int | None = None,
    train_dir: str | None = None,
    val_dir: str | None = None,
    test_dir: str | None = None,
    fs: int = 16000,
    wlen_sec: float = 0.064,
    hop_percent: float = 0.25,
    seq_len: int = 50,
    top_db: float = 30.0,
    concat_utterances: bool = False,
    n_workers: int | None = None,
    train_chunk_hop: int | None = None,
) -> SpeechTask:
    """Your own recordings: every wav / flac below ``train_dir``, ``val_dir`` and ``test_dir``
    (relative paths are taken below ``root`` when it is given). Concatenation groups are folders."""
    _check_modality(name, modality)
    dirs = {"train": train_dir, "val": val_dir, "test": test_dir}
    for split, folder in dirs.items():
        if folder is None:
            raise ValueError(
                f"data={name} needs data.{split}_dir=DIR, a folder of wav/flac files for {split}"
            )
    base = Path(root).expanduser() if root is not None else Path()
    folders = {split: base / Path(folder).expanduser() for split, folder in dirs.items()}
    splits = {split: audio.find_audio(folder) for split, folder in folders.items()}
    features = Features(fs, wlen_sec, hop_percent, seq_len, top_db)
    return make_task(
        name,
        splits,
        folders["test"],
        features,
        concat_utterances,
        lambda p: str(p.parent),
        max_files,
        n_workers,
        train_chunk_hop,
    )

"""Audio primitives for the speech tasks: reading, silence trimming, STFT / iSTFT, chunking.

Conventions (spec §8.1): a sine analysis window of ``wlen = 2^ceil(log2(wlen_sec * fs))`` samples,
hop ``hop_percent * wlen``, FFT size ``wlen`` (``F = wlen // 2 + 1`` bins), ``center=True`` with
reflect padding. Waveforms are 1-D float arrays ``(N,)``; spectrograms are time-major ``(T, F)``
(batched ``(B, T, F)``), the layout used everywhere in the project.
"""

from __future__ import annotations

import math
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import soxr
import torch

AUDIO_SUFFIXES = (".wav", ".flac")


class AudioFileError(ValueError):
    """An audio file that cannot be used; the message names the file and what was wrong."""


def stft_size(fs: int, wlen_sec: float = 0.064, hop_percent: float = 0.25) -> tuple[int, int]:
    """Window length (a power of two) and hop in samples: ``(512, 128)`` at 8 kHz, ``(1024, 256)``
    at 16 kHz with the defaults."""
    wlen = 2 ** math.ceil(math.log2(wlen_sec * fs))
    return wlen, int(hop_percent * wlen)


def sine_window(wlen: int) -> torch.Tensor:
    """``w[n] = sin(pi (n + 1/2) / wlen)``, ``n = 0 .. wlen-1``; float32 ``(wlen,)``."""
    n = torch.arange(wlen, dtype=torch.float64)
    return torch.sin(math.pi * (n + 0.5) / wlen).float()


def stft(x: torch.Tensor, wlen: int, hop: int) -> torch.Tensor:
    """Complex STFT of waveforms ``(..., N)`` → ``(..., T, F)`` with ``T = 1 + N // hop``."""
    spec = torch.stft(
        x.reshape(-1, x.shape[-1]),
        n_fft=wlen,
        hop_length=hop,
        window=sine_window(wlen).to(x.device, x.dtype),
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    return spec.transpose(-1, -2).reshape(*x.shape[:-1], spec.shape[-1], spec.shape[-2])


def istft(spec: torch.Tensor, wlen: int, hop: int, length: int) -> torch.Tensor:
    """Inverse of :func:`stft` (overlap-add): ``(..., T, F)`` complex → ``(..., length)``."""
    out = torch.istft(
        spec.reshape(-1, *spec.shape[-2:]).transpose(-1, -2),
        n_fft=wlen,
        hop_length=hop,
        window=sine_window(wlen).to(spec.device, spec.real.dtype),
        center=True,
        normalized=False,
        onesided=True,
        length=length,
    )
    return out.reshape(*spec.shape[:-2], length)


def griffin_lim(power: np.ndarray, wlen: int, hop: int, n_iter: int = 64) -> np.ndarray:
    """Waveform ``(hop * (T - 1),)`` whose STFT magnitude approximates ``sqrt(power)``, power
    ``(T, F)``: librosa's Griffin-Lim with the window and hop of :func:`stft`, phase seed 0."""
    return librosa.griffinlim(
        np.sqrt(np.maximum(power, 0.0)).T,
        n_iter=n_iter,
        hop_length=hop,
        win_length=wlen,
        n_fft=wlen,
        window=sine_window(wlen).numpy(),
        center=True,
        random_state=0,
    )


def find_audio(folder: str | Path) -> list[Path]:
    """All ``.wav`` / ``.flac`` files (any case) below ``folder``, recursively, sorted.

    Raises:
        FileNotFoundError: naming ``folder``, when it is not a folder or holds no such file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder (expected a folder of wav/flac files)")
    files = folder.rglob("*")
    found = sorted(p for p in files if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not found:
        raise FileNotFoundError(f"{folder}: no wav or flac file in this folder or below it")
    return found


def read_audio(path: Path, fs: int) -> np.ndarray:
    """Mono float32 waveform ``(N,)`` of ``path`` at ``fs`` Hz (channels averaged, soxr resampling).

    Raises:
        AudioFileError: the file cannot be decoded, is empty, holds NaN or infinite samples (a
            float file can; resampling would spread them) or is all zeros.
    """
    try:
        x, fs_file = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise AudioFileError(f"{path}: unreadable audio file ({err})") from err
    if x.size == 0:
        raise AudioFileError(f"{path}: empty audio file")
    finite = np.isfinite(x)
    if not finite.all():
        first = int(np.argmin(finite.all(axis=1)))
        raise AudioFileError(
            f"{path}: {int((~finite).sum())} non-finite samples (NaN or inf), the first at "
            f"{first / fs_file:.3f} s (sample {first}); expected finite audio"
        )
    x = x.mean(axis=1)
    if fs_file != fs:
        x = soxr.resample(x, fs_file, fs, quality="HQ").astype(np.float32)
    if not np.any(x):
        raise AudioFileError(f"{path}: all samples are zero")
    return x


def recorded_rate(path: Path) -> int:
    """Sample rate (Hz) the audio file ``path`` is stored at, before any resampling."""
    return sf.info(path).samplerate


def trim_silence(x: np.ndarray, top_db: float = 30.0) -> np.ndarray:
    """``x`` without the leading and trailing parts quieter than ``top_db`` below its loudest frame
    (``librosa.effects.trim`` with its default 2048 / 512 framing)."""
    return librosa.effects.trim(x, top_db=top_db)[0]


def peak_normalise(x: np.ndarray) -> np.ndarray:
    """``x / max|x|`` along the last axis (rows that are all zeros are left as they are)."""
    peak = np.abs(x).max(axis=-1, keepdims=True)
    return x / np.where(peak > 0, peak, 1.0)


def chunk(x: np.ndarray, hop: int, seq_len: int, step: int | None = None) -> np.ndarray:
    """Chunks ``(n, (seq_len - 1) * hop)`` of ``x``, each of ``seq_len`` frames, one every ``step``
    frames (default ``seq_len``: non-overlapping, spec §8.1).

    Chunk ``i`` covers the STFT frames ``i * step .. i * step + seq_len - 1`` of ``x``: it starts
    at sample ``i * step * hop``. With ``step = seq_len``, ``n = (1 + len(x) // hop) // seq_len``
    (spec §8.1); the rest is dropped.
    """
    step = step or seq_len
    n_frames = 1 + len(x) // hop
    n = max(0, (n_frames - seq_len) // step + 1)
    length = (seq_len - 1) * hop
    starts = np.arange(n) * step * hop
    return np.stack([x[s : s + length] for s in starts]) if n else np.zeros((0, length), x.dtype)


def chunk_power(
    x: np.ndarray, wlen: int, hop: int, seq_len: int, step: int | None = None
) -> torch.Tensor:
    """Training features of one stream ``(N,)``: every :func:`chunk` divided by its own peak, then
    ``|STFT|^2``; float32 ``(n, seq_len, F)``. Chunks that are all zeros are dropped."""
    chunks = chunk(x, hop, seq_len, step)
    chunks = chunks[np.any(chunks, axis=1)]
    if len(chunks) == 0:
        return torch.zeros(0, seq_len, wlen // 2 + 1)
    spec = stft(torch.from_numpy(peak_normalise(chunks)).float(), wlen, hop)
    return spec.abs().square().float()

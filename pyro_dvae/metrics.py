"""Speech quality metrics (spec §8.2) and their summary over a test set.

Every metric is a small function of a reference waveform ``ref`` and an estimate ``est``: 1-D float
arrays ``(N,)`` of the same length and sample rate. Signals of different lengths or shapes are an
error (:class:`MetricInputError`), never trimmed silently: a length mismatch means the two signals
are not aligned. :func:`evaluate_pairs` computes the metrics for many utterances in worker
processes; :func:`summarise` turns the rows into a JSON-ready dict that says, for every metric,
how many utterances its mean covers (``counts``).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat

import numpy as np
import pesq
import pystoi

EPS = float(np.finfo(np.float64).eps)
WIDE_BAND_FS = 16000
"""The rate of wide-band PESQ (P.862.2): signals with content up to 8 kHz."""


class MetricInputError(ValueError):
    """A reference / estimate pair a metric is not defined for; the message says why."""


def as_pair(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``ref`` and ``est`` as float64 arrays ``(N,)``.

    Raises:
        MetricInputError: they are not 1-D or differ in length.
    """
    ref, est = np.asarray(ref, np.float64), np.asarray(est, np.float64)
    if ref.ndim != 1 or est.shape != ref.shape:
        raise MetricInputError(
            f"reference {ref.shape} and estimate {est.shape}: expected two 1-D signals of the "
            f"same length (samples at the same rate, aligned); trim or pad them first"
        )
    return ref, est


def si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    """Scale-invariant SDR in dB, without mean removal (spec §8.2).

    ``a = (eps + <ref, est>) / (eps + |ref|^2)``, target ``a ref``, residual ``est - a ref``,
    ``10 log10((eps + |target|^2) / (eps + |residual|^2))``, ``eps`` the float64 machine epsilon.
    A silent estimate scores 0 dB (target and residual are both ``~0``), as with the spec's ``eps``.

    Raises:
        MetricInputError: ``ref`` is silent (all zeros: there is no target to project on; a
            reference is never silent in the test sets, whose silent files are skipped), or the
            two differ in length (see :func:`as_pair`).
    """
    ref, est = as_pair(ref, est)
    if not np.any(ref):
        raise MetricInputError("SI-SDR is undefined for a silent (all-zero) reference")
    target = (EPS + ref @ est) / (EPS + ref @ ref) * ref
    residual = est - target
    return float(10 * np.log10((EPS + target @ target) / (EPS + residual @ residual)))


def rmse(ref: np.ndarray, est: np.ndarray) -> float:
    """Root-mean-square error after the least-squares gain ``alpha = <est, ref> / |est|^2``:
    ``sqrt(mean((alpha est - ref)^2))`` (spec §8.2; ``eps`` is added to ``|est|^2``)."""
    ref, est = as_pair(ref, est)
    alpha = (est @ ref) / (est @ est + EPS)
    return float(np.sqrt(np.mean((alpha * est - ref) ** 2)))


def pesq_score(ref: np.ndarray, est: np.ndarray, fs: int, mode: str = "nb") -> float:
    """PESQ of the ``pesq`` package (ITU-T P.862): ``mode='nb'`` (8 or 16 kHz) gives the P.862.1
    MOS-LQO, ``'wb'`` (16 kHz) the P.862.2 MOS-LQO. NaN where PESQ fails (e.g. no utterance found).

    The original code reports raw narrow-band P.862 scores (pypesq); the MOS-LQO ``m`` maps back to
    them by ``(ln(4 / (m - 0.999) - 1) - 4.6607) / -1.4945``.
    """
    ref, est = as_pair(ref, est)
    try:
        return float(pesq.pesq(fs, ref, est, mode))
    except pesq.PesqError:
        return float("nan")


def estoi(ref: np.ndarray, est: np.ndarray, fs: int) -> float:
    """Extended STOI (pystoi, ``extended=True``) in [0, 1]. NaN where the speech part of ``ref`` is
    shorter than one 384 ms analysis segment (pystoi then warns and returns 1e-5)."""
    ref, est = as_pair(ref, est)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = pystoi.stoi(ref, est, fs, extended=True)
    too_short = any(issubclass(w.category, RuntimeWarning) for w in caught)
    return float("nan") if too_short else float(value)


def utterance_metrics(
    ref: np.ndarray, est: np.ndarray, fs: int, recorded_fs: int | None = None
) -> dict[str, float]:
    """All metrics of one utterance: ``si_sdr``, ``rmse``, ``estoi``, ``pesq_nb`` (at 8 and 16 kHz)
    and ``pesq_wb`` (at 16 kHz).

    ``recorded_fs``: the rate the reference was recorded at, before resampling to ``fs`` (None: at
    ``fs``). Wide-band PESQ is refused (NaN, so counted as not scored) for a recording below
    :data:`WIDE_BAND_FS` resampled up: it has nothing between ``recorded_fs / 2`` and 8 kHz, so
    the score would not be a wide-band one.
    """
    row = {"si_sdr": si_sdr(ref, est), "rmse": rmse(ref, est), "estoi": estoi(ref, est, fs)}
    if fs in (8000, 16000):
        row["pesq_nb"] = pesq_score(ref, est, fs, "nb")
    if fs == WIDE_BAND_FS:
        wide = recorded_fs is None or recorded_fs >= WIDE_BAND_FS
        row["pesq_wb"] = pesq_score(ref, est, fs, "wb") if wide else float("nan")
    return row


def evaluate_pairs(
    refs: Sequence[np.ndarray],
    ests: Sequence[np.ndarray],
    fs: int,
    n_workers: int | None = None,
    recorded_fs: Sequence[int | None] | None = None,
) -> list[dict[str, float]]:
    """:func:`utterance_metrics` of every ``(refs[i], ests[i])`` pair (recorded at
    ``recorded_fs[i]``; None: all at ``fs``), in ``n_workers`` processes (default
    ``min(4, os.cpu_count())``; ``n_workers <= 1`` computes them in this process)."""
    n_workers = min(4, os.cpu_count() or 1) if n_workers is None else n_workers
    recorded_fs = repeat(None) if recorded_fs is None else recorded_fs
    if n_workers <= 1 or len(refs) <= 1:
        return list(map(utterance_metrics, refs, ests, repeat(fs), recorded_fs))
    # Forked workers start at once and need not re-run the caller's script (as spawned ones do);
    # they only run numpy / C code, so the threads of the parent (torch) do not matter to them.
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with warnings.catch_warnings(), ProcessPoolExecutor(n_workers, mp_context=context) as pool:
        warnings.filterwarnings("ignore", ".*multi-threaded, use of fork", DeprecationWarning)
        chunksize = max(1, len(refs) // (4 * n_workers))
        return list(
            pool.map(utterance_metrics, refs, ests, repeat(fs), recorded_fs, chunksize=chunksize)
        )


def median_ci(values: Sequence[float]) -> tuple[float, float]:
    """Median and the half-width ``1.57 IQR / sqrt(n)`` of its confidence interval (spec §8.2),
    NaNs ignored. ``IQR = q75 - q25`` with numpy's linear percentile interpolation."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return float(q50), float(1.57 * (q75 - q25) / np.sqrt(len(v)))


def summarise(rows: Sequence[dict[str, float]], names: Sequence[str], max_listed: int = 20) -> dict:
    """JSON-ready summary of per-utterance metric ``rows``.

    Returns ``{metric: mean, ..., "n_utterances": n, "median": {metric: {"median", "ci"}},
    "n_failed": {metric: number of NaN rows}, "counts": {metric: {"scored": n - n_failed,
    "items": n}}}``, plus ``"per_utterance"`` (with ``names``) when ``n <= max_listed``. NaN rows
    (a metric that failed or was refused) are left out of the means and medians; a metric with
    no valid row has mean, median and ci ``None``.
    """
    result: dict = {"n_utterances": len(rows), "median": {}, "n_failed": {}, "counts": {}}
    for key in rows[0]:
        v = np.array([row[key] for row in rows], np.float64)
        ok = ~np.isnan(v)
        result["n_failed"][key] = int((~ok).sum())
        result["counts"][key] = {"scored": int(ok.sum()), "items": len(rows)}
        if ok.any():
            result[key] = float(v[ok].mean())
            med, ci = median_ci(v)
            result["median"][key] = {"median": med, "ci": ci}
        else:
            result[key] = None
            result["median"][key] = {"median": None, "ci": None}
    if len(rows) <= max_listed:
        result["per_utterance"] = [
            {"name": name, **{k: (None if np.isnan(x) else x) for k, x in row.items()}}
            for name, row in zip(names, rows, strict=True)
        ]
    return result

"""Fault harness: a tiny training (the Trainer, synthetic data, CPU, fixed seed) is killed with
SIGKILL at random points, also in the middle of a checkpoint write, and stopped with SIGTERM and
with SIGINT (Ctrl-C). Each time a new process resumes from ``last.pt``, and the run ends with
exactly the losses and weights of an uninterrupted run.

The training processes are forked from the test process, which has torch imported already, so a
fault run starts in milliseconds instead of an interpreter start.
"""

import csv
import io
import logging
import multiprocessing
import os
import random
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from pyro_dvae.likelihoods import ExponentialPower
from pyro_dvae.models import build_model
from pyro_dvae.train import TrainConfig, Trainer, load_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="forks training processes")

EPOCHS = 12
KILLS = 12  # SIGKILLs per harness run, TORN of them inside a torch.save
TORN = 2
TINY = dict(z_dim=3, dense_x_gx=[8], dim_rnn_gx=6, dense_ztm1_g=[4], dense_g_z=[5], dense_z_x=[7])
LOSS_COLUMNS = ("epoch", "kl_weight", "lr", "train_loss", "val_loss", "val_recon", "val_kl",
                "best_epoch")  # fmt: skip
FORK = multiprocessing.get_context("fork")


def _data(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return list(torch.rand(n, 6, 10, generator=g) + 0.01)


def train(run_dir: Path) -> None:
    """What every training process runs: a tiny DKF with warm-up and LR decay, resumed from
    ``last.pt`` when there is one (as ``resume=true`` does)."""
    torch.manual_seed(0)
    model = build_model("dkf", 10, ExponentialPower(), **TINY)
    cfg = TrainConfig(epochs=EPOCHS, batch_size=8, lr=1e-2, warmup_every=2, warmup_step=0.5,
                      early_stop_patience=100, progress=False, lr_decay=0.95)  # fmt: skip
    trainer = Trainer(model, _data(24, 0), _data(8, 1), cfg, run_dir, torch.device("cpu"), seed=0)
    if (run_dir / "last.pt").exists():
        trainer.resume(run_dir / "last.pt")
    trainer.fit()


def _own_tqdm_lock() -> None:
    """Give this forked process a tqdm lock of its own. tqdm's default lock holds a
    multiprocessing semaphore that a forked child shares with its parent; a child killed while
    it holds it (every epoch's bar, even a disabled one, takes it once) would leave it taken,
    and every later bar in the test process and in later children would wait for ever."""
    tqdm.set_lock(threading.RLock())


def _process(run_dir: Path, log_path: Path, torn_save: int | None) -> None:
    """Body of a training process: the trainer's warnings go to ``log_path``; a stop by
    SIGINT / SIGTERM exits with 130. ``torn_save=n``: the n-th ``torch.save`` writes half of its
    file and the process kills itself with SIGKILL (a crash in the middle of a write)."""
    _own_tqdm_lock()
    handler = logging.FileHandler(log_path)
    handler.setLevel(logging.WARNING)
    logging.getLogger("pyro_dvae").addHandler(handler)
    if torn_save:
        save, calls = torch.save, iter(range(1, sys.maxsize))

        def torn(obj, path, *args, **kwargs):
            if next(calls) == torn_save:
                data = io.BytesIO()
                save(obj, data)
                Path(path).write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            save(obj, path, *args, **kwargs)

        torch.save = torn  # this process's own torch: the library is untouched
    try:
        train(run_dir)
    except KeyboardInterrupt:
        sys.exit(130)


def _start(run_dir: Path, log_path: Path, torn_save: int | None = None):
    process = FORK.Process(target=_process, args=(run_dir, log_path, torn_save))
    process.start()
    return process


def _run_to_end(run_dir: Path, log_path: Path) -> None:
    process = _start(run_dir, log_path)
    process.join(timeout=120)
    assert process.exitcode == 0, log_path.read_text()


def _epochs_saved(run_dir: Path) -> int:
    path = run_dir / "last.pt"
    return load_checkpoint(path)["state"]["epoch"] if path.exists() else 0


def _losses(run_dir: Path) -> list[list[str]]:
    return [[r[k] for k in LOSS_COLUMNS] for r in csv.DictReader(open(run_dir / "metrics.csv"))]


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    """Every loss column of metrics.csv and the history, the weights of last.pt and best.pt and
    the optimiser state equal the uninterrupted run's exactly."""
    assert _losses(run_dir) == _losses(reference)
    for name in ("last.pt", "best.pt"):
        got, want = load_checkpoint(run_dir / name), load_checkpoint(reference / name)
        assert got["model"].keys() == want["model"].keys()
        assert all(torch.equal(got["model"][k], v) for k, v in want["model"].items()), name
    got, want = load_checkpoint(run_dir / "last.pt"), load_checkpoint(reference / "last.pt")
    keep = set(LOSS_COLUMNS)
    assert [{k: v for k, v in r.items() if k in keep} for r in got["state"]["history"]] == [
        {k: v for k, v in r.items() if k in keep} for r in want["state"]["history"]
    ]
    moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in got["optimizer"]["state"].values()]
    expected = [(s["exp_avg"], s["exp_avg_sq"]) for s in want["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for m, e in zip(moments, expected, strict=True)
               for a, b in zip(m, e, strict=True))  # fmt: skip


def _wait_for_epochs(run_dir: Path, epochs: int, process) -> None:
    """Until ``metrics.csv`` has ``epochs`` rows (written after ``last.pt``) or ``process``
    ends."""
    deadline = time.monotonic() + 60
    while process.is_alive() and time.monotonic() < deadline:
        path = run_dir / "metrics.csv"
        if path.exists() and len(path.read_text().splitlines()) > epochs:
            return
        time.sleep(0.002)


def _die_holding_tqdms_lock() -> None:
    _own_tqdm_lock()
    tqdm.get_lock().acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_process_killed_holding_tqdms_lock_blocks_no_other():
    """The harness's isolation: a fault process SIGKILLed inside tqdm's lock (as a random kill
    can land) leaves this process able to make progress bars (seen to hang for ever without
    :func:`_own_tqdm_lock`)."""
    tqdm(disable=True)  # the test process's own lock exists before the fork, as in the harness
    process = FORK.Process(target=_die_holding_tqdms_lock)
    process.start()
    process.join(timeout=60)
    assert process.exitcode == -signal.SIGKILL
    made = []
    thread = threading.Thread(target=lambda: made.append(tqdm(disable=True)), daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert made, "a progress bar waited for a lock held by a killed process"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted run, and its seconds per epoch after the first."""
    run_dir = tmp_path_factory.mktemp("reference")
    process = _start(run_dir, run_dir / "log.txt")
    _wait_for_epochs(run_dir, 1, process)
    first = time.perf_counter()
    process.join(timeout=120)
    assert process.exitcode == 0 and _epochs_saved(run_dir) == EPOCHS
    return run_dir, (time.perf_counter() - first) / (EPOCHS - 1)


def _temporary_files(run_dir: Path) -> dict[Path, int]:
    """The half-written files a kill can leave (``.last.pt.tmp`` ...) and their mtimes."""
    return {p: p.stat().st_mtime_ns for p in run_dir.glob(".*.tmp")}


def test_kill_9_at_random_points_loses_nothing(reference, tmp_path):
    """Each process is killed at a random point: after 0-1 more epochs are saved, at a random
    moment of the next one (start-up, resume, training, validation or writes), or by the
    ``torn_save`` hook in the middle of a ``torch.save``."""
    reference_dir, epoch_seconds = reference
    run_dir, rng = tmp_path / "run", random.Random(11)
    torn = set(rng.sample(range(KILLS), TORN))
    kills, in_writes, progress = 0, 0, []
    for attempt in range(KILLS):
        saved, before = _epochs_saved(run_dir), _temporary_files(run_dir)
        torn_save = rng.randint(1, 2) if attempt in torn else None
        process = _start(run_dir, tmp_path / f"{attempt}.log", torn_save)
        if torn_save:
            process.join(timeout=60)
        else:
            _wait_for_epochs(run_dir, saved + min(rng.randint(0, 1), EPOCHS - 2 - saved), process)
            process.join(timeout=rng.uniform(0, epoch_seconds))
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
            process.join()
        assert process.exitcode == -signal.SIGKILL, (tmp_path / f"{attempt}.log").read_text()
        kills += 1
        progress.append(_epochs_saved(run_dir))
        assert progress[-1] >= saved  # last.pt always loads and never goes back
        left = [p for p, mtime in _temporary_files(run_dir).items() if before.get(p) != mtime]
        in_writes += bool(left)  # killed between a temporary file's creation and its rename
        if torn_save:
            (half,) = left
            with pytest.raises(ValueError, match=rf"{re.escape(half.name)} is not a readable"):
                load_checkpoint(half)
    assert kills == KILLS and in_writes >= TORN and 0 < progress[-1] < EPOCHS
    _run_to_end(run_dir, tmp_path / "final.log")
    _assert_same_run(run_dir, reference_dir)
    print(f"\n{kills} SIGKILLs ({in_writes} during a write) survived, epochs saved after each: "
          f"{progress}; nothing lost")  # fmt: skip


def test_sigterm_and_ctrl_c_stop_with_a_resumable_run(reference, tmp_path):
    reference_dir, epoch_seconds = reference
    run_dir, rng = tmp_path / "run", random.Random(5)
    for stop in (signal.SIGTERM, signal.SIGINT):
        saved, log_path = _epochs_saved(run_dir), tmp_path / f"{stop.name}.log"
        process = _start(run_dir, log_path)
        _wait_for_epochs(run_dir, saved + 1, process)  # fit() is running
        time.sleep(rng.uniform(0, 2 * epoch_seconds))
        os.kill(process.pid, stop)
        process.join(timeout=60)
        assert process.exitcode == 130
        (line,) = log_path.read_text().splitlines()
        done = re.fullmatch(
            rf"stopped by {stop.name}: \S+last\.pt holds epochs 0-(\d+); continue with "
            "resume=true",
            line,
        )
        assert done, line
        assert saved < _epochs_saved(run_dir) == int(done[1]) + 1 < EPOCHS
        assert not list(run_dir.glob(".*.tmp"))  # the stop waited for the epoch's writes
    _run_to_end(run_dir, tmp_path / "final.log")
    _assert_same_run(run_dir, reference_dir)

"""experiments/long_run.py: the wall time of a session is recorded however the session ends."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import long_run  # noqa: E402  (a script, not a package module)


@pytest.fixture
def sleeping_trainer(monkeypatch):
    """``long_run`` starts ``sleep 30`` instead of ``experiments/run.py``; yields its processes,
    and the callbacks in ``on_start`` run once it has started."""
    started, on_start = [], []
    popen = subprocess.Popen

    def fake(args, cwd):
        started.append(popen(["sleep", "30"]))
        for callback in on_start:
            callback()
        return started[-1]

    monkeypatch.setattr(long_run.subprocess, "Popen", fake)
    yield started, on_start


def test_a_session_stopped_by_sigterm_still_adds_its_wall_time(tmp_path, sleeping_trainer):
    (tmp_path / "wall.json").write_text(json.dumps({"seconds": 100.0, "sessions": 2}))
    handler = signal.getsignal(signal.SIGTERM)
    # SIGTERM 1 s after the trainer started, so at least 1 s after the session's clock started
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    sleeping_trainer[1].append(timer.start)
    start = time.monotonic()
    with pytest.raises(SystemExit):
        long_run.train(tmp_path, minutes=5, overrides=[])
    elapsed = time.monotonic() - start
    (trainer,) = sleeping_trainer[0]
    assert trainer.poll() is not None  # stopped, not left running
    wall = json.loads((tmp_path / "wall.json").read_text())
    assert wall["sessions"] == 3
    assert 100.0 + 1.0 <= wall["seconds"] <= 100.0 + elapsed
    assert signal.getsignal(signal.SIGTERM) is handler  # restored


def test_a_session_at_its_budget_stops_the_trainer_and_adds_its_time(tmp_path, sleeping_trainer):
    long_run.train(tmp_path, minutes=0.02, overrides=[])  # 1.2 s
    (trainer,) = sleeping_trainer[0]
    assert trainer.returncode == -signal.SIGTERM
    wall = json.loads((tmp_path / "wall.json").read_text())
    assert wall["sessions"] == 1 and wall["seconds"] >= 1.2

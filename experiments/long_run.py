"""Train (or resume) one run within a wall-clock budget, for runs that span several sessions.

    python experiments/long_run.py RUN_DIR --minutes 150 -- +experiment=dmm_jsb threads=1

Starts ``experiments/run.py`` with the overrides after ``--`` and ``hydra.run.dir=RUN_DIR``
(``resume=true`` when ``RUN_DIR/last.pt`` exists), and stops it with SIGTERM after ``--minutes``
(the trainer stops between two epochs' writes, so ``last.pt`` holds the last completed epoch).
The wall time of every session is added to ``RUN_DIR/wall.json`` (seconds, sessions), so a
table can report the total time a result took; also when this process is itself stopped (SIGTERM,
as at the end of a working session, or Ctrl-C): it stops the trainer first, then records.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(run_dir: Path, minutes: float, overrides: list[str]) -> bool:
    """Train (or resume) in ``run_dir`` for at most ``minutes``; adds the session's wall time
    to ``wall.json``, also when a SIGTERM or Ctrl-C stops this process (which then exits after
    the trainer has stopped). Returns whether an epoch was added."""
    wall_file = run_dir / "wall.json"
    wall = json.loads(wall_file.read_text()) if wall_file.is_file() else {"seconds": 0.0}
    before = epochs_done(run_dir)
    args = [*overrides, f"hydra.run.dir={run_dir}"]
    if (run_dir / "last.pt").is_file():
        args.append("resume=true")
    start = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # before the trainer exists
    process = None
    try:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "experiments" / "run.py"), *args], cwd=ROOT
        )
        process.wait(timeout=minutes * 60)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if process is not None and process.poll() is None:  # it stops between epochs' writes
            process.terminate()
            process.wait()
        signal.signal(signal.SIGTERM, previous)
        wall["seconds"] += time.monotonic() - start
        wall["sessions"] = wall.get("sessions", 0) + 1
        run_dir.mkdir(parents=True, exist_ok=True)
        wall_file.write_text(json.dumps(wall))
    return epochs_done(run_dir) > before


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def epochs_done(run_dir: Path) -> int:
    metrics = run_dir / "metrics.csv"
    return max(len(metrics.read_text().splitlines()) - 1, 0) if metrics.is_file() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock budget")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    opts = parser.parse_args(argv[:split])
    train(opts.run_dir.resolve(), opts.minutes, argv[split + 1 :])
    print(f"{opts.run_dir}: {epochs_done(opts.run_dir)} epochs")


if __name__ == "__main__":
    main()

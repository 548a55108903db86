"""CI smoke run of the data-parallel benchmark: 1 and 2 gloo processes, JSON complete (no timing
asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_data_parallel_benchmark_smoke_json(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "data_parallel.py"), "--model", "vae",
         "--processes", "1,2", "--baseline-threads", "2", "--B", "4", "--T", "3", "--steps", "2",
         "--warmup", "0", "--json", str(out)],
        capture_output=True, text=True, timeout=1800,  # a hang guard, not a speed limit
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [(r["processes"], r["threads_per_process"]) for r in rows] == [(1, 1), (2, 1), (1, 2)]
    for row in rows:
        assert (row["model"], row["device"], row["B"], row["T"]) == ("vae", "cpu", 4, 3)
        assert row["seq_per_s"] == 4 / (row["ms_per_step"] / 1000)
        assert row["speedup"] == row["seq_per_s"] / rows[0]["seq_per_s"]

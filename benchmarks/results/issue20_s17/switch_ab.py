"""Whole Pyro training steps with ``run_rnn_fast``'s switch (``SCAN_MIN_STEP_INPUT`` as shipped:
small steps take torch's LSTM) against the scan everywhere (threshold 0), alternated step by
step in one process, glibc's allocator, 2 threads; medians (ms). Made ``switch_ab_xeon.json``
(seventeenth session)::

    python benchmarks/results/issue20_s17/switch_ab.py out.json
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks import train_step as bench  # noqa: E402
from pyro_dvae import scan  # noqa: E402

SHIPPED = scan.SCAN_MIN_STEP_INPUT
VARIANTS = (("switch", SHIPPED), ("scan", 0))


def main(path: str) -> None:
    rows = []
    for shape, B in (("speech", 8), ("motion", 128), ("speech", 128)):
        for name in ("rvae_causal", "rvae_noncausal", "dsae"):
            args = {"model": name, "shape": shape, "x_dim": None, "B": B, "T": 50,
                    "threads": 2, "device": "cpu", "sites": "trajectory",
                    "allocator": "system"}  # fmt: skip
            model, x = bench.setup(args)
            step = bench.timed(bench.pyro_step(model, x, "eager")[0], x.device)
            n = 20 if (shape, B) == ("speech", 128) else 40
            steps = {
                k: bench.with_setting(scan, "SCAN_MIN_STEP_INPUT", v, step) for k, v in VARIANTS
            }
            row = {"model": name, "shape": shape, "B": B} | bench.alternated_ms(steps, 4, n)
            row["switch/scan"] = row["switch"] / row["scan"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(path).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])

"""Whole Pyro training steps with ``run_rnn_fast``'s switch (``SCAN_MIN_STEP_INPUT`` as shipped:
small steps take torch's LSTM) against the scan everywhere (threshold 0), alternated step by
step in one process, glibc's allocator, 2 threads; medians (ms). Made ``switch_ab_xeon.json``
(seventeenth session)::

    python benchmarks/results/issue20_s17/switch_ab.py out.json
"""

import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.train_step import record, switch_ab  # noqa: E402
from pyro_dvae import scan  # noqa: E402

SHIPPED = scan.SCAN_MIN_STEP_INPUT
VARIANTS = {"switch": SHIPPED, "scan": 0}


def rows() -> Iterator[dict]:
    for shape, B in (("speech", 8), ("motion", 128), ("speech", 128)):
        for name in ("rvae_causal", "rvae_noncausal", "dsae"):
            n = 20 if (shape, B) == ("speech", 128) else 40
            row = {"model": name, "shape": shape, "B": B}
            row |= switch_ab(scan, "SCAN_MIN_STEP_INPUT", VARIANTS, n, model=name, shape=shape, B=B)
            row["switch/scan"] = row["switch"] / row["scan"]
            yield row


if __name__ == "__main__":
    record(sys.argv[1], rows())

"""benchmarks/iwae.py: it scores a run's test sequences with and without shared summaries."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import iwae  # noqa: E402  (a script, not a package module)

from tests.benchmarks.test_epoch import SMALL_DMM  # noqa: E402


def test_both_ways_give_the_same_bound_and_are_timed(data_root, tmp_path):
    out = tmp_path / "iwae.json"
    row = iwae.main([*SMALL_DMM, "--samples", "8", "--sequences", "2", "--rounds", "1",
                     "--json", str(out)])  # fmt: skip
    assert (row["samples"], row["sequences"], row["threads"]) == (8, 2, 1)
    nll = row["nll_per_step"]
    # float32 scores of the same draws: they differ by rounding, ~1e-7 of ~60 nats a step
    assert math.isclose(nll["shared"], nll["repeated"], rel_tol=1e-5)
    assert math.isclose(row["speedup"], row["repeated_seconds"] / row["shared_seconds"])
    assert out.is_file()

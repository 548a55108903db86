"""Whole Pyro training steps at motion shape (B = 128, T = 50, D = 96) with the fused MPJPE
log-density (``likelihoods._MPJPESum``) against the per-frame formula summed (the code before
it), alternated step by step in one process, glibc's allocator, 2 threads; medians (ms). Made
``mpjpe_ab_xeon.json`` (seventeenth session)::

    python benchmarks/results/issue20_s17/mpjpe_ab.py out.json
"""

import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.train_step import record, switch_ab  # noqa: E402
from pyro_dvae.likelihoods import MPJPEFactor  # noqa: E402

FUSED = MPJPEFactor.log_prob


def per_frame(self: MPJPEFactor, x):
    return self.step_log_prob(x).sum(-1)


def rows() -> Iterator[dict]:
    variants = {"fused": FUSED, "per_frame": per_frame}
    for name in ("vae", "dkf", "storn", "vrnn", "srnn", "rvae_causal", "rvae_noncausal", "dsae"):
        row = {"model": name, "shape": "motion", "B": 128}
        row |= switch_ab(MPJPEFactor, "log_prob", variants, 30, model=name, shape="motion", B=128)
        row["fused/per_frame"] = row["fused"] / row["per_frame"]
        yield row


if __name__ == "__main__":
    record(sys.argv[1], rows())

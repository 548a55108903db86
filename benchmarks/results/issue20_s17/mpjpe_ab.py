"""Whole Pyro training steps at motion shape (B = 128, T = 50, D = 96) with the fused MPJPE
log-density (``likelihoods._MPJPESum``) against the per-frame formula summed (the code before
it), alternated step by step in one process, glibc's allocator, 2 threads; medians (ms). Made
``mpjpe_ab_xeon.json`` (seventeenth session)::

    python benchmarks/results/issue20_s17/mpjpe_ab.py out.json
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks import train_step as bench  # noqa: E402
from pyro_dvae.likelihoods import MPJPEFactor  # noqa: E402

FUSED = MPJPEFactor.log_prob


def per_frame(self: MPJPEFactor, x):
    return self.step_log_prob(x).sum(-1)


def main(path: str) -> None:
    rows = []
    for name in ("vae", "dkf", "storn", "vrnn", "srnn", "rvae_causal", "rvae_noncausal", "dsae"):
        args = {"model": name, "shape": "motion", "x_dim": None, "B": 128, "T": 50,
                "threads": 2, "device": "cpu", "sites": "trajectory",
                "allocator": "system"}  # fmt: skip
        model, x = bench.setup(args)
        step = bench.timed(bench.pyro_step(model, x, "eager")[0], x.device)
        variants = (("fused", FUSED), ("per_frame", per_frame))
        steps = {k: bench.with_setting(MPJPEFactor, "log_prob", v, step) for k, v in variants}
        row = {"model": name, "shape": "motion", "B": 128} | bench.alternated_ms(steps, 4, 30)
        MPJPEFactor.log_prob = FUSED
        row["fused/per_frame"] = row["fused"] / row["per_frame"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(path).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])

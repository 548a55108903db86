"""Whole Pyro training steps with the trainer's loss skipping ``pyro.module`` (as shipped:
``DVAE.without_param_sites``) against registering every parameter at each call (the code
before it), alternated step by step in one process, glibc's allocator, 2 threads; medians
(ms). Made ``param_sites_ab_xeon.json`` (seventeenth session)::

    python benchmarks/results/issue20_s17/param_sites_ab.py out.json
"""

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks import train_step as bench  # noqa: E402
from pyro_dvae.models.base import DVAE  # noqa: E402

SKIP = DVAE.without_param_sites


def registering(self: DVAE) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def rows() -> Iterator[dict]:
    for shape, B in (("speech", 8), ("motion", 128), ("speech", 128)):
        for name in (
            "vae",
            "dkf",
            "storn",
            "vrnn",
            "srnn",
            "rvae_causal",
            "rvae_noncausal",
            "dsae",
        ):
            args = {"model": name, "shape": shape, "x_dim": None, "B": B, "T": 50,
                    "threads": 2, "device": "cpu", "sites": "trajectory",
                    "allocator": "system"}  # fmt: skip
            model, x = bench.setup(args)
            step = bench.timed(bench.pyro_step(model, x, "eager")[0], x.device)
            variants = (("skip", SKIP), ("register", registering))
            steps = {
                k: bench.with_setting(DVAE, "without_param_sites", v, step) for k, v in variants
            }
            n = 10 if (shape, B) == ("speech", 128) else 30
            row = {"model": name, "shape": shape, "B": B} | bench.alternated_ms(steps, 3, n)
            DVAE.without_param_sites = SKIP
            row["skip/register"] = row["skip"] / row["register"]
            row["parameters"] = sum(1 for _ in model.parameters())
            yield row


if __name__ == "__main__":
    bench.record(sys.argv[1], rows())

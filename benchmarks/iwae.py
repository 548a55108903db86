"""Seconds of the importance-weighted evaluation of any run configuration, with the K draws
sharing the guide's RNN summary of x and without (``pyro_dvae.nn.identical_copies``).

    python benchmarks/iwae.py +experiment=dmm_jsb_authors threads=1 --samples 200 \
      --sequences 4 --json out.json

The arguments other than this script's options are the Hydra overrides of
``experiments/run.py``. The task and the model are built as for training (untrained weights:
the time does not depend on them), in eval mode; then the first ``--sequences`` test
sequences are scored with ``--samples`` draws each, one sequence at a time in passes of at
most ``runner.IWAE_MAX_BATCH`` draws, as ``experiments/evaluate.py iwae_samples=K`` scores
them. The two ways alternate for ``--rounds`` rounds from the same seed; ``shared_seconds`` and
``repeated_seconds`` are their medians, and ``nll_per_step`` the bound each gave in the last
round (they differ by rounding only).

JSON: an object with ``overrides``, ``threads``, ``samples``, ``sequences``,
``shared_seconds``, ``repeated_seconds``, ``speedup``, ``nll_per_step`` (``shared``,
``repeated``) and ``torch`` (the version).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.epoch import run_config, save_json  # noqa: E402
from pyro_dvae import loglik  # noqa: E402
from pyro_dvae.data import build_task  # noqa: E402
from pyro_dvae.runner import IWAE_MAX_BATCH, build_model_for  # noqa: E402
from pyro_dvae.train import on_device  # noqa: E402


def score(model, batches: list, samples: int, shared: bool) -> tuple[float, float]:
    """``(seconds, nll_per_step)`` of scoring ``batches`` with ``samples`` draws each; the
    draws share the RNN summaries of x where ``shared``."""
    copies = loglik.identical_copies
    if not shared:
        loglik.identical_copies = lambda k: contextlib.nullcontext()
    try:
        pyro.set_rng_seed(0)
        start = time.perf_counter()
        result = loglik.log_likelihood(model, batches, samples, IWAE_MAX_BATCH)
        return time.perf_counter() - start, result["nll_per_step"]
    finally:
        loglik.identical_copies = copies


def measure(overrides: list[str], samples: int, sequences: int, rounds: int) -> dict:
    """The JSON object of the module docstring for the run of ``overrides``."""
    cfg = run_config(overrides)
    task = build_task(**cfg.data)
    model = build_model_for(cfg, task).eval()
    cpu = torch.device("cpu")
    batches = [on_device(task.test.batch(torch.tensor([i])), cpu) for i in range(sequences)]
    times: dict[bool, list[float]] = {True: [], False: []}
    nll = {}
    for _ in range(rounds):
        for shared in (True, False):
            seconds, nll[shared] = score(model, batches, samples, shared)
            times[shared].append(seconds)
    shared_s, repeated_s = statistics.median(times[True]), statistics.median(times[False])
    return {
        "overrides": overrides,
        "threads": torch.get_num_threads(),
        "samples": samples,
        "sequences": sequences,
        "shared_seconds": shared_s,
        "repeated_seconds": repeated_s,
        "speedup": repeated_s / shared_s,
        "nll_per_step": {"shared": nll[True], "repeated": nll[False]},
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200, help="K, draws per sequence")
    parser.add_argument("--sequences", type=int, default=4, help="test sequences scored")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    opts, overrides = parser.parse_known_args(argv)
    if min(opts.samples, opts.sequences, opts.rounds) < 1:
        parser.error("--samples, --sequences and --rounds must be >= 1")
    row = measure(overrides, opts.samples, opts.sequences, opts.rounds)
    print(
        f"{' '.join(overrides)}: K = {row['samples']}, {row['sequences']} sequences: "
        f"{row['shared_seconds']:.2f} s shared, {row['repeated_seconds']:.2f} s repeated "
        f"({row['speedup']:.2f}x), {row['threads']} thread(s)"
    )
    save_json(row, opts.json)
    return row


if __name__ == "__main__":
    main()

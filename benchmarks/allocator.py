"""What ``train.cpu_allocator=keep`` (:func:`pyro_dvae.step.keep_freed_memory`) saves per step.

    python benchmarks/allocator.py --models all --threads 2 --rounds 3 --json out.json

The allocator is process-wide, so each setting gets processes of its own: per model,
``--rounds`` pairs of fresh processes, ``system`` then ``keep``, each timing the Pyro step (the
trainer's, eager) and the reference step of ``train_step.py`` at speech shape in alternation
(median ms). Load changes between processes move both settings alike when the pairs alternate.
Printed and saved per model: the medians over the rounds of ``pyro_ms`` and ``reference_ms``
under each setting, and ``pyro_saving`` / ``reference_saving``: 1 − keep / system for each step.

The same-process ratio of ``train_step.py`` (``--allocator``) compares both steps under one
setting; the original code runs under ``system``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.train_step import (  # noqa: E402
    alternated_ms,
    in_child,
    model_names,
    pyro_step,
    reference_steps,
    report,
    setup,
    timed,
)


def times(args: dict) -> dict[str, float]:
    """Child process: median ms of the Pyro and reference steps under ``args["allocator"]``."""
    model, x = setup(args)
    steps = {
        "pyro": timed(pyro_step(model, x, "eager")[0], x.device),
        "reference": reference_steps(model, x, args["model"])["reference"],
    }
    return alternated_ms(steps, args["warmup"], args["steps"])


def measure(name: str, opts: argparse.Namespace) -> dict:
    """The row of ``name`` (see the module docstring)."""
    args = {"model": name, "shape": "speech", "x_dim": opts.x_dim, "B": opts.B, "T": opts.T,
            "threads": opts.threads, "device": "cpu", "sites": "trajectory",
            "steps": opts.steps, "warmup": opts.warmup}  # fmt: skip
    runs: dict[str, list[dict]] = {"system": [], "keep": []}
    for _ in range(opts.rounds):
        for allocator, results in runs.items():
            results.append(in_child(times, {**args, "allocator": allocator}))
    row: dict = {"model": name, "B": opts.B, "T": opts.T, "threads": opts.threads,
                 "rounds": opts.rounds}  # fmt: skip
    for allocator, results in runs.items():
        for step in ("pyro", "reference"):
            row[f"{step}_ms_{allocator}"] = statistics.median(r[step] for r in results)
    for step in ("pyro", "reference"):
        row[f"{step}_saving"] = 1 - row[f"{step}_ms_keep"] / row[f"{step}_ms_system"]
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="all", help="comma-separated names, or all")
    parser.add_argument("--B", type=int, default=128)
    parser.add_argument("--T", type=int, default=50)
    parser.add_argument("--x-dim", type=int, default=None, help="override D (tiny smoke runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="process pairs per model")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args(argv)

    def line(r: dict) -> str:
        return (
            f"pyro {r['pyro_ms_system']:6.1f} -> {r['pyro_ms_keep']:6.1f} ms "
            f"({r['pyro_saving']:+.1%})  reference {r['reference_ms_system']:6.1f} -> "
            f"{r['reference_ms_keep']:6.1f} ms ({r['reference_saving']:+.1%})"
        )

    return report(model_names(opts.models), lambda name: measure(name, opts), line, opts.json)


if __name__ == "__main__":
    main()

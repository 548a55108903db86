"""Where a training step's time goes, and how fast it could be (issue 20 §2).

    python benchmarks/profile_step.py --models all --threads 2 --json out.json

For each model at speech shape (B=128, T=50, D=513), the Pyro step (the trainer's, eager) and
the reference step of ``train_step.py`` alternate in one process: first timed as they run
(median ms), then under ``torch.profiler``, which gives each step's time in its **products**:
the matrix-product kernels (``mm``, ``addmm``, ``bmm``, ``baddbmm``) and oneDNN's fused LSTM/RNN
layers, forward and backward. The products are the arithmetic of the equations, run at near
the GEMM rate (``train_step.py``'s ``fraction_of_gemm``); the rest is element-wise work and
per-operation overhead. Printed and saved per model:

* ``pyro_ms``, ``reference_ms``, ``ratio``: the timed steps and their ratio (the target is
  ≤ 0.75);
* ``pyro_products_ms``, ``reference_products_ms``: profiled time in the products per step;
* ``ratio_bound``: ``pyro_products_ms / reference_ms``, the ratio the Pyro step would reach if
  everything but its products took no time at all. Above 0.75, the target cannot be reached
  with these products at this rate: only less arithmetic, or faster arithmetic, would do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.train_step import (  # noqa: E402
    alternated_ms,
    model_names,
    pyro_step,
    reference_steps,
    report,
    setup,
    timed,
)

PRODUCTS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::mkldnn_rnn_layer",
    "aten::mkldnn_rnn_layer_backward",
}
"""The profiler events counted as the step's products."""


def products_ms(step, repeats: int) -> float:
    """Milliseconds per call of ``step`` spent in :data:`PRODUCTS` (self CPU time)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    spent = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in PRODUCTS)
    return spent / 1000 / repeats


def measure(name: str, threads: int, steps: int, warmup: int) -> dict:
    """The row of ``name`` (see the module docstring)."""
    args = {"model": name, "shape": "speech", "x_dim": None, "B": 128, "T": 50}
    model, x = setup({**args, "threads": threads, "device": "cpu", "sites": "trajectory"})
    ours = pyro_step(model, x, "eager")[0]
    reference = reference_steps(model, x, name)["reference"]  # returns its seconds
    timed_steps = {"pyro": timed(ours, x.device), "reference": reference}
    row = {"model": name, "threads": threads}
    row |= {f"{k}_ms": ms for k, ms in alternated_ms(timed_steps, warmup, steps).items()}
    row["ratio"] = row["pyro_ms"] / row["reference_ms"]
    row["pyro_products_ms"] = products_ms(ours, 3)
    row["reference_products_ms"] = products_ms(reference, 3)
    row["ratio_bound"] = row["pyro_products_ms"] / row["reference_ms"]
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="all", help="comma-separated names, or all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args(argv)

    def line(r: dict) -> str:
        return (
            f"pyro {r['pyro_ms']:6.1f} ms  reference {r['reference_ms']:6.1f} ms  "
            f"ratio {r['ratio']:.3f}  products {r['pyro_products_ms']:6.1f} / "
            f"{r['reference_products_ms']:6.1f} ms  bound {r['ratio_bound']:.3f}"
        )

    def row(name: str) -> dict:
        return measure(name, opts.threads, opts.steps, opts.warmup)

    return report(model_names(opts.models), row, line, opts.json)


if __name__ == "__main__":
    main()

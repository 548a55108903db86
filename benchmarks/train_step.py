"""Time one SVI training step of every DVAE against a hand-written torch step.

A step is forward, ELBO, backward and one Adam update. The Pyro step uses
``TraceMeanField_ELBO().differentiable_loss`` on the model/guide pair, exactly as the
trainer does; the reference step computes the same loss from the same networks in plain
torch (``benchmarks/reference_*.py``). The original-style step stands in for the original
implementation, which cannot run here: the reference step with the original's loss formulas
(spec §4.1–4.2) and ``torch.autograd.set_detect_anomaly(True)``, which the original trainer
switched on for every step (spec §10.1). The three alternate step by step in a fresh
process; the Pyro and reference steps' peak memory is measured in a process of its own.

    python benchmarks/train_step.py --models all --shape speech --B 128 --json out.json
    python benchmarks/train_step.py --sites markov ...   # the per-step (pyro.markov) site form

Prints a table and writes a JSON list of objects with the keys ``model``, ``shape``,
``device``, ``sites``, ``ms_per_step``, ``ms_per_step_reference``, ``ratio_pyro_to_reference``,
``ms_per_step_original_style``, ``ratio_pyro_to_original_style``, ``peak_mem_mb`` (Pyro
step), ``peak_mem_mb_reference``, ``seq_per_s``, ``B``, ``T``, and the arithmetic rate:

* ``gflop_per_step``: the matrix-product FLOPs of one Pyro step's loss and backward pass (one
  multiply-add = 2 FLOPs), counted once with ``torch.utils.flop_counter.FlopCounterMode`` plus
  :data:`RNN_FLOPS`: the counter has no formula for oneDNN's LSTM layer (``nn.LSTM`` on the
  CPU, counted 0), so its forward is counted as 2·T·B·4H·(D + H) (input and recurrent
  products) and its backward as twice that (gradients of the input, the hidden state and both
  weights; oneDNN computes the input's gradient whether or not it is needed). Element-wise
  work (activations, the likelihood, Adam) is not counted;
* ``gflop_per_s``: ``gflop_per_step`` over the Pyro step's median time;
* ``gemm_gflop_per_s``: the rate of a plain GEMM of the size of the speech models' widest
  layers, (T·B × D) @ (D × 512), timed in the same process, alternating with the steps;
* ``fraction_of_gemm``: ``gflop_per_s / gemm_gflop_per_s``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from pyro.infer import TraceMeanField_ELBO
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make `benchmarks` importable
CONFIGS = ROOT / "configs" / "model"
SHAPES = {"speech": 513, "motion": 96}


def references() -> dict:
    """``{model name: reference_loss_<name>}`` from every ``benchmarks/reference_*.py``."""
    found = {}
    for path in sorted((ROOT / "benchmarks").glob("reference_*.py")):
        module = importlib.import_module(f"benchmarks.{path.stem}")
        for attr, fn in vars(module).items():
            if attr.startswith("reference_loss_"):
                found[attr.removeprefix("reference_loss_")] = fn
    return found


def build(name: str, shape: str, x_dim: int, device: torch.device, sites: str = "trajectory"):
    """The model of ``configs/model/<name>.yaml`` for ``shape`` with latent sites ``sites``."""
    from omegaconf import OmegaConf

    from pyro_dvae.likelihoods import build_likelihood
    from pyro_dvae.models import build_model

    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    params = OmegaConf.to_container(cfg[shape], resolve=True)
    likelihood = build_likelihood(None, shape, x_dim)
    return build_model(cfg.name, x_dim, likelihood, sites=sites, **params).to(device)


def _rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape, *_, **__) -> int:
    """Forward FLOPs of one oneDNN RNN layer: input ``(T, B, D)``, weights ``(G, D)``, ``(G, H)``
    (G = 4H for an LSTM): 2·T·B·G·(D + H)."""
    T, B, D = input_shape
    return 2 * T * B * w_hh_shape[0] * (D + w_hh_shape[1])


RNN_FLOPS = {
    torch.ops.aten.mkldnn_rnn_layer: _rnn_layer_flops,
    torch.ops.aten.mkldnn_rnn_layer_backward: lambda *a, **k: 2 * _rnn_layer_flops(*a, **k),
}
"""``FlopCounterMode``'s ``custom_mapping`` for the RNN kernels it does not count."""


def count_flops(loss_fn) -> int:
    """Matrix-product FLOPs of ``loss_fn()`` and its backward pass (see the module docstring)."""
    with FlopCounterMode(display=False, custom_mapping=RNN_FLOPS) as counter:
        loss_fn().backward()
    return counter.get_total_flops()


def gemm_step(rows: int, x_dim: int, device: torch.device):
    """``(step, flops)``: one timed ``(rows × x_dim) @ (x_dim × 512)`` product and its FLOPs."""
    a, b = torch.randn(rows, x_dim, device=device), torch.randn(x_dim, 512, device=device)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step, 2 * rows * x_dim * 512


def data(shape: str, B: int, T: int, x_dim: int, device: torch.device) -> torch.Tensor:
    """Speech: Exponential power values; motion: positions around the origin in metres."""
    g = torch.Generator().manual_seed(0)
    if shape == "speech":
        x = torch.empty(B, T, x_dim).exponential_(generator=g)
    else:
        x = 0.3 * torch.randn(B, T, x_dim, generator=g)
    return x.to(device)


def step_functions(args: dict) -> tuple[dict, torch.device, Callable[[], int]]:
    """``{"pyro": step, "reference": step, "original_style": step}`` on one model and batch,
    each a full training step; the device; and a counter of the Pyro step's FLOPs."""
    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    torch.manual_seed(0)
    name, shape, B, T = args["model"], args["shape"], args["B"], args["T"]
    x_dim = args["x_dim"] or SHAPES[shape]
    model = build(name, shape, x_dim, device, args["sites"])
    x = data(shape, B, T, x_dim, device)
    from benchmarks.reference_basic import original_formulas, torch_tanh

    pyro.enable_validation(False)
    elbo = TraceMeanField_ELBO().differentiable_loss
    reference = references()[name]

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def make_step(loss_fn, anomaly: bool = False, plain: bool = True):
        """``plain``: the networks as the original runs them (:func:`torch_tanh`), set up
        outside the timed part."""

        def step() -> float:
            with torch_tanh(model) if plain else contextlib.nullcontext():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                with torch.autograd.detect_anomaly() if anomaly else contextlib.nullcontext():
                    loss = loss_fn()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return time.perf_counter() - start

        return step

    def original_style_loss() -> torch.Tensor:
        with original_formulas():
            return reference(model, x)

    def pyro_loss() -> torch.Tensor:
        return elbo(model.model, model.guide, x, 1.0)

    steps = {
        "pyro": make_step(pyro_loss, plain=False),
        "reference": make_step(lambda: reference(model, x)),
        "original_style": make_step(original_style_loss, anomaly=True),
    }
    return steps, device, lambda: count_flops(pyro_loss)


def time_both(args: dict) -> dict:
    """Child process: Pyro and reference steps alternate, so load changes hit both alike;
    returns the median ms of each."""
    steps, device, count = step_functions(args)
    flops = count()
    steps["gemm"], gemm_flops = gemm_step(args["B"] * args["T"], args["x_dim"] or 513, device)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(args["warmup"] + args["steps"]):
        for variant, step in steps.items():
            elapsed = step()
            if i >= args["warmup"]:
                times[variant].append(elapsed)
    result = {k: 1000 * statistics.median(v) for k, v in times.items()}
    result["gflop"] = flops / 1e9
    result["gemm_gflop_per_s"] = gemm_flops / 1e9 / statistics.median(times["gemm"])
    return result


def peak_memory(args: dict) -> float:
    """Child process: peak memory (MB) of a few steps of one variant alone."""
    steps, device, _ = step_functions(args)
    for _ in range(3):
        steps[args["variant"]]()
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(fn, args: dict):
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, (args,))


def compare(name: str, opts: argparse.Namespace) -> dict:
    """Median over ``opts.rounds`` processes of the alternated step times, and each variant's
    peak memory measured in a process of its own."""
    args = {
        "model": name,
        "shape": opts.shape,
        "B": opts.B,
        "T": opts.T,
        "x_dim": opts.x_dim,
        "device": opts.device,
        "steps": opts.steps,
        "warmup": opts.warmup,
        "threads": opts.threads,
        "sites": opts.sites,
    }
    rounds = [in_child(time_both, args) for _ in range(opts.rounds)]
    result = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    for variant in ("pyro", "reference"):
        result[f"mem_{variant}"] = in_child(peak_memory, {**args, "variant": variant})
    return result


def arithmetic_rate(measured: dict) -> dict:
    """The JSON's FLOP keys from a :func:`compare` result."""
    rate = measured["gflop"] / (measured["pyro"] / 1000)
    values = {
        "gflop_per_step": measured["gflop"],
        "gflop_per_s": rate,
        "gemm_gflop_per_s": measured["gemm_gflop_per_s"],
        "fraction_of_gemm": rate / measured["gemm_gflop_per_s"],
    }
    return {k: float(f"{v:.4g}") for k, v in values.items()}  # 4 significant digits


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="all", help="comma-separated names, or all")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="speech")
    parser.add_argument("--T", type=int, default=50)
    parser.add_argument("--B", type=int, default=128)
    parser.add_argument("--x-dim", type=int, default=None, help="override D (tiny smoke runs)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--sites",
        default="trajectory",
        choices=["trajectory", "markov"],
        help="latent sample sites of the Pyro step (model.sites)",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=3, help="timing processes per model")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--readme",
        action="store_true",
        help="save to benchmarks/results/ and regenerate benchmarks/README.md",
    )
    opts = parser.parse_args(argv)
    available = references()
    names = sorted(available) if opts.models == "all" else opts.models.split(",")
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"--models: no reference step for {unknown}; known: {sorted(available)}")
    rows = []
    for name in names:
        measured = compare(name, opts)
        rows.append(
            {
                "model": name,
                "shape": opts.shape,
                "device": opts.device,
                "sites": opts.sites,
                "B": opts.B,
                "T": opts.T,
                "ms_per_step": round(measured["pyro"], 2),
                "ms_per_step_reference": round(measured["reference"], 2),
                "ratio_pyro_to_reference": round(measured["pyro"] / measured["reference"], 3),
                "ms_per_step_original_style": round(measured["original_style"], 2),
                "ratio_pyro_to_original_style": round(
                    measured["pyro"] / measured["original_style"], 3
                ),
                "seq_per_s": round(1000 * opts.B / measured["pyro"], 1),
                "peak_mem_mb": round(measured["mem_pyro"], 1),
                "peak_mem_mb_reference": round(measured["mem_reference"], 1),
                **arithmetic_rate(measured),
            }
        )
        r = rows[-1]
        print(
            f"{name:15s} pyro {r['ms_per_step']:8.1f} ms  ref {r['ms_per_step_reference']:8.1f} ms"
            f"  ratio {r['ratio_pyro_to_reference']:.3f}"
            f"  original-style {r['ms_per_step_original_style']:8.1f} ms"
            f" (ratio {r['ratio_pyro_to_original_style']:.3f})  mem {r['peak_mem_mb']:.0f}/"
            f"{r['peak_mem_mb_reference']:.0f} MB  {r['gflop_per_step']:.2f} GFLOP"
            f" {r['gflop_per_s']:.1f} GFLOP/s ({r['fraction_of_gemm']:.2f} of GEMM"
            f" {r['gemm_gflop_per_s']:.1f})",
            flush=True,
        )
    if opts.json:
        opts.json.write_text(json.dumps(rows, indent=2))
    if opts.readme:
        RESULTS.mkdir(exist_ok=True)
        stem = f"{opts.shape}_{opts.device}_B{opts.B}_T{opts.T}"
        stem += "" if opts.sites == "trajectory" else f"_{opts.sites}"
        (RESULTS / f"{stem}.json").write_text(
            json.dumps({"machine": machine(), "rows": rows}, indent=2)
        )
        write_readme()
    return rows


RESULTS = ROOT / "benchmarks" / "results"
README_MARK = "<!-- tables generated by train_step.py --readme; edit above this line -->"


def machine() -> str:
    """CPU model and thread count, or the GPU name."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def write_readme() -> None:
    """Rewrite the generated part of benchmarks/README.md from every saved result."""
    readme = ROOT / "benchmarks" / "README.md"
    head = readme.read_text().split(README_MARK)[0] if readme.exists() else ""
    parts = [head.rstrip() + "\n\n" + README_MARK + "\n"]
    for path in sorted(RESULTS.glob("*.json")):
        saved = json.loads(path.read_text())
        rows = saved["rows"]
        first = rows[0]
        parts.append(
            f"\n### {first['shape']}, {first['device']}, B={first['B']}, T={first['T']}, "
            f"sites={first.get('sites', 'trajectory')}"
            f"\n\nMachine: {saved['machine']}.\n\n"
            "| model | Pyro ms/step | reference ms/step | ratio | original-style ms/step | "
            "ratio | seq/s | peak MB (Pyro / ref) |\n"
            "|---|---|---|---|---|---|---|---|\n"
        )
        for r in rows:
            parts.append(
                f"| {r['model']} | {r['ms_per_step']} | {r['ms_per_step_reference']} | "
                f"{r['ratio_pyro_to_reference']} | {r['ms_per_step_original_style']} | "
                f"{r['ratio_pyro_to_original_style']} | {r['seq_per_s']} | "
                f"{r['peak_mem_mb']} / {r['peak_mem_mb_reference']} |\n"
            )
    readme.write_text("".join(parts))


if __name__ == "__main__":
    main()

"""Time one SVI training step of every DVAE against a hand-written torch step.

A step is forward, ELBO, backward and one Adam update. The Pyro step is the trainer's own
(``pyro_dvae.step``: :class:`~pyro_dvae.step.ELBOLoss`, TraceMeanField_ELBO's estimator, through
:func:`~pyro_dvae.step.train_step`), run as ``train.step`` runs it (``--step``, a comma list):

* ``eager``: :func:`~pyro_dvae.step.train_step` as it is;
* ``compile``: the same after :func:`~pyro_dvae.step.compile_networks`; the compilation (the
  set-up and the first step, which compiles forward and backward) is timed apart as
  ``compile_seconds`` and left out of the step times;
* ``graph`` (CUDA only): :class:`~pyro_dvae.step.GraphStep` with a
  :func:`~pyro_dvae.step.capturable` Adam; its eager warm-up steps and the capture are
  ``compile_seconds``.

``--precision`` (a comma list) runs each of them in ``train.precision`` float32 and/or bfloat16
(:class:`~pyro_dvae.step.ELBOLoss` under ``torch.autocast``); the reference and original-style
steps are float32 always.

The reference step computes the same loss from the same networks in plain torch
(``benchmarks/reference_*.py``). The original-style step stands in for the original
implementation, which cannot run here: the reference step with the original's loss formulas
(spec §4.1–4.2) and ``torch.autograd.set_detect_anomaly(True)``, which the original trainer
switched on for every step (spec §10.1). In a fresh process, every requested Pyro step (each on
its own copy of the same initial weights, with its own Adam), the reference and the
original-style step (on the initial model, always eager, with one Adam of their own) alternate
step by step; each variant's peak memory is measured in a process of its own. Every timing
process uses the CPU allocator ``--allocator`` (``train.cpu_allocator``: ``keep``, the trainer's
default, or ``system``) for all of its steps.

    python benchmarks/train_step.py --models all --shape speech --B 128 --json out.json
    python benchmarks/train_step.py --sites markov ...   # the per-step (pyro.markov) site form
    python benchmarks/train_step.py --device cuda --step eager,graph --no-memory ...

Prints a table and writes a JSON list of objects, one per model and step, with the keys
``model``, ``step``, ``precision``, ``compile_seconds`` (null for ``eager``), ``shape``,
``device``, ``sites``, ``allocator``, ``ms_per_step``, ``ms_per_step_reference``,
``ratio_pyro_to_reference``, ``ms_per_step_original_style``, ``ratio_pyro_to_original_style``,
``peak_mem_mb`` (Pyro step), ``peak_mem_mb_reference`` (both null with ``--no-memory``),
``seq_per_s``, ``B``, ``T``, the original's own step (below; null without ``--original``), and
the arithmetic rate:

* ``gflop_per_step``: the matrix-product FLOPs of one Pyro step's loss and backward pass (one
  multiply-add = 2 FLOPs), counted once on the eager model with
  ``torch.utils.flop_counter.FlopCounterMode`` plus :data:`RNN_FLOPS`: the counter has no
  formula for oneDNN's LSTM layer (``nn.LSTM`` on the CPU, counted 0), so its forward is
  counted as 2·T·B·4H·(D + H) (input and recurrent products) and its backward as twice that
  (gradients of the input, the hidden state and both weights; oneDNN computes the input's
  gradient whether or not it is needed). Element-wise work (activations, the likelihood, Adam)
  is not counted. Every ``--step`` computes the same products, so they share the count;
* ``gflop_per_s``: ``gflop_per_step`` over the Pyro step's median time;
* ``gemm_gflop_per_s``: the rate of a plain GEMM of the size of the speech models' widest
  layers, (T·B × D) @ (D × 512), timed in the same process, alternating with the steps;
* ``fraction_of_gemm``: ``gflop_per_s / gemm_gflop_per_s``;
* ``ms_own_products``: the step's own products, each shape as many times as the step computes
  it (recorded once on the eager model, oneDNN's RNN layers as the products above: the input's
  and the weights' over all T·B rows, the recurrent one at each step), run as plain GEMMs on
  operands of their own, timed in the same process, alternating with the steps: the time the
  step's arithmetic takes at the GEMM rate of its own shapes;
* ``fraction_of_own_products``: ``ms_own_products / ms_per_step``, the step's FLOP rate as a
  fraction of that one.

``--original DIR``, a checkout of the original implementation (``benchmarks/original.py``),
adds its training step as its trainer runs it, alternating with the others:
``ms_per_step_original``, ``ratio_pyro_to_original`` (issue 20's 0.8× bar) and its
``ratio_pyro_to_original_by_round``, ``ratio_reference_to_original``, and
``ms_per_step_original_contiguous``, ``ratio_pyro_to_original_contiguous`` (the same step given
a contiguous batch).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyro
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make `benchmarks` and `pyro_dvae` importable
from benchmarks.original import original_steps, problem  # noqa: E402
from pyro_dvae.step import (  # noqa: E402
    ALLOCATORS,
    PRECISIONS,
    ELBOLoss,
    GraphStep,
    capturable,
    compile_networks,
    keep_freed_memory,
    train_step,
)
from pyro_dvae.train import TrainConfig, build_optimizer  # noqa: E402

CONFIGS = ROOT / "configs" / "model"
SHAPES = {"speech": 513, "motion": 96}
STEPS = ("eager", "compile", "graph")
"""``--step``: how the Pyro step runs, as ``train.step`` runs it (``pyro_dvae.step``)."""


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


Product = tuple[int, int, int, int]
"""``(b, m, k, n)``: b plain products (m × k) @ (k × n)."""


def _rnn_layer_products(input_shape, w_hh_shape, backward: bool) -> list[tuple[Product, int]]:
    """The plain products of one oneDNN RNN layer over input ``(T, B, D)`` with recurrent
    weights ``(G, H)``, and how many of each: forward, the input gates of all T·B rows at once
    and h_{t−1} W_hh^T at each step; backward, the gradients of the input and of W_ih over all
    rows, of h_{t−1} at each step and of W_hh over all rows. Their FLOPs are
    :data:`RNN_FLOPS`'s."""
    (T, B, D), (G, H) = input_shape, w_hh_shape
    if not backward:
        return [((1, T * B, D, G), 1), ((1, B, H, G), T)]
    return [((1, T * B, G, D), 1), ((1, D, T * B, G), 1), ((1, B, G, H), T), ((1, H, T * B, G), 1)]


def _products(func, args: tuple) -> list[tuple[Product, int]]:
    """The plain products that one dispatched operation computes (none for most)."""
    op, aten = func.overloadpacket, torch.ops.aten
    if op in (aten.mm, aten.addmm):  # addmm(bias, a, b)
        a, b = args[-2:]
        return [((1, a.shape[0], a.shape[1], b.shape[1]), 1)]
    if op in (aten.bmm, aten.baddbmm):
        a, b = args[-2:]
        return [((a.shape[0], a.shape[1], a.shape[2], b.shape[2]), 1)]
    if op in (aten.mkldnn_rnn_layer, aten.mkldnn_rnn_layer_backward):
        return _rnn_layer_products(args[0].shape, args[2].shape, op is not aten.mkldnn_rnn_layer)
    return []


class _RecordProducts(TorchDispatchMode):
    """Counts the plain products (:data:`Product`) of every operation run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[Product] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for product, n in _products(func, args):
            self.counts[product] += n
        return func(*args, **(kwargs or {}))


def own_products(loss_fn) -> Counter[Product]:
    """How many times ``loss_fn()`` and its backward pass compute each plain product: the
    products :func:`count_flops` counts, with their shapes."""
    with _RecordProducts() as record:
        loss_fn().backward()
    return record.counts


def products_step(counts: Counter[Product], device: torch.device) -> Callable[[], float]:
    """One timed run of the products ``counts`` as plain GEMMs (``torch.mm``, or ``torch.bmm``
    for a batch of them), each on operands of its own shape made once: a step's arithmetic at
    the GEMM rate of its own shapes, with one call per product as the step makes."""
    calls = []
    for (b, m, k, n), count in counts.items():
        a, w = torch.randn(b, m, k, device=device), torch.randn(b, k, n, device=device)
        calls += [(torch.mm, a[0], w[0]) if b == 1 else (torch.bmm, a, w)] * count

    def run() -> None:
        for product, a, w in calls:
            product(a, w)

    return timed(run, device)


def gemm_step(rows: int, x_dim: int, device: torch.device) -> tuple[Callable[[], float], int]:
    """``(step, flops)``: one timed ``(rows × x_dim) @ (x_dim × 512)`` product and its FLOPs."""
    a, b = torch.randn(rows, x_dim, device=device), torch.randn(x_dim, 512, device=device)
    return timed(lambda: a @ b, device), 2 * rows * x_dim * 512


def data(shape: str, B: int, T: int, x_dim: int, device: torch.device) -> torch.Tensor:
    """Speech: Exponential power values; motion: positions around the origin in metres."""
    g = torch.Generator().manual_seed(0)
    if shape == "speech":
        x = torch.empty(B, T, x_dim).exponential_(generator=g)
    else:
        x = 0.3 * torch.randn(B, T, x_dim, generator=g)
    return x.to(device)


def timed(step: Callable[[], object], device: torch.device) -> Callable[[], float]:
    """``step`` as a function that returns the seconds of one call, the device synchronised
    before and after."""

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return run


def pyro_step(
    model, x: torch.Tensor, kind: str, precision: str = "float32"
) -> tuple[Callable[[], object], Callable[[], None]]:
    """``(step, prepare)``: one training step of ``model`` on ``x (B, T, D)`` as
    ``train.step=kind`` and ``train.precision=precision`` run it (KL weight 1, no padding, an
    Adam of its own), and the set-up
    to run once before it is timed: compiling the networks and the first step, which compiles
    (``compile``); the eager warm-up steps and the capture (``graph``); nothing (``eager``)."""
    loss = ELBOLoss(model, "mean_field", precision)
    optimizer = build_optimizer(model.parameters(), TrainConfig(lr=1e-4))  # the trainer's
    if kind != "graph":

        def step() -> torch.Tensor:
            return train_step(loss, optimizer, x, None, 1.0)

        def prepare() -> None:
            if kind == "compile":
                compile_networks(model)
                step()

        return step, prepare
    capturable(optimizer)
    graph = GraphStep(loss, optimizer)

    def prepare_graph() -> None:
        for _ in range(graph.warmup + 1):  # the last call captures (and replays)
            graph(x, None, 1.0)

    return lambda: graph(x, None, 1.0), prepare_graph


def reference_steps(model, x: torch.Tensor, name: str) -> dict[str, Callable[[], float]]:
    """``{"reference": step, "original_style": step}``: eager steps of ``model`` on ``x`` with
    an Adam of their own, each returning its seconds; the networks as the original runs them
    (:func:`original_layers`, swapped in outside the timed part)."""
    from benchmarks.reference_basic import original_formulas, original_layers

    reference = references()[name]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def make_step(loss_fn: Callable[[], torch.Tensor], anomaly: bool = False):
        def step() -> None:
            with torch.autograd.detect_anomaly() if anomaly else contextlib.nullcontext():
                loss = loss_fn()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()

        def run() -> float:
            with original_layers(model):
                return timed(step, x.device)()

        return run

    def original_style_loss() -> torch.Tensor:
        with original_formulas():
            return reference(model, x)

    return {
        "reference": make_step(lambda: reference(model, x)),
        "original_style": make_step(original_style_loss, anomaly=True),
    }


def setup(args: dict) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model of ``args`` (seed 0) on its device and its batch ``x (B, T, D)``, in a process
    whose CPU allocator is ``args["allocator"]`` (``train.cpu_allocator``; default ``system``)."""
    if args.get("allocator") == "keep" and keep_freed_memory():
        fail(f"--allocator keep: {keep_freed_memory()}")
    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    torch.manual_seed(0)
    x_dim = args["x_dim"] or SHAPES[args["shape"]]
    model = build(args["model"], args["shape"], x_dim, device, args["sites"])
    pyro.enable_validation(False)
    return model, data(args["shape"], args["B"], args["T"], x_dim, device)


def alternated_ms(steps: dict[str, Callable[[], float]], warmup: int, n: int) -> dict[str, float]:
    """``{name: median ms}`` of steps that each return their seconds, called in turn, one of
    each per round (so load changes hit them alike), over ``n`` rounds after ``warmup``."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + n):
        for name, step in steps.items():
            elapsed = step()
            if i >= warmup:
                times[name].append(elapsed)
    return {name: 1000 * statistics.median(v) for name, v in times.items()}


def with_setting(owner: object, name: str, value: object, step: Callable[[], float]):
    """``step`` run after setting ``owner.name = value``: with :func:`alternated_ms`, two
    settings of one process-wide switch timed in turn in one process."""

    def run() -> float:
        setattr(owner, name, value)
        return step()

    return run


def switch_ab(
    owner: object, name: str, variants: dict[str, object], n: int, warmup: int = 4, **args
) -> dict[str, float]:
    """``{label: median ms}`` of one model's eager Pyro step with each value of the switch
    ``owner.name`` (``variants``: ``{label: value}``), alternated step by step in this process
    (:func:`with_setting`, :func:`alternated_ms`); the switch is left at the first value.
    ``args``: ``model``, ``shape``, ``B`` and any other key of :func:`setup`'s (default: T = 50,
    2 threads, glibc's allocator, the speech or motion width)."""
    defaults = {"T": 50, "x_dim": None, "threads": 2, "device": "cpu", "sites": "trajectory"}
    model, x = setup(defaults | {"allocator": "system"} | args)
    step = timed(pyro_step(model, x, "eager")[0], x.device)
    steps = {label: with_setting(owner, name, value, step) for label, value in variants.items()}
    try:
        return alternated_ms(steps, warmup, n)
    finally:
        setattr(owner, name, next(iter(variants.values())))


def switch_rows(
    owner: object,
    name: str,
    variants: dict[str, object],
    cases: Iterable[tuple[str, str, int]],
    **fields,
) -> Iterator[dict]:
    """For each ``(model, shape, B)`` of ``cases``, the row of :func:`switch_ab` (20 steps of
    each setting at speech B = 128, 40 at the smaller shapes) with ``model``, ``shape``, ``B``,
    ``fields`` and the ratio ``"<second>/<first>"`` of the two first settings' times."""
    first, second = list(variants)[:2]
    for model, shape, B in cases:
        n = 20 if (shape, B) == ("speech", 128) else 40
        row = {**fields, "model": model, "shape": shape, "B": B}
        row |= switch_ab(owner, name, variants, n, model=model, shape=shape, B=B)
        row[f"{second}/{first}"] = row[second] / row[first]
        yield row


def record(path: str, rows: Iterable[dict]) -> None:
    """Print each of ``rows`` as a JSON line as it comes, then write them all to ``path`` as a
    JSON list: the output of the A/B scripts in ``benchmarks/results/``."""
    done = []
    for row in rows:
        print(json.dumps(row), flush=True)
        done.append(row)
    Path(path).write_text(json.dumps(done, indent=1))


def time_all(args: dict) -> dict:
    """Child process: every Pyro step of ``args["variants"]`` (``"pyro:<kind>/<precision>"``,
    each on its own copy of the initial model), the reference and original-style steps and the
    GEMM alternate step by step, so load changes hit them alike. Returns the median ms of each,
    each Pyro step's set-up seconds (``"setup:<kind>/<precision>"``), the Pyro step's GFLOP, the
    GEMM's rate and the median ms of the step's own products (``"own_products"``)."""
    model, x = setup(args)
    loss = ELBOLoss(model, "mean_field")
    result = {"gflop": count_flops(lambda: loss(x, None, 1.0)) / 1e9}
    products = own_products(lambda: loss(x, None, 1.0))
    model.zero_grad(set_to_none=True)
    steps = {}
    for variant in args["variants"]:
        step, prepare = pyro_step(copy.deepcopy(model), x, *variant.split("/"))
        result[f"setup:{variant}"] = timed(prepare, x.device)()
        steps[f"pyro:{variant}"] = timed(step, x.device)
    steps.update(reference_steps(model, x, args["model"]))
    if args.get("original"):
        originals = original_steps(Path(args["original"]), args["shape"], args["model"], x)
        steps.update({name: timed(step, x.device) for name, step in originals.items()})
    steps["gemm"], gemm_flops = gemm_step(args["B"] * args["T"], args["x_dim"] or 513, x.device)
    steps["own_products"] = products_step(products, x.device)
    result.update(alternated_ms(steps, args["warmup"], args["steps"]))
    result["gemm_gflop_per_s"] = gemm_flops / 1e9 / (result["gemm"] / 1000)
    return result


def peak_memory(args: dict) -> float:
    """Child process: peak memory (MB) of a few steps of one variant alone
    (``"pyro:<kind>/<precision>"``, after its set-up, or ``"reference"``)."""
    model, x = setup(args)
    variant = args["variant"]
    if variant.startswith("pyro:"):
        step, prepare = pyro_step(model, x, *variant.removeprefix("pyro:").split("/"))
        prepare()
    else:
        step = reference_steps(model, x, args["model"])[variant]
    for _ in range(3):
        step()
    if x.device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(fn, args: dict):
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, (args,))


def compare(name: str, variants: list[str], opts: argparse.Namespace) -> dict:
    """Median over ``opts.rounds`` processes of the alternated step times (and set-up
    seconds), each process's own times (``"rounds"``), and, unless ``--no-memory``, each
    variant's peak memory (``"mem:<variant>"``) measured in a process of its own."""
    args = {
        "model": name,
        "variants": variants,
        "shape": opts.shape,
        "B": opts.B,
        "T": opts.T,
        "x_dim": opts.x_dim,
        "device": opts.device,
        "steps": opts.steps,
        "warmup": opts.warmup,
        "threads": opts.threads,
        "sites": opts.sites,
        "allocator": opts.allocator,
        "original": opts.original and str(opts.original),
    }
    rounds = [in_child(time_all, args) for _ in range(opts.rounds)]
    result = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    result["rounds"] = rounds
    for variant in [f"pyro:{v}" for v in variants] + ["reference"]:
        memory = in_child(peak_memory, {**args, "variant": variant}) if opts.memory else None
        result[f"mem:{variant}"] = memory
    return result


def arithmetic_rate(measured: dict, ms_per_step: float) -> dict:
    """The JSON's FLOP keys from a :func:`compare` result and a Pyro step's median ms."""
    rate = measured["gflop"] / (ms_per_step / 1000)
    values = {
        "gflop_per_step": measured["gflop"],
        "gflop_per_s": rate,
        "gemm_gflop_per_s": measured["gemm_gflop_per_s"],
        "fraction_of_gemm": rate / measured["gemm_gflop_per_s"],
        "ms_own_products": measured["own_products"],
        "fraction_of_own_products": measured["own_products"] / ms_per_step,
    }
    return {k: float(f"{v:.4g}") for k, v in values.items()}  # 4 significant digits


def row(name: str, variant: str, measured: dict, opts: argparse.Namespace) -> dict:
    """The JSON object of one model's Pyro step ``variant`` (``"<kind>/<precision>"``) from its
    :func:`compare` result."""
    kind, precision = variant.split("/")
    ms = measured[f"pyro:{variant}"]
    memory = {"peak_mem_mb": measured[f"mem:pyro:{variant}"]}
    memory["peak_mem_mb_reference"] = measured["mem:reference"]
    return {
        "model": name,
        "step": kind,
        "precision": precision,
        "compile_seconds": None if kind == "eager" else round(measured[f"setup:{variant}"], 2),
        "shape": opts.shape,
        "device": opts.device,
        "sites": opts.sites,
        "allocator": opts.allocator,
        "B": opts.B,
        "T": opts.T,
        "ms_per_step": round(ms, 2),
        "ms_per_step_reference": round(measured["reference"], 2),
        "ratio_pyro_to_reference": round(ms / measured["reference"], 3),
        "ratio_pyro_to_reference_by_round": [
            round(r[f"pyro:{variant}"] / r["reference"], 3) for r in measured["rounds"]
        ],
        "ms_per_step_original_style": round(measured["original_style"], 2),
        "ratio_pyro_to_original_style": round(ms / measured["original_style"], 3),
        "seq_per_s": round(1000 * opts.B / ms, 1),
        **{k: None if v is None else round(v, 1) for k, v in memory.items()},
        **against_original(measured, f"pyro:{variant}"),
        **arithmetic_rate(measured, ms),
    }


def against_original(measured: dict, pyro: str) -> dict:
    """The JSON's keys of the original's own step (``--original``; all null without it) from a
    :func:`compare` result and the key of a Pyro step in it."""
    keys = ["ms_per_step_original", "ratio_pyro_to_original", "ratio_pyro_to_original_by_round"]
    keys += ["ratio_reference_to_original", "ms_per_step_original_contiguous"]
    keys += ["ratio_pyro_to_original_contiguous"]
    if "original" not in measured:
        return dict.fromkeys(keys)
    ms, original, contiguous = (measured[k] for k in (pyro, "original", "original_contiguous"))
    values = [
        round(original, 2),
        round(ms / original, 3),
        [round(r[pyro] / r["original"], 3) for r in measured["rounds"]],
        round(measured["reference"] / original, 3),
        round(contiguous, 2),
        round(ms / contiguous, 3),
    ]
    return dict(zip(keys, values, strict=True))


def summary(r: dict) -> str:
    """One printed line of a row."""
    memory = (
        "mem not measured"
        if r["peak_mem_mb"] is None
        else f"mem {r['peak_mem_mb']:.0f}/{r['peak_mem_mb_reference']:.0f} MB"
    )
    setup = "" if r["compile_seconds"] is None else f" (set-up {r['compile_seconds']:.1f} s)"
    return (
        f"{r['model']:15s} {r['step']:7s} {r['precision']:8s}"
        f" pyro {r['ms_per_step']:8.1f} ms{setup}"
        f"  ref {r['ms_per_step_reference']:8.1f} ms  ratio {r['ratio_pyro_to_reference']:.3f}"
        f"  original-style {r['ms_per_step_original_style']:8.1f} ms"
        f" (ratio {r['ratio_pyro_to_original_style']:.3f})"
        + (
            ""
            if r["ms_per_step_original"] is None
            else f"  original {r['ms_per_step_original']:8.1f} ms"
            f" (ratio {r['ratio_pyro_to_original']:.3f})"
        )
        + f"  {memory}"
        f"  {r['gflop_per_step']:.2f} GFLOP {r['gflop_per_s']:.1f} GFLOP/s"
        f" ({r['fraction_of_gemm']:.2f} of GEMM {r['gemm_gflop_per_s']:.1f},"
        f" {r['fraction_of_own_products']:.2f} of its own products' rate)"
    )


def fail(message: str) -> None:
    """Exit with status 2 and the one line ``error: message``."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def model_names(models: str) -> list[str]:
    """The models of ``--models`` (a comma list, or ``all``); a one-line error for any without
    a reference step."""
    available = references()
    names = sorted(available) if models == "all" else models.split(",")
    unknown = [n for n in names if n not in available]
    if unknown:
        fail(f"--models: no reference step for {unknown}; known: {sorted(available)}")
    return names


def report(
    names: list[str], measure: Callable[[str], dict], line: Callable[[dict], str], out: Path | None
) -> list[dict]:
    """``measure`` each model in turn, print ``line`` of its row as it comes, and write the rows
    as a JSON list to ``out`` (None: not written); returns the rows."""
    rows = []
    for name in names:
        rows.append(measure(name))
        print(f"{name:15s} {line(rows[-1])}", flush=True)
    if out:
        out.write_text(json.dumps(rows, indent=2))
    return rows


def checked(opts: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The models and Pyro step variants (``"<kind>/<precision>"``) that ``opts`` asks for; a
    one-line error for any it cannot run."""
    names = model_names(opts.models)
    kinds, precisions = opts.step.split(","), opts.precision.split(",")
    if any(kind not in STEPS for kind in kinds) or len(set(kinds)) < len(kinds):
        fail(f"--step {opts.step}: expected a comma list of distinct {'|'.join(STEPS)}")
    if any(p not in PRECISIONS for p in precisions) or len(set(precisions)) < len(precisions):
        fail(
            f"--precision {opts.precision}: expected a comma list of distinct "
            f"{'|'.join(PRECISIONS)}"
        )
    if opts.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: torch sees no CUDA device here; use --device cpu")
    if "graph" in kinds and opts.device != "cuda":
        fail("--step graph: a CUDA graph needs --device cuda; use --step eager or compile")
    if opts.original and (why := problem(opts.original, opts.shape, names)):
        fail(why)
    return names, [f"{kind}/{precision}" for kind in kinds for precision in precisions]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="all", help="comma-separated names, or all")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="speech")
    parser.add_argument("--T", type=int, default=50)
    parser.add_argument("--B", type=int, default=128)
    parser.add_argument("--x-dim", type=int, default=None, help="override D (tiny smoke runs)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--step",
        default="eager",
        help=f"how the Pyro step runs (train.step): comma list of {', '.join(STEPS)}",
    )
    parser.add_argument(
        "--precision",
        default="float32",
        help=f"the Pyro step's arithmetic (train.precision): comma list of {', '.join(PRECISIONS)}",
    )
    parser.add_argument(
        "--sites",
        default="trajectory",
        choices=["trajectory", "markov"],
        help="latent sample sites of the Pyro step (model.sites)",
    )
    parser.add_argument(
        "--allocator",
        default="keep",
        choices=list(ALLOCATORS),
        help="the CPU allocator of the timing processes (train.cpu_allocator), for every step",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=3, help="timing processes per model")
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure peak memory, one process per variant (--no-memory: null)",
    )
    parser.add_argument(
        "--original",
        type=Path,
        default=None,
        help="a checkout of the original implementation: time its own step too",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--readme",
        action="store_true",
        help="save to benchmarks/results/ and regenerate benchmarks/README.md",
    )
    opts = parser.parse_args(argv)
    names, variants = checked(opts)
    rows = []
    for name in names:
        measured = compare(name, variants, opts)
        for variant in variants:
            rows.append(row(name, variant, measured, opts))
            print(summary(rows[-1]), flush=True)
    if opts.json:
        opts.json.write_text(json.dumps(rows, indent=2))
    if opts.readme:
        save_results(rows, opts, variants)
        write_readme()
    return rows


def save_results(rows: list[dict], opts: argparse.Namespace, variants: list[str]) -> None:
    """``benchmarks/results/<shape>_<device>_B<B>_T<T>[_<sites>][_<step>][_<precision>].json``,
    one file per step variant (no suffix for ``eager``, ``float32``), each with the machine."""
    RESULTS.mkdir(exist_ok=True)
    for variant in variants:
        kind, precision = variant.split("/")
        stem = f"{opts.shape}_{opts.device}_B{opts.B}_T{opts.T}"
        stem += "" if opts.sites == "trajectory" else f"_{opts.sites}"
        stem += "" if kind == "eager" else f"_{kind}"
        stem += "" if precision == "float32" else f"_{precision}"
        mine = [r for r in rows if (r["step"], r["precision"]) == (kind, precision)]
        saved = {"machine": machine(), "rows": mine}
        (RESULTS / f"{stem}.json").write_text(json.dumps(saved, indent=2))


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
            + ("" if first.get("step", "eager") == "eager" else f", step={first['step']}")
            + ("" if first.get("precision", "float32") == "float32" else f", {first['precision']}")
            + f"\n\nMachine: {saved['machine']}.\n\n"
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

"""CI smoke run of the step benchmark: it runs and its JSON is complete (no timing asserted)."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "model",
    "step",
    "precision",
    "compile_seconds",
    "shape",
    "device",
    "sites",
    "allocator",
    "ms_per_step",
    "ms_per_step_reference",
    "ratio_pyro_to_reference",
    "ratio_pyro_to_reference_by_round",
    "ms_per_step_original_style",
    "ratio_pyro_to_original_style",
    "ms_per_step_original",
    "ratio_pyro_to_original",
    "ratio_pyro_to_original_by_round",
    "ratio_reference_to_original",
    "ms_per_step_original_contiguous",
    "ratio_pyro_to_original_contiguous",
    "peak_mem_mb",
    "gflop_per_step",
    "gflop_per_s",
    "gemm_gflop_per_s",
    "fraction_of_gemm",
    "ms_own_products",
    "fraction_of_own_products",
}


MODELS = ("vae", "dkf", "storn", "vrnn", "srnn", "rvae_causal", "rvae_noncausal", "dsae")
"""The eight models of the benchmark, in the paper's order."""
TINY = ["--steps", "2", "--warmup", "0", "--B", "2", "--T", "4", "--x-dim", "8", "--threads", "1"]


def benchmark(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """``benchmarks/train_step.py args`` in a process of its own (``timeout``: a hang guard)."""
    script = str(ROOT / "benchmarks" / "train_step.py")
    command = [sys.executable, script, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_benchmark_smoke_json(tmp_path):
    out = tmp_path / "bench.json"
    done = benchmark(
        "--models", "vae,dkf", *TINY, "--rounds", "1", "--sites", "markov", "--json", str(out)
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["vae", "dkf"]
    for row in rows:
        assert KEYS <= set(row)
        assert (row["step"], row["compile_seconds"]) == ("eager", None)
        assert (row["shape"], row["device"], row["sites"]) == ("speech", "cpu", "markov")
        assert row["allocator"] == "keep"  # the trainer's default
        assert row["ms_per_step"] > 0 and row["ms_per_step_reference"] > 0
        ratio = row["ms_per_step"] / row["ms_per_step_reference"]
        assert abs(row["ratio_pyro_to_reference"] - ratio) < 0.01 * ratio + 1e-3
        # one round: its own ratio is the ratio of the medians
        assert row["ratio_pyro_to_reference_by_round"] == [row["ratio_pyro_to_reference"]]
        original = row["ms_per_step"] / row["ms_per_step_original_style"]
        assert abs(row["ratio_pyro_to_original_style"] - original) < 0.01 * original + 1e-3
        assert row["ms_per_step_original"] is None  # no --original checkout given
        assert row["peak_mem_mb"] > 0
        assert row["gflop_per_step"] > 0 and row["gemm_gflop_per_s"] > 0
        # the FLOP keys carry 4 significant digits (relative rounding <= 5e-4 each) and
        # ms_per_step 2 decimals (<= 0.005 ms): the recomputed values agree to the sum
        rel = 3 * 5e-4 + 0.005 / row["ms_per_step"]
        rate = row["gflop_per_step"] / (row["ms_per_step"] / 1000)
        assert abs(row["gflop_per_s"] - rate) <= rel * rate
        fraction = row["gflop_per_s"] / row["gemm_gflop_per_s"]
        assert abs(row["fraction_of_gemm"] - fraction) <= 3 * 5e-4 * fraction
        own = row["ms_own_products"] / row["ms_per_step"]
        assert row["ms_own_products"] > 0
        assert abs(row["fraction_of_own_products"] - own) <= 5e-4 * own + rel * own


def test_compile_step_runs_and_reports_its_keys(tmp_path):
    """``--step compile`` on the CPU: one row per model with the set-up timed apart (the
    compilation takes longer than a compiled step), and null memory under ``--no-memory``."""
    out = tmp_path / "compile.json"
    done = benchmark(
        "--models", "dkf", "--step", "compile", *TINY, "--rounds", "1", "--no-memory",
        "--allocator", "system", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.read_text())
    assert KEYS <= set(row) and row["allocator"] == "system"
    assert (row["model"], row["step"], row["device"]) == ("dkf", "compile", "cpu")
    assert row["compile_seconds"] > row["ms_per_step"] / 1000 > 0
    assert row["peak_mem_mb"] is None and row["peak_mem_mb_reference"] is None
    ratio = row["ms_per_step"] / row["ms_per_step_reference"]
    assert abs(row["ratio_pyro_to_reference"] - ratio) < 0.01 * ratio + 1e-3


def test_both_precisions_alternate_in_one_process(tmp_path):
    """``--precision float32,bfloat16``: one row per step variant, the reference shared."""
    out = tmp_path / "precision.json"
    done = benchmark(
        "--models", "vae", "--precision", "float32,bfloat16", *TINY, "--rounds", "1",
        "--no-memory", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [(r["step"], r["precision"]) for r in rows] == [
        ("eager", "float32"),
        ("eager", "bfloat16"),
    ]
    assert rows[0]["ms_per_step_reference"] == rows[1]["ms_per_step_reference"]
    bad = benchmark("--models", "vae", "--precision", "float16", *TINY)
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "error: --precision float16: expected a comma list of distinct float32|bfloat16"
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_graph_step_without_cuda_is_a_one_line_error():
    done = benchmark("--models", "vae", "--step", "eager,graph", *TINY)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: --step graph: a CUDA graph needs --device cuda; use --step eager or compile"
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_graph_step_runs_on_cuda_and_reports_its_keys(tmp_path):
    out = tmp_path / "graph.json"
    done = benchmark(
        "--models", "dkf", "--device", "cuda", "--step", "eager,graph", *TINY, "--rounds", "1",
        "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [(r["model"], r["step"]) for r in rows] == [("dkf", "eager"), ("dkf", "graph")]
    for row in rows:
        assert KEYS <= set(row) and row["device"] == "cuda" and row["peak_mem_mb"] > 0
    assert rows[1]["compile_seconds"] > 0


@pytest.mark.parametrize("kind", ["eager", "compile"])
def test_the_pyro_step_is_the_trainers_step(kind):
    """The benchmark's Pyro step takes the trainer's step (``pyro_dvae.step.train_step``): from
    the same weights, noise and batch, the same loss and the same updated weights, in float64
    (eager and compiled kernels then differ by far less than the 1e-9 allowed); under
    ``compile`` the networks run compiled."""
    from benchmarks.train_step import build, data, pyro_step
    from pyro_dvae.step import ELBOLoss, train_step

    torch.manual_seed(0)
    model = build("vae", "speech", 9, torch.device("cpu")).double()
    x = data("speech", 3, 5, 9, torch.device("cpu")).double()
    trainer = copy.deepcopy(model)
    loss, optimizer = ELBOLoss(trainer, "mean_field"), torch.optim.Adam(trainer.parameters(), 1e-4)
    step, prepare = pyro_step(model, x, kind)
    torch.manual_seed(1)
    prepare()  # compile: compiles and takes the first step
    torch.manual_seed(1)
    if kind == "compile":
        train_step(loss, optimizer, x, None, 1.0)
    torch.manual_seed(2)
    value = step()
    torch.manual_seed(2)
    expected = train_step(loss, optimizer, x, None, 1.0)
    torch.testing.assert_close(value, expected, rtol=1e-9, atol=0)
    for (name, p), q in zip(model.named_parameters(), trainer.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
    compiled = [m for m in model.modules() if getattr(m, "_compiled_call_impl", None)]
    assert bool(compiled) == (kind == "compile")


def test_reference_losses_equal_the_pyro_loss():
    """The benchmark compares like with like: same seed, same loss value."""
    import torch
    from pyro.infer import TraceMeanField_ELBO

    sys.path.insert(0, str(ROOT))
    from benchmarks.train_step import build, data, references

    for name, reference in references().items():
        model = build(name, "speech", 9, torch.device("cpu"))
        x = data("speech", 3, 5, 9, torch.device("cpu"))
        torch.manual_seed(0)
        pyro_loss = TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, x, 1.0)
        torch.manual_seed(0)
        torch.testing.assert_close(
            reference(model, x),
            pyro_loss,
            rtol=1e-5,
            atol=1e-5,
            msg=f"{name}: reference and Pyro losses differ",
        )


def test_original_formulas_shift_the_loss_by_the_known_constants():
    """IS divergence = Exponential NLL − Σ(log x + 1); the original KL = KL + ½ per latent dim."""
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.reference_basic import original_formulas, reference_loss_vae
    from benchmarks.train_step import build, data

    model = build("vae", "speech", 9, torch.device("cpu"))
    x = data("speech", 3, 5, 9, torch.device("cpu"))
    torch.manual_seed(0)
    ours = reference_loss_vae(model, x)
    torch.manual_seed(0)
    with original_formulas():
        original = reference_loss_vae(model, x)
    B, T, _ = x.shape
    shift = (-(torch.log(x) + 1).sum() + 0.5 * B * T * model.z_dim) / (B * T)
    torch.testing.assert_close(original, ours + shift, rtol=1e-5, atol=1e-4)


def test_flop_count_of_one_lstm_layer_and_a_linear_layer_by_hand():
    """nn.LSTM (oneDNN on the CPU, which FlopCounterMode alone counts as 0): forward
    2·T·B·4H·(D + H), backward twice that; where torch runs its own LSTM instead (a build or
    setting without oneDNN), FlopCounterMode counts its products, and its backward skips the
    gradient of h_0 = 0, one step's (B × 4H) @ (4H × H). A Linear layer on an input that needs
    no gradient: forward 2·N·D·H and the weight's gradient as much again."""
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.train_step import count_flops

    B, T, D, H = 2, 4, 5, 3
    rnn, linear = torch.nn.LSTM(D, H, batch_first=True), torch.nn.Linear(D, H)
    x = torch.randn(B, T, D, requires_grad=True)
    onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    skipped = 0 if onednn else 2 * B * 4 * H * H
    assert count_flops(lambda: rnn(x)[0].sum()) == 3 * 2 * T * B * 4 * H * (D + H) - skipped
    assert count_flops(lambda: linear(x.detach()).sum()) == 2 * 2 * (T * B) * D * H


def test_allocator_benchmark_smoke_json(tmp_path):
    """``benchmarks/allocator.py``: both settings timed for each model, and the savings are
    1 − keep / system of the medians it reports (rounded to 3 decimals each)."""
    out = tmp_path / "allocator.json"
    script = str(ROOT / "benchmarks" / "allocator.py")
    command = [sys.executable, script, "--models", "vae", *TINY, "--rounds", "1"]
    command += ["--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.read_text())
    assert (row["model"], row["B"], row["T"], row["rounds"]) == ("vae", 2, 4, 1)
    for step in ("pyro", "reference"):
        system, keep = row[f"{step}_ms_system"], row[f"{step}_ms_keep"]
        assert system > 0 and keep > 0
        assert abs(row[f"{step}_saving"] - (1 - keep / system)) <= 1e-3 * (1 + keep / system)


@pytest.mark.parametrize("name", MODELS)
def test_every_reference_step_scores_motion_with_the_mpjpe(name):
    """At motion shape the hand-written reference loss is the Pyro ELBO's, MPJPE included
    (not the speech models' Exponential NLL), with the same gradients: the configs' motion
    sizes, B = 3, T = 5, the same noise. In float64, where the two orders of summation agree to
    ~1e-15, far inside the helper's 1e-5 (in float32 one small gradient element of SRNN's
    differs by 4e-4 relative)."""
    from benchmarks.train_step import build, references
    from tests.models.by_hand import assert_reference_matches_pyro

    torch.manual_seed(0)
    model = build(name, "motion", 96, torch.device("cpu")).double()
    assert type(model.likelihood).__name__ == "MPJPE"
    x = 0.3 * torch.randn(3, 5, 96, dtype=torch.float64)
    assert_reference_matches_pyro(model, references()[name], x)


def test_with_setting_sets_the_switch_before_each_timed_call():
    """Two settings of one switch alternated: each call sees its own value."""
    from types import SimpleNamespace

    from benchmarks.train_step import alternated_ms, with_setting

    switch, seen = SimpleNamespace(value=None), []
    step = lambda: seen.append(switch.value) or 0.001  # noqa: E731 (a one-line stand-in)
    steps = {k: with_setting(switch, "value", k, step) for k in ("a", "b")}
    assert set(alternated_ms(steps, 1, 2)) == {"a", "b"}
    assert seen == ["a", "b"] * 3


def test_own_products_of_an_lstm_layer_and_a_batched_product_by_hand():
    """The plain products behind ``ms_own_products``: oneDNN's LSTM layer as the input's
    product over all T·B rows and the recurrent one per step (forward), the input's and both
    weights' gradients and the recurrent one per step (backward); a batched product and its
    backward to the one input that needs a gradient."""
    from collections import Counter

    from benchmarks.train_step import own_products

    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        pytest.skip("torch runs its own LSTM here: its products are mm calls")
    B, T, D, H = 2, 4, 5, 3
    G, rnn = 4 * H, torch.nn.LSTM(D, H, batch_first=True)
    x = torch.randn(B, T, D, requires_grad=True)
    forward = {(1, T * B, D, G): 1, (1, B, H, G): T}
    backward = {(1, T * B, G, D): 1, (1, D, T * B, G): 1, (1, B, G, H): T, (1, H, T * B, G): 1}
    assert own_products(lambda: rnn(x)[0].sum()) == Counter(forward | backward)
    a, b = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 4, 5)
    assert own_products(lambda: (a @ b).sum()) == Counter({(2, 3, 4, 5): 1, (2, 3, 5, 4): 1})


@pytest.mark.parametrize("scan_threshold", [0, None], ids=["scan", "shipped"])
@pytest.mark.parametrize("name", MODELS)
def test_own_products_carry_the_counted_flops(name, scan_threshold, monkeypatch):
    """Every model's recorded products hold exactly the FLOPs that ``gflop_per_step`` counts
    (FlopCounterMode with oneDNN's RNN layers), so ``ms_own_products`` times the step's whole
    arithmetic and nothing else: with the LSTM scans of small steps forced on (threshold 0) and
    as shipped (torch's LSTM at this size)."""
    from benchmarks.train_step import build, count_flops, data, own_products
    from pyro_dvae import scan
    from pyro_dvae.step import ELBOLoss

    if scan_threshold is not None:
        monkeypatch.setattr(scan, "SCAN_MIN_STEP_INPUT", scan_threshold)
    torch.manual_seed(0)
    model = build(name, "speech", 9, torch.device("cpu"))
    x = data("speech", 3, 5, 9, torch.device("cpu"))
    loss = ELBOLoss(model, "mean_field")
    counts = own_products(lambda: loss(x, None, 1.0))
    flops = sum(2 * b * m * k * n * count for (b, m, k, n), count in counts.items())
    assert flops == count_flops(lambda: loss(x, None, 1.0)) > 0


def test_switch_ab_times_every_setting_and_restores_the_first():
    """A model's step under each setting of a switch, alternated; afterwards the switch holds
    the first setting again (the shipped one, in the A/B scripts)."""
    from types import SimpleNamespace

    from benchmarks.train_step import switch_ab

    switch = SimpleNamespace(value="shipped")
    times = switch_ab(
        switch, "value", {"shipped": "shipped", "other": "other"}, n=2, warmup=0,
        model="vae", shape="speech", B=2, T=4, x_dim=8, threads=1,
    )  # fmt: skip
    assert set(times) == {"shipped", "other"} and min(times.values()) > 0
    assert switch.value == "shipped"


def test_record_prints_each_row_and_writes_them_all(tmp_path, capsys):
    from benchmarks.train_step import record

    rows = [{"model": "vae", "a": 1.5}, {"model": "dkf", "a": 2.0}]
    record(str(tmp_path / "out.json"), iter(rows))
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == rows
    assert json.loads((tmp_path / "out.json").read_text()) == rows

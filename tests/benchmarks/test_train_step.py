"""CI smoke run of the step benchmark: it runs and its JSON is complete (no timing asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "model",
    "shape",
    "device",
    "sites",
    "ms_per_step",
    "ms_per_step_reference",
    "ratio_pyro_to_reference",
    "ms_per_step_original_style",
    "ratio_pyro_to_original_style",
    "peak_mem_mb",
}


def test_benchmark_smoke_json(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "train_step.py"),
            "--models",
            "vae,dkf",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--B",
            "2",
            "--T",
            "4",
            "--x-dim",
            "8",
            "--threads",
            "1",
            "--rounds",
            "1",
            "--sites",
            "markov",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["vae", "dkf"]
    for row in rows:
        assert KEYS <= set(row)
        assert (row["shape"], row["device"], row["sites"]) == ("speech", "cpu", "markov")
        assert row["ms_per_step"] > 0 and row["ms_per_step_reference"] > 0
        ratio = row["ms_per_step"] / row["ms_per_step_reference"]
        assert abs(row["ratio_pyro_to_reference"] - ratio) < 0.01 * ratio + 1e-3
        original = row["ms_per_step"] / row["ms_per_step_original_style"]
        assert abs(row["ratio_pyro_to_original_style"] - original) < 0.01 * original + 1e-3
        assert row["peak_mem_mb"] > 0


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

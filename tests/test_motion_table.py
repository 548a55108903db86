"""The motion table (experiments/motion_table.py) from fake run directories: how each run
ended, its row, the orderings against the paper's, the forecast table, and the section it
writes into docs/results.md."""

import csv
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tests.helpers import compose_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import motion_table  # noqa: E402  (a script beside long_run.py, not a package module)

ZERO_VELOCITY = {"80": 19.7, "160": 37.7, "320": 69.3, "400": 82.7, "1000": 137.8}


def fake_run(run_dir: Path, model: str, epochs: int, best, lr: float, *overrides: str) -> None:
    """A run of ``model`` with the motion recipe (and ``overrides``): its config.yaml and a
    metrics.csv of ``epochs`` epochs, 12 s each, whose best epoch after epoch e is best(e)."""
    cfg = compose_config([f"model={model}", "+experiment=motion", *overrides])
    run_dir.mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["epoch", "lr", "seconds", "best_epoch"])
        writer.writeheader()
        for e in range(epochs):
            writer.writerow({"epoch": e, "lr": lr, "seconds": 12.0, "best_epoch": best(e)})


def write(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def forecast(run_dir: Path, mode: str, at_ms: dict[str, float]) -> None:
    results = {
        "forecast": {"mpjpe_mm": {"at_ms": at_ms}},
        "zero_velocity": {"mpjpe_mm": {"at_ms": ZERO_VELOCITY}},
    }
    write(motion_table.forecast_dir(run_dir, mode) / "results.json", results)


def runs(root: Path) -> dict[str, Path]:
    """SRNN stopped early (best epoch 55, 30 epochs without better after it, all at full KL
    weight), VRNN unfinished with results of an earlier epoch, VAE at its 60-epoch budget without
    wall.json, DKF with one epoch and no results; the other four not run."""
    dirs = {m: root / m for m in motion_table.MODELS}
    fake_run(dirs["srnn"], "srnn", 86, lambda e: min(e, 55), 1e-3)
    write(dirs["srnn"] / "results.json", {"mpjpe_mm": 31.5, "mpjpe_mm_subset": 40.25, "epochs": 86})
    write(dirs["srnn"] / "wall.json", {"seconds": 9000.0, "sessions": 2})
    forecast(
        dirs["srnn"], "mean", {"80": 18.5, "160": 40.0, "320": 70.0, "400": 80.5, "1000": 140.0}
    )
    forecast(
        dirs["srnn"], "sample", {"80": 21.0, "160": 41.0, "320": 71.0, "400": 85.0, "1000": 150.0}
    )
    fake_run(dirs["vrnn"], "vrnn", 40, lambda e: e, 1e-4)
    write(
        dirs["vrnn"] / "results.json", {"mpjpe_mm": 200.0, "mpjpe_mm_subset": 250.5, "epochs": 30}
    )
    write(dirs["vrnn"] / "wall.json", {"seconds": 1800.0, "sessions": 1})
    forecast(
        dirs["vrnn"], "mean", {"80": 50.0, "160": 60.0, "320": 70.0, "400": 80.0, "1000": 90.0}
    )
    fake_run(dirs["vae"], "vae", 60, lambda e: e - 1 if e > 50 else e, 1e-4, "train.epochs=60")
    write(dirs["vae"] / "results.json", {"mpjpe_mm": 190.0, "mpjpe_mm_subset": 240.0, "epochs": 60})
    fake_run(dirs["dkf"], "dkf", 1, lambda e: e, 1e-4)
    return dirs


def test_how_each_run_ended(tmp_path):
    dirs = runs(tmp_path)
    assert motion_table.progress(dirs["srnn"]) == motion_table.Progress(
        86, 55, 300, "early stopping"
    )
    assert motion_table.progress(dirs["vrnn"]) == motion_table.Progress(40, 39, 300, None)
    assert motion_table.progress(dirs["vae"]) == motion_table.Progress(60, 58, 60, "epoch budget")
    assert motion_table.progress(dirs["storn"]) is None


def test_patience_counts_only_at_full_kl_weight(tmp_path):
    """Best epoch 10, 39 epochs later: the KL weight reaches 1 only at epoch 50 (0 for epochs
    0-9, +0.2 every 10), so the run goes on; with the warm-up off it has stopped."""
    fake_run(tmp_path / "warm", "vae", 49, lambda e: min(e, 10), 1e-4)
    fake_run(tmp_path / "off", "vae", 49, lambda e: min(e, 10), 1e-4, "train.warmup_every=0")
    assert motion_table.progress(tmp_path / "warm").stopped is None
    assert motion_table.progress(tmp_path / "off").stopped == "early stopping"


def test_the_mpjpe_table(tmp_path):
    dirs = runs(tmp_path)
    assert motion_table.mpjpe_table(dirs)[2:] == [
        "| SRNN | 31.50 | 40.25 | 86 | 55 | early stopping | 2.50 | 12.0 | 0.001 | 7.86 |",
        "| VRNN | 200.00 (at 30 epochs) | 250.50 (at 30 epochs) | 40 | 39 "
        "| unfinished: 40 of 300 epochs done | 0.50 | 12.0 | 0.0001 | 9.22 |",
        "| STORN | not run | not run | – | – | – | – | – | – | 9.47 |",
        "| RVAE-NC | not run | not run | – | – | – | – | – | – | 28.59 |",
        "| DSAE | not run | not run | – | – | – | – | – | – | 28.61 |",
        "| RVAE-C | not run | not run | – | – | – | – | – | – | 31.09 |",
        "| DKF | – | – | 1 | 0 | unfinished: 1 of 300 epochs done | – | 12.0 | 0.0001 | 42.21 |",
        "| VAE | 190.00 | 240.00 | 60 | 58 | epoch budget | – | 12.0 | 0.0001 | 48.69 |",
        "",
        "Paper (Human3.6M, S11): SRNN < VRNN ≈ STORN ≪ RVAE-NC ≈ DSAE < RVAE-C < DKF < VAE.",
        "Here (all joints): SRNN 31.5 < VAE 190.0 < VRNN 200.0; 2 of the 3 pairs that the paper "
        "orders are in its order.",
    ]


def test_pairs_the_paper_does_not_order_are_not_counted():
    assert motion_table.paper_pairs({"vrnn": 5.0, "storn": 1.0}) == (0, 0)
    assert motion_table.paper_pairs({"vrnn": 5.0, "storn": 1.0, "dsae": 3.0}) == (1, 2)


def test_the_forecast_table(tmp_path):
    assert motion_table.forecast_table(runs(tmp_path)) == [
        "| model | forecast | 80 ms | 160 ms | 320 ms | 400 ms | 1000 ms |",
        "|---|---|---|---|---|---|---|",
        "| zero velocity | last context frame held | 19.7 | 37.7 | 69.3 | 82.7 | 137.8 |",
        "| SRNN | prior mean path | 18.5 | 40.0 | 70.0 | 80.5 | 140.0 |",
        "| SRNN | sampled (error averaged over 5 draws) | 21.0 | 41.0 | 71.0 | 85.0 | 150.0 |",
        "| VRNN | prior mean path | 50.0 | 60.0 | 70.0 | 80.0 | 90.0 |",
        "",
        "Better than holding the last pose: SRNN (mean path) at 80, 400 ms; "
        "VRNN (mean path) at 400, 1000 ms.",
    ]
    assert motion_table.forecast_table({m: tmp_path / "none" for m in motion_table.MODELS}) == [
        "No forecasts yet."
    ]


def test_the_section_replaces_its_own_block_only(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\n## Speech\n\ntext\n")
    motion_table.write_section("## Motion\n\nold", doc, motion_table.MARKERS)
    motion_table.write_section("## Motion\n\nnew", doc, motion_table.MARKERS)
    doc.write_text(doc.read_text() + "\n## Music\n")
    motion_table.write_section("## Motion\n\nnewer", doc, motion_table.MARKERS)
    start, end = motion_table.MARKERS
    assert doc.read_text() == (
        f"# Results\n\n## Speech\n\ntext\n\n{start}\n## Motion\n\nnewer\n{end}\n\n## Music\n"
    )

"""experiments/music_table.py: a JSB row's estimators, gaps, epochs and wall time from a run
directory's results.json, metrics.csv, config.yaml, run.log and wall.json."""

import json
import sys
from pathlib import Path

import pytest

from pyro_dvae.runner import train_config
from tests.helpers import compose_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import music_table  # noqa: E402  (a script beside long_run.py, not a package module)

DKF, IAF = (next(r for r in music_table.RECIPES if r.run == run)
            for run in ("dmm_jsb_exact", "dmm_jsb_iaf"))  # fmt: skip
# Estimators that are sums of powers of 2 (exact in binary), distinct so that a swap shows.
RESULTS = {
    "elbo_per_step": -7.25,
    "elbo_per_sequence_step": -7.125,
    "nll_per_step": 6.375,
    "iwae_samples": 2000,
    "epochs": 3,
    "best_epoch": 1,
}
# The gaps, ours − published: 7.25 − 6.87 = 0.38, 7.125 − 6.854 = 0.271, 6.375 − 6.432 = −0.057.
# Their float64 errors (~1e-15) are far below the 5e-4 that would move a third decimal.
ROW = (
    "| DKF (Pyro's DMM recipe) | 3 of 5000 (unfinished) | 1 | 1.5 "
    "| 7.250 | +0.380 vs 6.87 | 7.125 | +0.271 vs 6.854 | 6.375 | -0.057 vs 6.432 |"
)


def fake_run(
    run_dir: Path, epochs_done: int = 3, results: dict | None = RESULTS, log: str = ""
) -> Path:
    """A run directory: config.yaml (5,000 epochs planned), metrics.csv with ``epochs_done``
    rows, wall.json of 1.5 h, run.log holding ``log`` and ``results`` as results.json."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        "train: {epochs: 5000}\ndata: {modality: music}\n"
        "modality_defaults: {music: {epochs: 4000}}\n"
    )
    rows = [f"{epoch},{min(epoch, 1)}" for epoch in range(epochs_done)]
    (run_dir / "metrics.csv").write_text("\n".join(["epoch,best_epoch", *rows]) + "\n")
    (run_dir / "wall.json").write_text(json.dumps({"seconds": 5400.0, "sessions": 2}))
    (run_dir / "run.log").write_text(log)
    if results is not None:
        (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_row_has_the_three_estimators_and_their_gaps(tmp_path):
    assert music_table.row(DKF, fake_run(tmp_path / "dmm_jsb")) == ROW


def test_the_iaf_row_is_measured_against_pyros_two_iaf_number(tmp_path):
    row = cells(music_table.row(IAF, fake_run(tmp_path / "dmm_jsb_iaf")))
    assert row[4:6] == ["7.250", "+0.450 vs 6.80"]  # 7.25 − 6.80
    assert row[6:] == cells(ROW)[6:]


@pytest.mark.parametrize(
    ("epochs_done", "log", "expected"),
    [
        (5000, "", "3; 5000 done now"),  # finished, evaluated before the end
        (3, "early stopping after epoch 2 (best 1)\n", "3 (early-stopped)"),
        # resumed with a longer patience after stopping early: training again
        (7, "early stopping after epoch 2 (best 1)\n", "3 of 5000 (unfinished); 7 done now"),
        (7, "", "3 of 5000 (unfinished); 7 done now"),
    ],
)
def test_epochs_say_how_far_the_run_is(tmp_path, epochs_done, log, expected):
    run_dir = fake_run(tmp_path / "run", epochs_done, log=log)
    assert cells(music_table.row(DKF, run_dir))[1] == expected


def test_epochs_planned_default_to_the_modalitys(tmp_path):
    run_dir = fake_run(tmp_path / "run")
    config = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(config.replace("epochs: 5000", "epochs: null"))
    assert cells(music_table.row(DKF, run_dir))[1] == "3 of 4000 (unfinished)"


def test_a_k_other_than_2000_is_marked(tmp_path):
    run_dir = fake_run(tmp_path / "run", results={**RESULTS, "iwae_samples": 100})
    assert cells(music_table.row(DKF, run_dir))[8] == "6.375 (K = 100)"


def test_the_wall_time_says_when_the_run_had_more_than_one_thread(tmp_path):
    run_dir = fake_run(tmp_path / "run")
    config = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(config + "threads: 1\n")
    assert cells(music_table.row(DKF, run_dir))[3] == "1.5"
    (run_dir / "config.yaml").write_text(config + "threads: 2\n")
    assert cells(music_table.row(DKF, run_dir))[3] == "1.5 (2 threads)"


def test_missing_and_unevaluated_runs(tmp_path):
    assert cells(music_table.row(DKF, tmp_path / "absent")) == [DKF.label, "not run"] + [""] * 8
    row = cells(music_table.row(DKF, fake_run(tmp_path / "run", 4, results=None)))
    assert row == [DKF.label, "4 of 5000 (unfinished)", "1", "1.5", "not evaluated"] + ["—"] * 5


def test_table_has_published_rows_and_one_row_per_recipe(tmp_path):
    runs = [(recipe, tmp_path / recipe.run) for recipe in music_table.RECIPES]
    fake_run(tmp_path / DKF.run)
    lines = [line for line in music_table.table(runs, 11.0).splitlines() if line.startswith("|")]
    assert {len(cells(line)) for line in lines} == {10}
    rows = {cells(line)[0]: cells(line) for line in lines[2:]}
    assert rows["DMM authors (ST-R, KL annealing), S = 2000"][4:] == [
        "6.904", "—", "6.854", "—", "6.432", "—"
    ]  # fmt: skip
    assert rows["Pyro `examples/dmm.py`, 2 IAF"][4] == "6.80"
    assert ROW in lines
    others = [rows[r.label][1] for r in music_table.RECIPES if r is not DKF]
    assert others == ["not run"] * (len(music_table.RECIPES) - 1)


def test_write_section_replaces_only_the_text_between_the_markers(tmp_path):
    doc = tmp_path / "results.md"
    start, end = music_table.MARKERS
    doc.write_text(f"before\n{start}\nold\n{end}\nafter\n")
    music_table.write_section("new", doc, music_table.MARKERS)
    assert doc.read_text() == f"before\n{start}\nnew\n{end}\nafter\n"


@pytest.mark.parametrize("recipe", music_table.RECIPES, ids=lambda r: r.run)
def test_every_recipe_composes_into_valid_training_settings(recipe):
    """A recipe's overrides are what its run is started (and resumed) with: a misspelt key or a
    bad value would only show hours into a session."""
    cfg = compose_config([*recipe.overrides, *music_table.SETTINGS])
    tcfg = train_config(cfg, cfg.data.modality)
    assert cfg.data.name == "jsb_chorales" and tcfg.epochs >= 1

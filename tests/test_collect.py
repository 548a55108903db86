"""Collecting sweeps into tables (pyro_dvae.collect, experiments/collect.py) and the launcher
configs of configs/hydra/launcher."""

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pyro_dvae import collect
from tests.helpers import compose_config

ROOT = Path(__file__).resolve().parents[1]
HISTORY = [  # metrics.csv rows: the best epoch (1) is not the last one
    {"epoch": 0, "val_recon": 10.0, "val_kl": 1.0, "seconds": 2.0, "best_epoch": 0},
    {"epoch": 1, "val_recon": 7.0, "val_kl": 2.0, "seconds": 4.0, "best_epoch": 1},
    {"epoch": 2, "val_recon": 8.0, "val_kl": 3.0, "seconds": 3.0, "best_epoch": 1},
]


def config(model: str = "vae", seed: int = 0, **changes) -> dict:
    """A run's config.yaml as a nested dict; ``changes`` are ``{"train.epochs": 5, ...}``."""
    speech = {"vae": {"z_dim": 16, "dense_x_z": [128]}, "dkf": {"z_dim": 8, "dim_rnn_gx": 128}}
    cfg = OmegaConf.create(
        {
            "data": {"name": "fsdd", "max_files": 24, "n_workers": None},
            "model": {"name": model, "speech": speech[model]},
            "guide": {"name": None},
            "prior": {"name": None},
            "seed": seed,
            "threads": 1,
            "train": {"epochs": 3, "progress": True},
        }
    )
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return OmegaConf.to_container(cfg)


def make_run(
    root: Path,
    name: str,
    cfg: dict,
    results: dict | None = None,
    history: list[dict] | None = HISTORY,
) -> Path:
    """A fake run directory with config.yaml, metrics.csv (unless ``history`` is None) and
    results.json (when given), plus Hydra's own .hydra/config.yaml."""
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), run_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(cfg), run_dir / ".hydra" / "config.yaml")
    if history is not None:
        with open(run_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
    if results is not None:
        (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def rows_by_model(rows: list[collect.Row]) -> dict[str, collect.Row]:
    return {row.labels["model"]: row for row in rows}


def test_mean_and_sample_std_over_seeds(tmp_path):
    for seed, si_sdr in enumerate([1.0, 2.0, 4.0]):
        # threads differs too: an execution setting, it must not split the row
        cfg = config(seed=seed, threads=seed + 1)
        make_run(tmp_path, str(seed), cfg, {"si_sdr": si_sdr, "rmse": 0.5, "guide": "default"})
    rows, messages = collect.collect(tmp_path)
    assert messages == []
    assert len(rows) == 1
    row = rows[0]
    assert row.seeds == [0, 1, 2]
    stat = row.stats["si_sdr"]
    assert stat.n == 3
    assert stat.mean == pytest.approx(7 / 3)
    assert stat.std == pytest.approx(math.sqrt(7 / 3))  # ddof=1; ddof=0 would be sqrt(14/9)
    assert row.stats["rmse"].std == 0.0


def test_groups_by_model_and_by_other_config_differences(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, f"vae{seed}", config("vae", seed), {"si_sdr": 5.0 + seed})
        make_run(tmp_path, f"dkf{seed}", config("dkf", seed), {"si_sdr": 1.0 + 2 * seed})
    make_run(tmp_path, "vae_long", config("vae", 0, **{"train.epochs": 9}), {"si_sdr": 9.0})
    rows, _ = collect.collect(tmp_path)
    assert [(r.labels["model"], r.labels["train.epochs"], r.seeds) for r in rows] == [
        ("dkf", "3", [0, 1]),
        ("vae", "3", [0, 1]),
        ("vae", "9", [0]),
    ]
    # the models' layer sizes differ (z_dim, dense_x_z, dim_rnn_gx) but only through the model
    # choice: no column for them; progress, threads and seed never make one
    assert list(rows[0].labels) == ["model", "guide", "data", "train.epochs"]
    assert rows[0].stats["si_sdr"].mean == pytest.approx(2.0)
    assert rows[0].stats["si_sdr"].std == pytest.approx(math.sqrt(2))
    assert rows[1].stats["si_sdr"].mean == pytest.approx(5.5)
    assert rows[2].stats["si_sdr"] == collect.Stat(9.0, None, 1)


def test_a_setting_that_varies_within_one_model_splits_rows(tmp_path):
    make_run(tmp_path, "a", config("vae", 0, **{"model.speech.z_dim": 16}), {"si_sdr": 1.0})
    make_run(tmp_path, "b", config("vae", 1, **{"model.speech.z_dim": 32}), {"si_sdr": 3.0})
    rows, _ = collect.collect(tmp_path)
    assert [(r.labels["model.speech.z_dim"], r.seeds) for r in rows] == [("16", [0]), ("32", [1])]


def test_ignored_keys_from_the_command_line_do_not_split_rows(tmp_path):
    make_run(tmp_path, "a", config(seed=0, **{"data.max_files": 24}), {"si_sdr": 1.0})
    make_run(tmp_path, "b", config(seed=1, **{"data.max_files": 48}), {"si_sdr": 3.0})
    assert len(collect.collect(tmp_path)[0]) == 2
    rows, _ = collect.collect(tmp_path, ignore=["data.max_files"])
    assert len(rows) == 1 and rows[0].stats["si_sdr"].mean == 2.0


def test_training_metrics_are_read_at_the_best_epoch(tmp_path):
    run_dir = make_run(tmp_path, "0", config())
    assert collect.training_metrics(run_dir / "metrics.csv") == {
        "epochs": 3,
        "best_epoch": 1,
        "seconds_per_epoch": 3.0,
        "val_neg_elbo": 9.0,
    }


def test_runs_without_results_json_count_for_training_metrics_only(tmp_path):
    make_run(tmp_path, "0", config(seed=0), {"si_sdr": 4.0, "epochs": 3})
    make_run(tmp_path, "1", config(seed=1))
    make_run(tmp_path, "2", config(seed=2), history=None)  # stopped before its first epoch
    rows, messages = collect.collect(tmp_path)
    assert messages == [
        f"skipped {tmp_path / '2'}: no metrics.csv or results.json (not trained yet?)"
    ]
    (row,) = rows
    assert row.seeds == [0, 1]
    assert row.stats["si_sdr"] == collect.Stat(4.0, None, 1)
    assert row.stats["val_neg_elbo"] == collect.Stat(9.0, 0.0, 2)
    table = collect.markdown(rows)
    assert "| 4.00 (n=1) |" in table and "| 9.00 ± 0.00 |" in table


def test_another_results_file_can_be_collected(tmp_path):
    run_dir = make_run(tmp_path, "0", config(), {"si_sdr": 5.0})
    (run_dir / "results_generation.json").write_text(json.dumps({"si_sdr": -2.0}))
    done = cli(
        "experiments/collect.py",
        str(tmp_path),
        "--results",
        "results_generation.json",
        "--out",
        str(tmp_path / "generation"),
    )
    assert done.returncode == 0, done.stderr
    assert "| vae | default | fsdd | 0 | -2.00 |" in (tmp_path / "generation.md").read_text()


def test_summarise_skips_missing_values():
    assert collect.summarise([1.0, None, float("nan"), 3.0]) == collect.Stat(2.0, math.sqrt(2), 2)
    assert collect.summarise([None, float("nan")]) is None


def test_results_older_than_the_training_are_reported(tmp_path):
    run_dir = make_run(tmp_path, "0", config(), {"si_sdr": 4.0, "epochs": 2, "best_epoch": 0})
    rows, messages = collect.collect(tmp_path)
    assert messages == [
        f"{run_dir / 'results.json'}: written after 2 epochs, but metrics.csv has 3; its test "
        f"metrics may be of an older checkpoint (run experiments/evaluate.py run_dir={run_dir} "
        "again)"
    ]
    # the training columns are metrics.csv's, the test metrics results.json's
    assert rows[0].stats["epochs"].mean == 3 and rows[0].stats["best_epoch"].mean == 1
    assert rows[0].stats["si_sdr"].mean == 4.0


def test_markdown_and_csv_tables(tmp_path):
    for seed, (si_sdr, estoi) in enumerate([(1.0, 0.5), (2.0, 0.6), (4.0, 0.7)]):
        make_run(tmp_path, str(seed), config(seed=seed), {"si_sdr": si_sdr, "estoi": estoi})
    make_run(tmp_path, "dkf", config("dkf"), {"si_sdr": -1.0, "guide": "dks"})
    rows, _ = collect.collect(tmp_path)
    lines = collect.markdown(rows).splitlines()
    assert lines[0] == (
        "| model | guide | data | seeds | SI-SDR (dB) | ESTOI | val −ELBO (best epoch) | epochs "
        "| best epoch | s / epoch |"
    )
    assert lines[2] == (
        "| vae | default | fsdd | 0, 1, 2 | 2.33 ± 1.53 | 0.600 ± 0.100 | 9.00 ± 0.00 "
        "| 3 ± 0 | 1 ± 0 | 3.00 ± 0.00 |"
    )
    assert lines[3].startswith("| dkf | dks | fsdd | 0 | -1.00 | – | 9.00 |")
    table = list(csv.DictReader(io.StringIO(collect.csv_text(rows))))
    assert table[0]["seeds"] == "0 1 2" and table[0]["n_runs"] == "3"
    assert float(table[0]["si_sdr_mean"]) == pytest.approx(7 / 3, abs=1e-12)
    assert float(table[0]["si_sdr_std"]) == pytest.approx(math.sqrt(7 / 3), abs=1e-12)
    assert table[1]["si_sdr_std"] == "" and table[1]["estoi_n"] == "0"
    assert table[1]["run_dirs"] == str(tmp_path / "dkf")


def test_epoch_counts_show_a_decimal_only_when_their_mean_needs_one(tmp_path):
    make_run(tmp_path, "0", config(seed=0))
    make_run(tmp_path, "1", config(seed=1), history=HISTORY[:2])  # stopped one epoch earlier
    lines = collect.markdown(collect.collect(tmp_path)[0]).splitlines()
    assert lines[0].endswith("| epochs | best epoch | s / epoch |")
    assert lines[2].endswith("| 2.5 ± 0.7 | 1 ± 0 | 3.00 ± 0.00 |")


def test_repeated_seeds_are_reported(tmp_path):
    make_run(tmp_path, "a", config(seed=0), {"si_sdr": 1.0})
    make_run(tmp_path, "b", config(seed=0), {"si_sdr": 3.0})
    rows, messages = collect.collect(tmp_path)
    assert rows[0].seeds == [0, 0]
    assert messages == [
        f"vae, default, fsdd: seed 0 occurs 2 times ({tmp_path / 'a'}, {tmp_path / 'b'})"
    ]


def test_run_dirs_are_found_in_natural_order_outside_hidden_folders(tmp_path):
    for name in ("10", "2", "sub/1"):
        make_run(tmp_path, name, config())
    (tmp_path / ".submitit" / "7").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config()), tmp_path / ".submitit" / "7" / "config.yaml")
    assert collect.find_run_dirs(tmp_path) == [tmp_path / "2", tmp_path / "10", tmp_path / "sub/1"]


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="SWEEP_DIR=.*nowhere: no such folder"):
        collect.collect(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no trained run"):
        collect.collect(tmp_path)
    run_dir = make_run(tmp_path, "0", config())
    (run_dir / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="results.json: not valid JSON"):
        collect.collect(tmp_path)
    (run_dir / "results.json").unlink()
    (run_dir / "metrics.csv").write_text("epoch,val_loss\n0,1.0\n")
    with pytest.raises(ValueError, match="metrics.csv: expected a header with"):
        collect.collect(tmp_path)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
        cwd=ROOT,
    )


def test_cli_writes_markdown_and_csv(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, str(seed), config(seed=seed), {"si_sdr": float(seed)})
    done = cli("experiments/collect.py", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "collected.md").read_text() == done.stdout.removesuffix("\n")
    assert "| vae | default | fsdd | 0, 1 | 0.50 ± 0.71 |" in done.stdout
    assert (tmp_path / "collected.csv").read_text().startswith("model,guide,data,seeds,n_runs,")
    done = cli("experiments/collect.py", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t"))
    assert done.returncode == 1 and "nowhere: no such folder" in done.stderr


def test_results_table_collects_evaluated_runs_in_model_order(tmp_path):
    make_run(tmp_path / "fsdd", "vae", config("vae"), {"si_sdr": 8.0})
    make_run(tmp_path / "fsdd", "dkf", config("dkf"), {"si_sdr": 3.0, "guide": "dks"})
    make_run(tmp_path / "fsdd", "storn", config("vae"))  # trained, not evaluated: left out
    done = cli(
        "experiments/results_table.py",
        "--data",
        "fsdd",
        "--models",
        "vae,storn,dkf",
        "--root",
        str(tmp_path),
        "--collect",
    )
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "fsdd.md").read_text().splitlines()
    assert [line.split(" | ")[:5] for line in lines[2:]] == [
        ["| vae", "default", "fsdd", "0", "8.00"],
        ["| dkf", "dks", "fsdd", "0", "3.00"],
    ]


def test_multirun_over_seeds_collects_into_one_row(data_root, tmp_path):
    """A real (basic launcher) Hydra multirun of two seeds, collected without evaluation."""
    sweep = tmp_path / "sweep"
    done = cli(
        "experiments/run.py",
        "-m",
        "model=vae",
        "seed=0,1",
        "train.epochs=1",
        "data.max_files=12",
        "train.progress=false",
        "threads=1",
        f"hydra.sweep.dir={sweep}",
    )
    assert done.returncode == 0, done.stderr
    rows, messages = collect.collect(sweep)
    assert messages == []
    assert [(r.labels["model"], r.seeds, r.runs) for r in rows] == [
        (
            "vae",
            [0, 1],
            [sweep / f"{i}_vae-fsdd_data.max_files=12,seed={i},train.epochs=1" for i in (0, 1)],
        )
    ]
    assert rows[0].stats["epochs"] == collect.Stat(1.0, 0.0, 2)
    assert rows[0].stats["val_neg_elbo"].std > 0  # two seeds, two different models


def compose_hydra(launcher: str):
    cfg = compose_config([f"hydra/launcher={launcher}"], return_hydra_config=True)
    return cfg.hydra.launcher


def test_local_launcher_config_runs_two_joblib_jobs():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    launcher = compose_hydra("local")
    assert launcher._target_.endswith("JoblibLauncher")
    assert launcher.n_jobs == 2


def test_slurm_launcher_config_is_a_submitit_slurm_config():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    launcher = compose_hydra("slurm")
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.timeout_min) == (1, 1, 720)


def counted(scored: int, items: int = 300) -> dict:
    return {"scored": scored, "items": items}


def test_cells_and_csv_carry_the_counts_and_the_floor(tmp_path):
    """ESTOI over 129 and 131 of 300 utterances in two seeds, PESQ-WB refused everywhere, and
    the floor beside each metric; CSV counts are sums over the runs."""
    for seed, (estoi, scored) in enumerate([(0.25, 129), (0.35, 131)]):
        results = {
            "estoi": estoi,
            "pesq_wb": None,
            "counts": {"estoi": counted(scored), "pesq_wb": counted(0)},
            "floor": {
                "estimate": "mean spectrum",
                "estoi": 0.3,
                "n_utterances": 300,
                "counts": {"estoi": counted(128)},
            },
        }
        make_run(tmp_path, str(seed), config(seed=seed), results)
    rows, _ = collect.collect(tmp_path)
    lines = collect.markdown(rows).splitlines()
    assert lines[0].startswith("| model | guide | data | seeds | PESQ-WB | ESTOI | floor ESTOI |")
    assert lines[2].startswith(
        "| vae | default | fsdd | 0, 1 | – (0/300) | 0.300 ± 0.071 (129–131/300) "
        "| 0.300 ± 0.000 (128/300) |"
    )
    table = list(csv.DictReader(io.StringIO(collect.csv_text(rows))))[0]
    assert (table["estoi_n"], table["estoi_scored"], table["estoi_items"]) == ("2", "260", "600")
    assert (table["floor_estoi_scored"], table["floor_estoi_items"]) == ("256", "600")
    assert (table["pesq_wb_mean"], table["pesq_wb_scored"], table["pesq_wb_items"]) == (
        "",
        "0",
        "600",
    )
    assert table["val_neg_elbo_scored"] == "" and "floor_n_utterances_mean" not in table


def test_a_cell_of_fewer_runs_shows_the_counts_then_the_runs(tmp_path):
    make_run(tmp_path, "0", config(seed=0), {"si_sdr": 2.0, "counts": {"si_sdr": counted(3, 3)}})
    make_run(tmp_path, "1", config(seed=1))  # trained, not evaluated
    lines = collect.markdown(collect.collect(tmp_path)[0]).splitlines()
    assert lines[2].startswith("| vae | default | fsdd | 0, 1 | 2.00 (3/3) (n=1) |")


def test_results_written_before_counts_give_them_from_n_failed(tmp_path):
    results = {"estoi": 0.3, "n_utterances": 300, "n_failed": {"estoi": 171}}
    run_dir = make_run(tmp_path, "0", config(), results)
    assert collect.load_run(run_dir).counts == {"estoi": (129, 300)}
    assert "| 0.300 (129/300) |" in collect.markdown(collect.collect(tmp_path)[0])


@pytest.mark.parametrize("counts", [{"estoi": 129}, {"estoi": {"scored": 129}}, [1, 2]])
def test_malformed_counts_name_the_file(tmp_path, counts):
    make_run(tmp_path, "0", config(), {"estoi": 0.3, "counts": counts})
    with pytest.raises(ValueError, match=r"0/results.json: expected counts as \{metric: "):
        collect.collect(tmp_path)

"""Train and evaluate a list of models on one dataset, then write the results table.

    python experiments/results_table.py --data fsdd --models vae,dkf,storn --epochs 100
    python experiments/results_table.py --data fsdd --collect          # table only

Each model runs in ``<root>/<data>/<model>`` (default root ``outputs/results``), with any
extra Hydra overrides after ``--``; a finished run (with ``results.json``) is not run again.
The markdown table is printed and written to ``<root>/<data>.md``; ``docs/results.md`` is
assembled from these tables.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from hydra import compose, initialize_config_dir

from pyro_dvae import runner

ROOT = Path(__file__).resolve().parents[1]
MODEL_ORDER = ("vae", "dkf", "storn", "vrnn", "srnn", "rvae_causal", "rvae_noncausal", "dsae")
COLUMNS = {  # results.json key -> column title, in order; absent keys are left out
    "si_sdr": "SI-SDR (dB)",
    "pesq_nb": "PESQ-NB",
    "pesq_wb": "PESQ-WB",
    "estoi": "ESTOI",
    "rmse": "RMSE",
    "mpjpe_mm": "MPJPE all joints (mm)",
    "mpjpe_mm_subset": "MPJPE subset (mm)",
    "epochs": "epochs",
    "best_epoch": "best epoch",
    "seconds_per_epoch": "s / epoch",
}


def run_one(model: str, data: str, epochs: int, run_dir: Path, overrides: list[str]) -> dict:
    """Train (resuming a partial run) and evaluate ``model`` on ``data``."""
    if (run_dir / "results.json").is_file():
        return json.loads((run_dir / "results.json").read_text())
    args = [f"model={model}", f"data={data}", f"train.epochs={epochs}", "train.progress=false"]
    if (run_dir / "last.pt").is_file():
        args.append("resume=true")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*args, *overrides])
    runner.train(cfg, run_dir)
    return runner.evaluate(run_dir, runner.resolve_device(cfg.device))


def table(results: dict[str, dict]) -> str:
    """Markdown table, one row per model, the columns that any result has."""
    keys = [k for k in COLUMNS if any(k in r for r in results.values())]
    lines = [
        "| model | " + " | ".join(COLUMNS[k] for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for model, r in results.items():
        cells = [_fmt(r.get(k)) for k in keys]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--models", default=",".join(MODEL_ORDER))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--root", type=Path, default=ROOT / "outputs" / "results")
    parser.add_argument("--collect", action="store_true", help="only tabulate finished runs")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    results = {}
    for model in opts.models.split(","):
        run_dir = opts.root / opts.data / model
        if opts.collect:
            path = run_dir / "results.json"
            if path.is_file():
                results[model] = json.loads(path.read_text())
            continue
        results[model] = run_one(model, opts.data, opts.epochs, run_dir, opts.overrides)
    text = table(results)
    opts.root.mkdir(parents=True, exist_ok=True)
    (opts.root / f"{opts.data}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

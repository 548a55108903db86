"""Train and evaluate a list of models on one dataset, then write the results table.

    python experiments/results_table.py --data fsdd --models vae,dkf,storn --epochs 100
    python experiments/results_table.py --data fsdd --collect          # table only

Each model runs in ``<root>/<data>/<model>`` (default root ``outputs/results``), with any
extra Hydra overrides after ``--``; a finished run (with ``results.json``) is not run again.
The markdown table (:func:`pyro_dvae.collect.markdown` of the evaluated runs, one row per model)
is printed and written to ``<root>/<data>.md``; ``docs/results.md`` is assembled from these
tables. For several seeds per model, sweep with Hydra and use ``experiments/collect.py``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hydra import compose, initialize_config_dir

from pyro_dvae import collect, runner

ROOT = Path(__file__).resolve().parents[1]
MODEL_ORDER = ("vae", "dkf", "storn", "vrnn", "srnn", "rvae_causal", "rvae_noncausal", "dsae")


def run_one(model: str, data: str, epochs: int, run_dir: Path, overrides: list[str]) -> None:
    """Train (resuming a partial run) and evaluate ``model`` on ``data``, unless evaluated."""
    if (run_dir / "results.json").is_file():
        return
    args = [f"model={model}", f"data={data}", f"train.epochs={epochs}", "train.progress=false"]
    if (run_dir / "last.pt").is_file():
        args.append("resume=true")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*args, *overrides])
    runner.train(cfg, run_dir)
    runner.evaluate(run_dir, runner.resolve_device(cfg.device))


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
    run_dirs = {model: opts.root / opts.data / model for model in opts.models.split(",")}
    if not opts.collect:
        for model, run_dir in run_dirs.items():
            run_one(model, opts.data, opts.epochs, run_dir, opts.overrides)
    runs, _ = collect.load_runs(d for d in run_dirs.values() if (d / "results.json").is_file())
    text = collect.markdown(collect.group(runs))
    opts.root.mkdir(parents=True, exist_ok=True)
    (opts.root / f"{opts.data}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

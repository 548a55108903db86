"""Teacher forcing against scheduled sampling, evaluated both ways, plus forecasts (spec §7).

    python experiments/scheduled_sampling.py --data cmu_mocap --models srnn,vrnn,storn \\
        --tf-epochs 20 --ss-epochs 20 --ss-every 2 --warmup-every 2 --forecast threads=1
    python experiments/scheduled_sampling.py --data cmu_mocap --models srnn --collect

Per model, in ``<root>/<data>/`` (default root ``outputs/scheduled_sampling``):

* ``<model>-tf``: trained with teacher forcing (KL warm-up every ``--warmup-every`` epochs),
  evaluated with teacher forcing (row ``MODEL``) and in generation mode (row ``MODEL-TF-GM``);
* ``<model>-ss``, for a model whose decoder reads x_{<t} (its ``feedback`` is set): started from
  ``<model>-tf``'s best weights (``train.init_from``), trained ``--ss-epochs`` more with scheduled
  sampling (p = 0.1, 0.2, ..., 1.0, one step every ``--ss-every`` epochs; KL weight 1, no
  warm-up, as the original), evaluated in generation mode (row ``MODEL-GM``) and with teacher
  forcing (row ``MODEL-SS-TF``);
* with ``--control``, ``<model>-tf+``: the same continuation as ``<model>-ss`` without scheduled
  sampling (rows ``MODEL-TF+``, ``MODEL-TF+-GM``), which tells the schedule's effect from that
  of the extra epochs;
* with ``--forecast``: ``experiments/forecast.py`` on every run (``--context``/``--horizon``
  frames; the prior's mean path and ``--samples`` sampled forecasts).

Extra Hydra overrides (e.g. ``threads=1 data.max_files=60``) apply to every run. A step whose
output exists is not run again (a partial training run is resumed), so the script can be rerun
after an interruption, or with more epochs to extend the runs. The tables are printed and
written to ``<root>/<data>.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from hydra import compose, initialize_config_dir

from pyro_dvae import forecast, runner

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = {  # results.json key -> column title; keys no result has are left out
    "si_sdr": "SI-SDR (dB)",
    "pesq_nb": "PESQ-NB",
    "estoi": "ESTOI",
    "rmse": "RMSE",
    "mpjpe_mm": "MPJPE all joints (mm)",
    "mpjpe_mm_subset": "MPJPE subset (mm)",
}
ROWS = (  # row suffix, run, evaluation mode
    ("", "tf", "teacher_forcing"),
    ("-TF-GM", "tf", "generation"),
    ("-GM", "ss", "generation"),
    ("-SS-TF", "ss", "teacher_forcing"),
    ("-TF+", "tf+", "teacher_forcing"),
    ("-TF+-GM", "tf+", "generation"),
)
TRAINING = {"tf": "TF", "ss": "TF, then SS", "tf+": "TF, then more TF"}


def train(run_dir: Path, overrides: list[str], epochs: int) -> None:
    """Train to ``epochs`` epochs, resuming a partial or shorter run (``done`` holds the epochs
    a finished run reached); a run that trained drops its evaluations and forecasts, now stale."""
    done = run_dir / "done"
    if done.is_file() and int(done.read_text()) >= epochs:
        return
    args = ["train.progress=false", *overrides, f"train.epochs={epochs}"]
    if (run_dir / "last.pt").is_file():  # its initial weights are long loaded (and may have moved)
        args = [a for a in args if not a.startswith("train.init_from=")] + ["resume=true"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=args)
    runner.train(cfg, run_dir, args)
    for stale in run_dir.glob("results*"):
        stale.unlink()
    for stale in run_dir.glob("forecast_k*"):
        shutil.rmtree(stale)
    done.write_text(str(epochs))


def evaluate(run_dir: Path, mode: str, collect: bool) -> dict | None:
    """The run's results in ``mode``: read back if on disk, else evaluated (None if
    ``collect``)."""
    path = run_dir / ("results.json" if mode == "teacher_forcing" else f"results_{mode}.json")
    if path.is_file():
        return json.loads(path.read_text())
    return None if collect else runner.evaluate(run_dir, runner.resolve_device("cpu"), mode=mode)


def forecasts(run_dir: Path, opts: argparse.Namespace) -> dict[str, dict]:
    """Mean-path and sampled forecasts of the run's test set: read back if on disk, else made
    (left out if ``--collect``)."""
    out = {}
    for mode in ("mean", "sample"):
        folder = f"forecast_k{opts.context}_h{opts.horizon}{'_mean' if mode == 'mean' else ''}"
        path = run_dir / folder / "results.json"
        if path.is_file():
            out[mode] = json.loads(path.read_text())
        elif not opts.collect:
            out[mode] = forecast.run(
                run_dir,
                runner.resolve_device("cpu"),
                opts.context,
                opts.horizon,
                mean=mode == "mean",
                samples=opts.samples,
            )
    return out


def autoregressive(run_dir: Path) -> bool:
    """Whether the trained model's decoder reads x_{<t} (scheduled sampling changes it)."""
    return runner.load_run(run_dir, runner.resolve_device("cpu"))[2].feedback is not None


def run_model(model: str, opts: argparse.Namespace) -> tuple[dict, dict]:
    """Both runs of ``model`` with their evaluations (and forecasts); returns the results by
    (run, mode) and the forecasts by run."""
    base = opts.root / opts.data
    tf_dir, ss_dir = base / f"{model}-tf", base / f"{model}-ss"
    common = [f"model={model}", f"data={opts.data}", *opts.overrides]
    if not opts.collect:
        train(tf_dir, [*common, f"train.warmup_every={opts.warmup_every}"], opts.tf_epochs)
    runs = {"tf": tf_dir}
    if (ss_dir / "done").is_file() or (not opts.collect and autoregressive(tf_dir)):
        continued = [*common, "train.warmup_every=0", f"train.init_from={tf_dir}"]
        schedule = ["train.scheduled_sampling=true", f"train.ss_every={opts.ss_every}"]
        runs["ss"] = ss_dir
        if opts.control:
            runs["tf+"] = base / f"{model}-tf+"
        if not opts.collect:
            train(ss_dir, [*continued, *schedule], opts.ss_epochs)
            if opts.control:
                train(runs["tf+"], continued, opts.ss_epochs)
    # for a decoder that does not read x_{<t}, generation mode is teacher forcing
    modes = ("teacher_forcing", "generation") if "ss" in runs else ("teacher_forcing",)
    results, predicted = {}, {}
    for run, run_dir in runs.items():
        for mode in modes:
            result = evaluate(run_dir, mode, opts.collect)
            if result is not None:
                results[run, mode] = result
        if opts.forecast:
            predicted[run] = forecasts(run_dir, opts)
    return results, predicted


def row(name: str, training: str, evaluation: str, result: dict, keys: list[str]) -> str:
    cells = [f"{result[k]:.2f}" if k in result else "–" for k in keys]
    epochs = f"{result['epochs']} ({result['best_epoch']})"
    return f"| {name} | {training} | {evaluation} | " + " | ".join(cells) + f" | {epochs} |"


def results_table(all_results: dict[str, dict]) -> str:
    keys = [k for k in COLUMNS if any(k in r for res in all_results.values() for r in res.values())]
    lines = [
        "| row | training | evaluation | "
        + " | ".join(COLUMNS[k] for k in keys)
        + " | epochs (best) |",
        "|---|---|---|" + "---|" * (len(keys) + 1),
    ]
    for model, results in all_results.items():
        for suffix, run, mode in ROWS:
            if (run, mode) in results:
                evaluation = "generation mode" if mode == "generation" else "teacher forcing"
                name = f"{model.upper()}{suffix}"
                lines.append(row(name, TRAINING[run], evaluation, results[run, mode], keys))
    return "\n".join(lines) + "\n"


def forecast_table(all_forecasts: dict[str, dict], metric: str) -> str:
    """One row per run and forecast mode, the metric at every standard horizon reached."""
    first = next(iter(next(iter(all_forecasts.values())).values()))["mean"]
    horizons = list(first["forecast"][metric]["at_ms"]) or ["mean"]
    lines = [
        "| run | forecast | "
        + " | ".join(f"{h} ms" if h != "mean" else "mean" for h in horizons)
        + " |",
        "|---|---|" + "---|" * len(horizons),
    ]

    def cells(summary: dict) -> str:
        values = summary["at_ms"] if horizons != ["mean"] else {"mean": summary["mean"]}
        return " | ".join(f"{values[h]:.1f}" if h in values else "–" for h in horizons)

    baseline = cells(first["zero_velocity"][metric])
    lines.append(f"| zero velocity | last context frame held | {baseline} |")
    for model, runs in all_forecasts.items():
        for run, by_mode in runs.items():
            for mode, res in by_mode.items():
                label = (
                    "prior mean path"
                    if mode == "mean"
                    else f"sampled (error averaged over {res['samples']} draws)"
                )
                lines.append(
                    f"| {model.upper()} ({TRAINING[run]}) | {label} | "
                    f"{cells(res['forecast'][metric])} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--models", default="srnn,vrnn,storn")
    parser.add_argument("--tf-epochs", type=int, default=20)
    parser.add_argument("--ss-epochs", type=int, default=20)
    parser.add_argument("--ss-every", type=int, default=2)
    parser.add_argument("--warmup-every", type=int, default=2)
    parser.add_argument("--control", action="store_true", help="also continue with TF only")
    parser.add_argument("--forecast", action="store_true")
    parser.add_argument("--context", type=int, default=25)
    parser.add_argument("--horizon", type=int, default=25)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--root", type=Path, default=ROOT / "outputs" / "scheduled_sampling")
    parser.add_argument("--collect", action="store_true", help="only tabulate finished runs")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    all_results, all_forecasts = {}, {}
    for model in opts.models.split(","):
        all_results[model], predicted = run_model(model, opts)
        if predicted:
            all_forecasts[model] = predicted
    text = results_table(all_results)
    if all_forecasts:
        metric = next(iter(next(iter(all_forecasts.values()))["tf"]["mean"]["forecast"]))
        text += "\n" + forecast_table(all_forecasts, metric)
    opts.root.mkdir(parents=True, exist_ok=True)
    (opts.root / f"{opts.data}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

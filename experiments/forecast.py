"""Forecast a run's test set: ``python experiments/forecast.py run_dir=RUN context=K horizon=H``.

Conditions on the first K frames of every test sequence and samples the next H (see
:mod:`pyro_dvae.forecast`); writes ``RUN/forecast_kK_hH/results.json`` and ``forecast.png``.
"""

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pyro_dvae import cli, forecast, runner

MODES = ("sample", "mean")


@hydra.main(config_path="../configs", config_name="forecast", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with cli.user_errors(Path(cfg.run_dir)):
        if cfg.mode not in MODES:
            raise ValueError(f"mode={cfg.mode!r}: expected one of {list(MODES)}")
        results = forecast.run(
            cfg.run_dir,
            runner.resolve_device(cfg.device),
            cfg.context,
            cfg.horizon,
            mean=cfg.mode == "mean",
            samples=cfg.samples,
            checkpoint=cfg.checkpoint,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            max_sequences=cfg.max_sequences,
            horizons_ms=list(cfg.horizons_ms),
        )
    summary = {
        k: {m: v["at_ms"] or v["mean"] for m, v in results[k].items()}
        for k in ("forecast", "zero_velocity")
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    cli.check_command_line("forecast")
    main()

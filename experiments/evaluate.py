"""Evaluate a run on its test set: ``python experiments/evaluate.py run_dir=RUN``.

Writes ``RUN/results.json``, ``RUN/results.md`` and figures / reconstructions in ``RUN/eval``,
and prints the table of ``results.md``: every metric with the number of test items its mean
covers, e.g. ``0.300 (129/300)``, and for speech a second row with the trivial reconstruction's
metrics (the floor).
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from pyro_dvae import cli, runner


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with cli.user_errors(Path(cfg.run_dir)):
        results = runner.evaluate(
            cfg.run_dir,
            runner.resolve_device(cfg.device),
            cfg.sample,
            cfg.n_examples,
            cfg.checkpoint,
            cfg.mode,
            cfg.iwae_samples,
        )
    print(runner.markdown_row(results), end="")


if __name__ == "__main__":
    cli.check_command_line("evaluate")
    main()

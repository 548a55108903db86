"""Evaluate a run on its test set: ``python experiments/evaluate.py run_dir=RUN``.

Writes ``RUN/results.json``, ``RUN/results.md`` and figures / reconstructions in ``RUN/eval``.
"""

import json

import hydra
from omegaconf import DictConfig

from pyro_dvae import runner


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    results = runner.evaluate(
        cfg.run_dir, runner.resolve_device(cfg.device), cfg.sample, cfg.n_examples, cfg.checkpoint,
        cfg.mode, cfg.iwae_samples,
    )
    print(
        json.dumps({k: v for k, v in results.items() if not isinstance(v, (dict, list))}, indent=2)
    )


if __name__ == "__main__":
    main()

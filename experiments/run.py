"""Train a DVAE: ``python experiments/run.py model=dkf data=fsdd [key=value ...]``."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pyro_dvae import runner


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    try:
        runner.train(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))
    except KeyboardInterrupt:  # the trainer has logged its one-line message; no traceback
        sys.exit(130)


if __name__ == "__main__":
    main()

"""Train a DVAE: ``python experiments/run.py model=dkf data=fsdd [key=value ...]``.

Several processes: ``torchrun --nproc_per_node=N experiments/run.py ... train.distributed=true``
(docs/distributed.md). Only rank 0 writes: the other ranks keep Hydra from saving
its config and logs, and log warnings and errors only.
"""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pyro_dvae import cli, runner

QUIET_RANK = ("hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none")
"""Overrides for the processes of rank > 0."""


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        with cli.user_errors(run_dir):
            runner.train(cfg, run_dir, list(hydra_cfg.overrides.task))
    except KeyboardInterrupt:  # the trainer has logged its one-line message; no traceback
        sys.exit(130)


if __name__ == "__main__":
    if os.environ.get("RANK", "0") != "0":
        sys.argv.extend(QUIET_RANK)
    cli.check_command_line("config")
    main()

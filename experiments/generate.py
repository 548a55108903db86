"""Sample from a trained model: ``python experiments/generate.py run_dir=RUN n=8 T=100``.

Speech is written as audio (Griffin-Lim phase) with a spectrogram figure, motion as an
animation, under ``RUN/generated``. The run's plugins (``plugins`` in its config.yaml) are
imported first; a user error (a missing run, a plugin not found) is one line, exit status 2.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from pyro_dvae import cli, runner


@hydra.main(config_path="../configs", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with cli.user_errors(Path(cfg.run_dir)):
        device = runner.resolve_device(cfg.device)
        for path in runner.generate(cfg.run_dir, device, cfg.n, cfg.T, cfg.seed):
            print(path)


if __name__ == "__main__":
    cli.check_command_line("generate")
    main()

"""Sample from a trained model: ``python experiments/generate.py run_dir=RUN n=8 T=100``.

Speech is written as audio (Griffin-Lim phase) with a spectrogram figure, motion as an
animation, under ``RUN/generated``.
"""

import hydra
from omegaconf import DictConfig

from pyro_dvae import runner


@hydra.main(config_path="../configs", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    for path in runner.generate(
        cfg.run_dir, runner.resolve_device(cfg.device), cfg.n, cfg.T, cfg.seed
    ):
        print(path)


if __name__ == "__main__":
    main()

"""Evaluate a run on its test set: ``python experiments/evaluate.py run_dir=RUN``.

Writes ``RUN/results.json``, ``RUN/results.md`` and figures / reconstructions in ``RUN/eval``,
and prints the table of ``results.md``: every metric with the number of test items its mean
covers, e.g. ``0.300 (129/300)``, and for speech a second row with the trivial reconstruction's
metrics (the floor).

``python experiments/evaluate.py pretrained=NAME`` evaluates a model of the pretrained zoo
(:mod:`pyro_dvae.pretrained`) instead, into ``outputs/pretrained/NAME`` (or ``hydra.run.dir``),
and says whether it reproduces the model's recorded row.
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pyro_dvae import cli, pretrained, runner


def evaluation_dir(run_dir: str | None, name: str | None) -> str:
    """Hydra's output folder: the run directory, else ``outputs/pretrained/NAME`` (``.`` when
    neither is given: :func:`main` then stops with an error)."""
    if run_dir is not None:
        return run_dir
    return f"outputs/pretrained/{name}" if name is not None else "."


OmegaConf.register_new_resolver("evaluation_dir", evaluation_dir, replace=True)


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out_dir = Path(cfg.run_dir or HydraConfig.get().runtime.output_dir)  # a sweep's job folder too
    with cli.user_errors(out_dir if cfg.run_dir or cfg.pretrained else None):
        if (cfg.run_dir is None) == (cfg.pretrained is None):
            raise ValueError(
                "expected either run_dir=RUN (a run directory) or pretrained=NAME (one of "
                f"{pretrained.names()}), not {'both' if cfg.run_dir else 'neither'}"
            )
        if cfg.pretrained is None:
            results = evaluate_run(cfg)
        else:
            results = evaluate_pretrained(cfg, out_dir)
    print(runner.markdown_row(results), end="")
    if cfg.pretrained is not None:
        print(pretrained.report(cfg.pretrained, results))


def evaluate_run(cfg: DictConfig) -> dict:
    """``run_dir=RUN``: :func:`runner.evaluate`."""
    return runner.evaluate(
        cfg.run_dir,
        runner.resolve_device(cfg.device),
        cfg.sample,
        cfg.n_examples,
        cfg.checkpoint,
        cfg.mode,
        cfg.iwae_samples,
    )


def evaluate_pretrained(cfg: DictConfig, out_dir: Path) -> dict:
    """``pretrained=NAME``: :func:`pretrained.evaluate` into ``out_dir``."""
    if cfg.checkpoint != "best":
        raise ValueError(
            f"checkpoint={cfg.checkpoint}: a pretrained model has only its best weights"
        )
    return pretrained.evaluate(
        cfg.pretrained,
        out_dir,
        runner.resolve_device(cfg.device),
        cfg.sample,
        cfg.n_examples,
        cfg.mode,
        cfg.iwae_samples,
    )


if __name__ == "__main__":
    cli.check_command_line("evaluate")
    main()

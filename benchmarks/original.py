"""The original implementation's own training step, run from a checkout of it (issue 20 §2).

Issue 20's CPU target is the Pyro step at or below 0.8× the original's. The original code (the
DVAE review's, https://github.com/XiaoyuBIE1994/DVAE, GPL) is not part of this repository and
nothing of it is copied here: ``train_step.py --original DIR`` imports its models and loss
functions from the user's own checkout DIR and times its step as its trainer
(``dvae/learning_algo.py``) runs it:

* the batch as its loader yields it, made (T, B, D) as the trainer does: a speech batch
  (B, D, T) of power spectra, permuted; a motion batch (B, T, D) in millimetres, permuted and
  divided by 1000; either way a view whose rows are not contiguous;
* the reconstruction term: ``loss_ISD(x, exp(output))`` for speech (the output is the
  log-variance), ``loss_MPJPE(1000 x, 1000 output)`` for motion; and ``loss_KLD`` (of z, and of v
  for DSAE); each divided by T·B;
* ``zero_grad``, ``backward``, one step of its Adam (the learning rate of its config), and the
  three ``.item()`` of the losses it logs;
* with anomaly detection off (its trainer switched it on; the original-style step of
  ``train_step.py`` stands in for that).

``original_contiguous`` is the same step given a contiguous (T, B, D) batch, so that the share
of any gain that comes from the loader's layout alone can be seen.

    git clone https://github.com/XiaoyuBIE1994/DVAE /tmp/dvae-original   # commit d94d213
    python benchmarks/train_step.py --models all --original /tmp/dvae-original --json out.json
"""

from __future__ import annotations

import configparser
import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

SOURCE = "https://github.com/XiaoyuBIE1994/DVAE"
BUILDERS = {
    "vae": "build_VAE",
    "dkf": "build_DKF",
    "storn": "build_STORN",
    "vrnn": "build_VRNN",
    "srnn": "build_SRNN",
    "rvae_causal": "build_RVAE",
    "rvae_noncausal": "build_RVAE",
    "dsae": "build_DSAE",
}
"""``{our model name: the original's build function}``."""
CONFIGS = {
    shape: {name: f"cfg_{name}" for name in ("vae", "dkf", "storn", "vrnn", "srnn", "dsae")}
    | {"rvae_causal": causal, "rvae_noncausal": "cfg_rvae_NonCausal"}
    for shape, causal in [("speech", "cfg_rvae_Causal"), ("motion", "cfg_rvae-Causal")]
}
"""``{shape: {our model name: the stem of the original's config/<shape>/*.ini}}``."""


def problem(root: Path, shape: str, names: list[str]) -> str | None:
    """Why ``root`` is not a checkout of the original that can time ``names`` at ``shape``;
    None if it is."""
    expected = f"a checkout of {SOURCE}"
    if not (root / "dvae" / "model" / "__init__.py").is_file():
        return f"--original {root}: no dvae/model/__init__.py there; expected {expected}"
    if not (root / "dvae" / "utils" / "loss.py").is_file():
        return f"--original {root}: no dvae/utils/loss.py there; expected {expected}"
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        return f"--original: the original has no model for {unknown}"
    missing = [p for p in (config_path(root, shape, n) for n in names) if not p.is_file()]
    if missing:
        return f"--original {root}: missing {', '.join(map(str, missing))}; expected {expected}"
    return None


def config_path(root: Path, shape: str, name: str) -> Path:
    """The original's config of our model ``name`` for ``shape`` in the checkout ``root``."""
    return root / "config" / shape / f"{CONFIGS[shape][name]}.ini"


@functools.cache
def modules(root: Path) -> tuple[ModuleType, ModuleType]:
    """The checkout's ``dvae.model`` package and its ``dvae/utils/loss.py``, the latter loaded
    alone (``dvae.utils`` imports its evaluation packages, which training does not need)."""
    sys.path.insert(0, str(root))
    models = importlib.import_module("dvae.model")
    if Path(models.__file__).resolve().parents[2] != root.resolve():
        raise ImportError(f"dvae.model came from {models.__file__}, not from {root}")
    spec = importlib.util.spec_from_file_location("original_loss", root / "dvae/utils/loss.py")
    loss = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loss)
    return models, loss


def build(root: Path, shape: str, name: str, x_dim: int, device: torch.device):
    """``(model, optimizer)``: the original's model ``name`` for ``shape`` (seed 0) with
    D = ``x_dim``, and the Adam of its trainer."""
    models, _ = modules(root)
    cfg = configparser.ConfigParser()
    cfg.read(config_path(root, shape, name))
    cfg["Network"]["x_dim"] = str(x_dim)
    torch.manual_seed(0)
    model = getattr(models, BUILDERS[name])(cfg=cfg, device=str(device))
    return model, torch.optim.Adam(model.parameters(), lr=cfg.getfloat("Training", "lr"))


def batches(x: torch.Tensor, shape: str) -> tuple[Callable[[], torch.Tensor], ...]:
    """``(as loaded, contiguous)``: functions that return the (T, B, D) batch of ``x (B, T, D)``
    as the trainer makes it from its loader's batch, and the same values contiguous."""
    if shape == "speech":
        loaded = x.permute(0, 2, 1).contiguous()  # (B, D, T): one STFT per item
        contiguous = x.transpose(0, 1).contiguous()
        return (lambda: loaded.permute(2, 0, 1)), (lambda: contiguous)
    loaded = 1000 * x  # (B, T, D), millimetres
    contiguous_mm = loaded.transpose(0, 1).contiguous()
    return (lambda: loaded.permute(1, 0, 2) / 1000), (lambda: contiguous_mm / 1000)


def original_steps(
    root: Path, shape: str, name: str, x: torch.Tensor
) -> dict[str, Callable[[], None]]:
    """``{"original": step, "original_contiguous": step}``: the original's training step of
    ``name`` on ``x (B, T, D)`` at ``shape``, as its trainer runs it, with the batch as its
    loader lays it out or contiguous (see the module docstring); each builds its own model and
    Adam."""
    _, loss = modules(root)

    def reconstruction(x_t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        if shape == "speech":
            return loss.loss_ISD(x_t, torch.exp(output))
        return loss.loss_MPJPE(1000 * x_t, 1000 * output)

    def step_on(batch: Callable[[], torch.Tensor]) -> Callable[[], None]:
        model, optimizer = build(root, shape, name, x.shape[-1], x.device)

        def kl() -> torch.Tensor:
            m = model
            value = loss.loss_KLD(m.z_mean, m.z_logvar, m.z_mean_p, m.z_logvar_p)
            if name == "dsae":
                value = value + loss.loss_KLD(m.v_mean, m.v_logvar, m.v_mean_p, m.v_logvar_p)
            return value

        def step() -> None:
            x_t = batch()
            recon = reconstruction(x_t, model(x_t))
            T, B, _ = model.z_mean.shape
            recon = recon / (T * B)
            divergence = kl() / (T * B)  # KL warm-up weight and beta 1
            total = recon + divergence
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            for logged in (total, recon, divergence):
                logged.item()

        return step

    loaded, contiguous = batches(x, shape)
    return {"original": step_on(loaded), "original_contiguous": step_on(contiguous)}

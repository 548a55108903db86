"""``benchmarks/original.py``: the original implementation's step, timed from a checkout of it.

The original code is not here (GPL, never copied), so these tests write a stand-in checkout of
their own with its layout and interface: ``dvae/model`` with ``build_VAE``/``build_DSAE``, whose
models keep ``z_mean``, ``z_logvar``, their prior's ``*_p`` (and DSAE's ``v_*``) as attributes,
``dvae/utils/loss.py`` with ``loss_ISD``, ``loss_MPJPE`` and ``loss_KLD``, and
``config/{speech,motion}/cfg_*.ini``.
"""

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.original import modules, original_steps, problem
from tests.benchmarks.test_train_step import TINY, benchmark

MODEL = """
import torch
from torch import nn

SEEN = []  # (shape, contiguous, values) of every batch a model was given
BUILT = []


class Tiny(nn.Module):
    def __init__(self, x_dim, with_v):
        super().__init__()
        self.encoder = nn.Linear(x_dim, 4)
        self.decoder = nn.Linear(2, x_dim)
        self.with_v = with_v

    def forward(self, x):
        SEEN.append((tuple(x.shape), x.is_contiguous(), x.clone()))
        h = self.encoder(x)
        self.z_mean, self.z_logvar = h[..., :2], h[..., 2:]
        self.z_mean_p, self.z_logvar_p = 0.5 * self.z_mean.detach(), torch.zeros_like(h[..., 2:])
        if self.with_v:
            self.v_mean, self.v_logvar = h[0, :, :2], h[0, :, 2:]
            self.v_mean_p = torch.zeros_like(self.v_mean)
            self.v_logvar_p = torch.ones_like(self.v_logvar)
        return self.decoder(self.z_mean)


def build(cfg, device, with_v):
    BUILT.append(Tiny(cfg.getint("Network", "x_dim"), with_v).to(device))
    return BUILT[-1]


def build_VAE(cfg, device="cpu"):
    return build(cfg, device, False)


def build_DSAE(cfg, device="cpu"):
    return build(cfg, device, True)
"""

LOSS = """
import torch


def loss_ISD(x, y):
    return torch.sum(x / y - torch.log(x / y) - 1)


def loss_MPJPE(x, y):
    T, B, _ = x.shape
    return (x - y).reshape(T, B, -1, 3).norm(dim=-1).mean(dim=-1).sum()


def loss_KLD(z_mean, z_logvar, z_mean_p=0, z_logvar_p=0):
    return -0.5 * torch.sum(
        z_logvar - z_logvar_p - (z_logvar.exp() + (z_mean - z_mean_p) ** 2) / z_logvar_p.exp()
    )
"""

LR = 0.01


def write_checkout(root: Path) -> Path:
    """A stand-in checkout at ``root`` (see the module docstring)."""
    files = {
        "dvae/__init__.py": "",
        "dvae/model/__init__.py": MODEL,
        "dvae/utils/__init__.py": "raise ImportError('the evaluation packages are absent')\n",
        "dvae/utils/loss.py": LOSS,
    }
    for shape in ("speech", "motion"):
        for stem in ("cfg_vae", "cfg_dsae"):
            config = f"[Network]\nx_dim = 513\n[Training]\nlr = {LR}\n"
            files[f"config/{shape}/{stem}.ini"] = config
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """The stand-in, imported in this process; its modules are forgotten afterwards."""
    root = write_checkout(tmp_path_factory.mktemp("original"))
    yield root
    modules.cache_clear()
    sys.path.remove(str(root))
    for name in [n for n in sys.modules if n == "dvae" or n.startswith("dvae.")]:
        del sys.modules[name]


def trainers_loss(model, x_t: torch.Tensor, shape: str, with_v: bool) -> torch.Tensor:
    """The original trainer's loss, written out here: the Itakura-Saito divergence of x from
    exp(log-variance) up to a constant (speech) or the mean joint distance in millimetres
    (motion), and the Gaussian KLs up to constants, each over T·B."""
    y = model(x_t)
    T, B, _ = x_t.shape
    if shape == "speech":
        recon = (x_t * torch.exp(-y) + y).sum()
    else:
        recon = (
            1000 * torch.linalg.vector_norm((x_t - y).reshape(T, B, -1, 3), dim=-1).mean(-1).sum()
        )

    def kl(m, lv, m_p, lv_p):
        return 0.5 * ((lv.exp() + (m - m_p) ** 2) / lv_p.exp() + lv_p - lv).sum()

    divergence = kl(model.z_mean, model.z_logvar, model.z_mean_p, model.z_logvar_p)
    if with_v:
        divergence = divergence + kl(model.v_mean, model.v_logvar, model.v_mean_p, model.v_logvar_p)
    return (recon + divergence) / (T * B)


@pytest.mark.parametrize("shape", ["speech", "motion"])
@pytest.mark.parametrize("name", ["vae", "dsae"])
def test_the_original_step_is_its_trainers_step(checkout, name, shape):
    """Each step gives its model the batch as its trainer does ((T, B, D): a view of the
    loader's (B, D, T) speech or (B, T, D) motion batch, or contiguous), back-propagates the
    trainer's loss (its KL of v too for DSAE: the gradients equal those of the loss written out
    here, in float64) and takes one step of an Adam with its config's learning rate (a first
    Adam step moves each weight by lr·g/(|g| + 1e-8))."""
    torch.manual_seed(1)
    x = torch.rand(3, 4, 6, dtype=torch.float64) + 0.1  # (B, T, D), D = 2 joints × 3
    torch.set_default_dtype(torch.float64)  # the stand-in's layers
    try:
        steps = original_steps(checkout, shape, name, x)
    finally:
        torch.set_default_dtype(torch.float32)
    seen, built = sys.modules["dvae.model"].SEEN, sys.modules["dvae.model"].BUILT
    for kind, contiguous in [("original", False), ("original_contiguous", True)]:
        model = built[-2 if kind == "original" else -1]
        before = copy.deepcopy(model)
        steps[kind]()
        seen_shape, is_contiguous, values = seen[-1]
        assert (seen_shape, is_contiguous) == ((4, 3, 6), contiguous)
        # motion: (1000 x) / 1000, two roundings of at most 2^-53 each
        torch.testing.assert_close(values, x.transpose(0, 1), rtol=2**-51, atol=0)
        trainers_loss(before, values, shape, name == "dsae").backward()
        # float64: the two losses' gradients differ by a few units of 2^-52 (the same sums in
        # another order); an Adam step of size lr = 0.01 is exact to ~1e-17, and a weight of
        # size < 1 is rounded to 2^-53: 1e-12 and 1e-15 leave orders of magnitude to spare
        for p0, p in zip(before.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(p.grad, p0.grad, rtol=1e-12, atol=1e-12)
            step = LR * p.grad / (p.grad.abs() + 1e-8)
            torch.testing.assert_close(p, p0 - step, rtol=0, atol=1e-15)


def test_a_checkout_that_is_not_one_is_named_with_what_was_expected(tmp_path):
    expected = "expected a checkout of https://github.com/XiaoyuBIE1994/DVAE"
    assert problem(tmp_path, "speech", ["vae"]) == (
        f"--original {tmp_path}: no dvae/model/__init__.py there; {expected}"
    )
    root = write_checkout(tmp_path / "copy")
    assert problem(root, "speech", ["vae", "dsae"]) is None
    assert problem(root, "motion", ["vae", "dsae"]) is None
    unknown = "--original: the original has no model for ['kvae']"
    assert problem(root, "speech", ["vae", "kvae"]) == unknown
    config = root / "config" / "motion" / "cfg_rvae-Causal.ini"
    missing = f"--original {root}: missing {config}; {expected}"
    assert problem(root, "motion", ["rvae_causal"]) == missing


def test_train_step_times_the_original_beside_the_others(tmp_path):
    """``train_step.py --original``: the original's keys in every row, their ratios those of
    the times (to the rounding of the JSON's values), one per round; a one-line error for a
    folder that is not a checkout."""
    root = write_checkout(tmp_path / "original")
    out = tmp_path / "bench.json"
    done = benchmark(
        "--models", "vae", *TINY, "--rounds", "2", "--no-memory", "--original", str(root),
        "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.read_text())
    ms, original = row["ms_per_step"], row["ms_per_step_original"]
    assert original > 0 and row["ms_per_step_original_contiguous"] > 0
    rel = 2e-3 + 0.01 / min(ms, original)  # 3-decimal ratios of 2-decimal times
    assert abs(row["ratio_pyro_to_original"] - ms / original) <= rel * ms / original
    reference = row["ms_per_step_reference"] / original
    assert abs(row["ratio_reference_to_original"] - reference) <= rel * reference
    contiguous = ms / row["ms_per_step_original_contiguous"]
    assert abs(row["ratio_pyro_to_original_contiguous"] - contiguous) <= rel * contiguous
    assert len(row["ratio_pyro_to_original_by_round"]) == 2
    bad = benchmark("--models", "vae", *TINY, "--original", str(tmp_path / "none"))
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        f"error: --original {tmp_path / 'none'}: no dvae/model/__init__.py there; expected a "
        "checkout of https://github.com/XiaoyuBIE1994/DVAE"
    ]

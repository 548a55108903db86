"""Hand-written torch losses for VAE and DKF: the baseline of ``train_step.py``.

Each function computes the same per-frame loss as the Pyro model/guide pair under
``TraceMeanField_ELBO`` (the likelihood's NLL, :func:`reconstruction_nll`, + analytic KL given
the sampled past, / (B·T)),
with the model's own networks and no Pyro, as a hand-written implementation would: RNNs are
``nn.LSTM``/``nn.RNN`` calls, and the step runs under :func:`original_layers`, so output
layers are ``nn.Linear`` as in the original, not the models' CPU form
(:class:`~pyro_dvae.nn.OutputLinear`).
"""

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from pyro_dvae.data.skeleton import mpjpe_mm
from pyro_dvae.likelihoods import MPJPE
from pyro_dvae.models.dkf import DKF
from pyro_dvae.models.vae import VAE
from pyro_dvae.nn import LOGVAR_BOUND, OutputLinear, run_rnn, shift

_FORMULAS = {"original": False}


@contextlib.contextmanager
def original_formulas() -> Iterator[None]:
    """Inside this block the two losses below use the original's formulas (spec §4.1–4.2):
    the Itakura–Saito divergence through ``x / ŷ`` and ``log(x / ŷ)``, and the KL from
    variances with ε = 1e-10 and without its −1. Values shift by constants, gradients do not."""
    _FORMULAS["original"] = True
    try:
        yield
    finally:
        _FORMULAS["original"] = False


@contextlib.contextmanager
def original_layers(model: nn.Module) -> Iterator[None]:
    """Inside this block ``model`` runs its output layers as the original implementation does:
    every :class:`~pyro_dvae.nn.OutputLinear` is a plain ``nn.Linear`` with the same
    parameters; restored afterwards."""
    swapped = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, OutputLinear)
    ]
    for parent, name, child in swapped:
        setattr(parent, name, _plain(child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _plain(layer: OutputLinear) -> nn.Linear:
    """An ``nn.Linear`` holding an OutputLinear's own parameters."""
    plain = nn.Linear(layer.in_features, layer.out_features, bias=False, device="meta")
    plain.weight, plain.bias = layer.weight, layer.bias
    return plain


def exponential_nll(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ y + x e^{−y} with the log-variance y guarded against overflow, as in the likelihood."""
    if _FORMULAS["original"]:
        ratio = x / (torch.exp(y) + 1e-10)
        return (ratio - torch.log(ratio) - 1).sum()
    y = y.clamp(-LOGVAR_BOUND, LOGVAR_BOUND)
    return (y + x * torch.exp(-y)).sum()


def reconstruction_nll(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """−log p(x | y) summed over the batch, for the model's likelihood: Σ_t MPJPE_t in mm
    (motion; (B, T, 3J) positions in metres) or the Exponential of the speech models."""
    if isinstance(model.likelihood, MPJPE):
        return mpjpe_mm(x, y, x.shape[-1] // 3).sum()
    return exponential_nll(x, y)


def gaussian_kl(mq, sq, mp, sp) -> torch.Tensor:
    """Σ KL(N(mq, sq²) ‖ N(mp, sp²))."""
    if _FORMULAS["original"]:
        var_q, var_p = sq**2, sp**2
        terms = torch.log(var_q) - torch.log(var_p) - (var_q + (mq - mp) ** 2) / (var_p + 1e-10)
        return -0.5 * terms.sum()
    return (torch.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5).sum()


def noise(x: torch.Tensor, *shape: int) -> torch.Tensor:
    """Standard-normal noise of ``shape`` on x's device, drawn as the Pyro guides draw it: one
    (B, L) tensor per step where a guide samples step by step, one (B, T, L) tensor where it
    samples every step at once."""
    return x.new_empty(shape).normal_()


def reference_loss_vae(model: VAE, x: torch.Tensor) -> torch.Tensor:
    B, T, _ = x.shape
    mq, sq = model.encoder(x)
    z = mq + sq * torch.randn_like(mq)
    y = model.decoder(z)
    kl = gaussian_kl(mq, sq, torch.zeros_like(mq), torch.ones_like(sq))
    return (reconstruction_nll(model, x, y) + kl) / (B * T)


def reference_loss_dkf(model: DKF, x: torch.Tensor) -> torch.Tensor:
    B, T, _ = x.shape
    inference = model.inference
    u = inference.mlp_x_gx(x)
    if inference.bidirectional:
        gx = run_rnn(inference.rnn_gx, u).unflatten(-1, (2, -1)).sum(-2)
    else:
        gx = run_rnn(inference.rnn_gx, u, backward=True)
    n_terms = 3 if inference.bidirectional else 2
    z_prev = x.new_zeros(B, model.z_dim)
    zs, locs, scales = [], [], []
    for t in range(T):
        g = (inference.mlp_ztm1_g(z_prev) + gx[:, t]) / n_terms
        loc, scale = inference.head(inference.mlp_g_z(g))
        z_prev = loc + scale * noise(x, B, model.z_dim)
        zs.append(z_prev)
        locs.append(loc)
        scales.append(scale)
    z, mq, sq = torch.stack(zs, 1), torch.stack(locs, 1), torch.stack(scales, 1)
    mp, sp = model.prior.loc_scale(shift(z))
    y = model.decoder(z)
    return (reconstruction_nll(model, x, y) + gaussian_kl(mq, sq, mp, sp)) / (B * T)

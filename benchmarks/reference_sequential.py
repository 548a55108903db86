"""Hand-written PyTorch training losses of STORN, VRNN and SRNN: the baselines of the benchmark.

Each ``reference_loss_<name>(model, x)`` computes, with the model's own networks and without
Pyro, the same per-frame loss as the Pyro ELBO at KL weight 1:

    (Σ Exponential NLL(x | y) + Σ_t KL(q(z_t | ·) ‖ p(z_t | ·))) / (B·T)

with one reparameterised sample z and the analytic per-step KL given the sampled past. The
noise is drawn as the Pyro guide draws it (:func:`~benchmarks.reference_basic.noise`), so both
give the same number for the same seed. Loops follow the original implementation (spec §1, §2):
STORN is vectorised, VRNN loops over the whole model, SRNN loops over its inference combiner.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.reference_basic import gaussian_kl, noise, reconstruction_nll
from pyro_dvae.models.srnn import SRNN
from pyro_dvae.models.storn import STORN
from pyro_dvae.models.vrnn import VRNN
from pyro_dvae.nn import run_rnn, shift, torch_lstm_step


def _per_frame(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, kl: torch.Tensor
) -> torch.Tensor:
    return (reconstruction_nll(model, x, y) + kl) / (x.shape[0] * x.shape[1])


def reference_loss_storn(model: STORN, x: torch.Tensor) -> torch.Tensor:
    """STORN, vectorised: q(z_t | x_{1:t}), p(z_t) = N(0, I), LSTM decoder on [z_t, x_{t−1}]."""
    eps = noise(x, *x.shape[:2], model.z_dim)
    mq, sq = model.encoder(run_rnn(model.rnn_g, model.mlp_x_g(x)))
    z = mq + sq * eps
    h = run_rnn(model.rnn_h, torch.cat([model.mlp_z_h(z), model.mlp_xtm1_h(shift(x))], dim=-1))
    y = model.decoder(h)
    return _per_frame(model, x, y, gaussian_kl(mq, sq, torch.zeros_like(mq), torch.ones_like(sq)))


def reference_loss_vrnn(model: VRNN, x: torch.Tensor) -> torch.Tensor:
    """VRNN, one loop over t for the encoder, decoder and recurrence; the prior on all h_t."""
    B, T, _ = x.shape
    fx = model.phi_x(x)
    h = c = x.new_zeros(B, model.rnn.hidden_size)
    hs, mqs, sqs, ys = [], [], [], []
    for t in range(T):
        mq, sq = model.encoder(torch.cat([fx[:, t], h], dim=-1))
        fz = model.phi_z(mq + sq * noise(x, B, model.z_dim))
        ys.append(model.decoder(torch.cat([fz, h], dim=-1)))
        hs.append(h)
        mqs.append(mq)
        sqs.append(sq)
        if t < T - 1:
            h, c = torch_lstm_step(model.rnn, torch.cat([fx[:, t], fz], dim=-1), (h, c))
    mp, sp = model.prior_net(torch.stack(hs, dim=1))
    kl = gaussian_kl(torch.stack(mqs, dim=1), torch.stack(sqs, dim=1), mp, sp)
    return _per_frame(model, x, torch.stack(ys, dim=1), kl)


def reference_loss_srnn(model: SRNN, x: torch.Tensor) -> torch.Tensor:
    """SRNN: h and g vectorised, a loop over t for q(z_t | z_{t−1}, g_t), prior and decoder
    vectorised. Works with either guide (the direction of LSTM_g)."""
    B, T, _ = x.shape
    h = run_rnn(model.rnn_h, model.mlp_x_h(shift(x)))
    inf = model.inference
    g = run_rnn(inf.rnn_g, inf.mlp_hx_g(torch.cat([h, x], dim=-1)), backward=inf.backward)
    z_prev = x.new_zeros(B, model.z_dim)
    zs, mqs, sqs = [], [], []
    for t in range(T):
        mq, sq = inf.combiner.head(inf.combiner.mlp(torch.cat([g[:, t], z_prev], dim=-1)))
        z_prev = mq + sq * noise(x, B, model.z_dim)
        zs.append(z_prev)
        mqs.append(mq)
        sqs.append(sq)
    z = torch.stack(zs, dim=1)
    mp, sp = model.prior.head(model.prior.mlp(torch.cat([h, shift(z)], dim=-1)))
    y = model.decoder(torch.cat([h, z], dim=-1))
    kl = gaussian_kl(torch.stack(mqs, dim=1), torch.stack(sqs, dim=1), mp, sp)
    return _per_frame(model, x, y, kl)

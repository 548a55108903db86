"""Hand-written torch losses for RVAE (causal and non-causal) and DSAE: baselines of
``train_step.py``.

Each function computes the same per-frame loss as the Pyro model/guide pair under
``TraceMeanField_ELBO`` (Exponential NLL + analytic KL given the sampled past, / (B·T)), with
the model's own networks and no Pyro, as a hand-written implementation would: RVAE loops over t
for g^z (it needs the sampled z_{t−1}); DSAE is vectorised. Noise is drawn in the order the
Pyro guides draw it (RVAE: z; DSAE: v, then z), so a fixed seed gives the same loss.
"""

import torch

from benchmarks.reference_basic import gaussian_kl, noise, reconstruction_nll
from pyro_dvae.distributions import normal_kl
from pyro_dvae.models.dsae import DSAE, over_time
from pyro_dvae.models.rvae import RVAE
from pyro_dvae.nn import run_rnn, shift, torch_lstm_step


def rvae_loss(model: RVAE, x: torch.Tensor) -> torch.Tensor:
    """RVAE with either guide: the inference LSTM on z is stepped inside the sampling loop; the
    LSTMs over x and z are ``nn.LSTM`` calls and the layer after [g^x_t, g^z_t] reads their
    concatenation, as the original does."""
    B, T, _ = x.shape
    inference, decoder = model.inference, model.decoder
    gx = run_rnn(inference.rnn_gx, inference.mlp_x_gx(x), backward=True)
    z_prev, state = x.new_zeros(B, model.z_dim), None
    zs, locs, scales = [], [], []
    for t in range(T):
        state = torch_lstm_step(inference.rnn_gz, inference.mlp_z_gz(z_prev), state)
        loc, scale = inference.head(inference.mlp_g_z(torch.cat([gx[:, t], state[0]], -1)))
        z_prev = loc + scale * noise(x, B, model.z_dim)
        zs.append(z_prev)
        locs.append(loc)
        scales.append(scale)
    z, mq, sq = torch.stack(zs, 1), torch.stack(locs, 1), torch.stack(scales, 1)
    kl = gaussian_kl(mq, sq, torch.zeros_like(mq), torch.ones_like(sq))
    y = decoder.gen_out(decoder.mlp_h_x(run_rnn(decoder.rnn_h, decoder.mlp_z_h(z))))
    return (reconstruction_nll(model, x, y) + kl) / (B * T)


reference_loss_rvae_causal = rvae_loss
reference_loss_rvae_noncausal = rvae_loss


def reference_loss_dsae(model: DSAE, x: torch.Tensor) -> torch.Tensor:
    """DSAE, vectorised over time; KL_v per sequence floored at ``kl_v_free_bits``."""
    B, T, _ = x.shape
    inference = model.inference
    phi = inference.mlp_x(x)
    h_n = inference.rnn_gv(phi)[1][0]
    mv, sv = inference.head_v(inference.mlp_gv_v(torch.cat([h_n[0], h_n[1]], -1)))
    v = mv + sv * noise(x, B, model.v_dim)
    u = inference.mlp_xv_gxv(torch.cat([phi, over_time(v, T)], -1))
    g = inference.mlp_gxv_gz(inference.rnn_gxv(u)[0])
    mq, sq = inference.head_z(inference.rnn_gz(g)[0])
    z = mq + sq * noise(x, B, T, model.z_dim)
    mp, sp = model.prior.head(model.prior.rnn(shift(z))[0])
    kl_v = normal_kl(mv, sv, torch.zeros_like(mv), torch.ones_like(sv)).sum(-1)
    kl = gaussian_kl(mq, sq, mp, sp) + kl_v.clamp(min=model.kl_v_free_bits).sum()
    return (reconstruction_nll(model, x, model.decoder(v, z)) + kl) / (B * T)

"""DKF: the deep Kalman filter / deep Markov model (Krishnan et al. 2017; spec §2.2).

Notation: x_t (B, T, D) observed frame, z_t (B, T, L) latent state, g_t the summary of x
that the inference network feeds to its combiner, y_t (B, T, D) decoder output.

    p(x, z) = ∏_t p(x_t | z_t) p(z_t | z_{t−1}),            z_0 = 0
    q(z | x) = ∏_t q(z_t | z_{t−1}, g_t)

``learn_initial=true`` makes the initial states parameters, as in Pyro's DMM: z_0 of the prior,
z_0 of the guide (Pyro's z_q_0) and h_0 of the guide's RNN over x (zero at the start).

The transition p(z_t | z_{t−1}) is a prior component (``prior=gated`` by default, or any
registered :class:`~pyro_dvae.models.priors.Transition`). The inference network is swappable
(``guide=``, any class registered with :func:`register_guide`):

* ``dks`` (default): g^x = backward LSTM over MLP(x), so g^x_t summarises x_{t:T};
  combiner g_t = (MLP(z_{t−1}) + g^x_t) / 2. ``rnn=relu`` makes the LSTM an Elman RNN with
  ReLU units (Pyro's DMM), for every guide with an RNN.
* ``st_lr``: bidirectional LSTM; g_t = (MLP(z_{t−1}) + g^→_t + g^←_t) / 3.
* ``iaf``: the DKS combiner's Gaussian pushed through ``iaf_flows`` inverse autoregressive
  flows (Pyro's DMM with ``--num-iafs``); no KL to the prior in closed form.
* ``mean_field``: q(z_t | x_t), a frame-wise encoder with no dynamics (the worked example of a
  new guide: one class and ``configs/guide/mean_field.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from pyro.distributions import TransformedDistribution
from pyro.distributions.transforms import affine_autoregressive
from torch import nn
from torch.distributions import Distribution
from torch.nn import functional as F

from pyro_dvae.distributions import (
    IndependentTrajectory,
    Step,
    Trajectory,
    diag_normal,
    require_rsample,
)
from pyro_dvae.likelihoods import Likelihood
from pyro_dvae.models.base import LatentDecoderDVAE
from pyro_dvae.models.priors import build_transition
from pyro_dvae.nn import (
    HEAD_SCALES,
    MLP,
    GaussianHead,
    OutputLinear,
    activation_class,
    full_precision,
    recurrent,
    run_rnn,
    shift,
)
from pyro_dvae.registry import Registry

GUIDES: Registry[Callable[..., nn.Module]] = Registry(
    "guide.name", "guide of DKF", "pyro_dvae.models.dkf.register_guide"
)
"""Guide name → inference-network class. Each is built with the model's inference sizes
(``x_dim, z_dim, dense_x_gx, dim_rnn_gx, dense_ztm1_g, dense_g_z, activation, input_activation,
rnn, rnn_dropout, iaf_flows, iaf_hidden, learn_initial, guide_scale``; a guide ignores those
it has no use for) and maps ``x (B, T, D)`` to a :class:`~pyro_dvae.distributions.Trajectory`
over z (B, T, L)."""


def register_guide(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Make an inference network available as ``guide=<name>`` for DKF (in a module outside
    this package too, loaded with ``plugins=[module]``)."""
    return GUIDES.register(name)


def check_guide_steps(inference: nn.Module, x_dim: int, name: str) -> None:
    """Refuse the inference network of ``guide=<name>`` if its first step q(z_1 | ·), on
    x = 0 ``(1, 1, D)``, has no ``rsample`` (training draws through it), naming its class."""
    with torch.no_grad():
        q = inference(torch.zeros(1, 1, x_dim))
        step, _ = q.step(0, q.initial(), None)
    require_rsample(step, f"guide.name={name!r}: {type(inference).__name__}")


class DKFInference(nn.Module):
    """q(z_t | z_{t−1}, g_t) with the combiner of the DKS / ST-LR inference networks.

    ``forward(x (B, T, D)) -> Trajectory`` over z (B, T, L): drawn with :meth:`sampler`, scored
    with :meth:`combine`. A subclass changes the step's distribution in :meth:`conditional`.
    ``guide_scale``: how the combiner's head makes σ (``pyro_dvae.nn.HEAD_SCALES``: ``exp`` of
    half a log-variance, ``softplus`` as Pyro's DMM, ``sqrt_softplus`` as the DMM authors' code).
    ``learn_initial``: z_0 (``z_q_0``) and the RNN's h_0 (``h_0``) are parameters; not with the
    bidirectional RNN of ST-LR. ``input_activation``: of the MLP before the RNN (None:
    ``activation``). ``rnn_dropout``: dropout on g^x while training (the DMM authors' 0.1).
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        dense_x_gx: Sequence[int],
        dim_rnn_gx: int,
        dense_ztm1_g: Sequence[int],
        dense_g_z: Sequence[int],
        bidirectional: bool,
        activation: str = "tanh",
        rnn: str = "lstm",
        learn_initial: bool = False,
        guide_scale: str = "exp",
        input_activation: str | None = None,
        rnn_dropout: float = 0.0,
        **_,
    ) -> None:
        super().__init__()
        if not (isinstance(rnn_dropout, (int, float)) and 0 <= rnn_dropout < 1):
            raise ValueError(
                f"model.<modality>.rnn_dropout={rnn_dropout!r}: expected a number in [0, 1)"
            )
        self.z_dim, self.bidirectional, self.rnn_dropout = z_dim, bidirectional, rnn_dropout
        self.n_terms = 3 if bidirectional else 2
        self.mlp_x_gx = MLP(x_dim, dense_x_gx, input_activation or activation)
        self.rnn_gx = recurrent(rnn, self.mlp_x_gx.out_dim, dim_rnn_gx, bidirectional)
        self.mlp_ztm1_g = MLP(z_dim, [*dense_ztm1_g, dim_rnn_gx], activation)
        self.mlp_g_z = MLP(dim_rnn_gx, dense_g_z, activation)
        self.head = GaussianHead(self.mlp_g_z.out_dim, z_dim, guide_scale)
        if learn_initial and bidirectional:
            raise ValueError(
                "model.<modality>.learn_initial=true: not with a bidirectional guide RNN (st_lr)"
            )
        for name, size in (("z_q_0", z_dim), ("h_0", dim_rnn_gx)):
            self.register_parameter(
                name, nn.Parameter(torch.zeros(size)) if learn_initial else None
            )

    def summary(self, x: torch.Tensor) -> torch.Tensor:
        """Σ of the RNN outputs g^x (B, T, H): backward (DKS), or forward + backward (ST-LR);
        while training, with dropout ``rnn_dropout``."""
        h = self.mlp_x_gx(x)
        if self.bidirectional:
            gx = run_rnn(self.rnn_gx, h).unflatten(-1, (2, -1)).sum(-2)
        else:
            gx = run_rnn(self.rnn_gx, h, backward=True, h_0=self.h_0)
        return F.dropout(gx, self.rnn_dropout, self.training) if self.rnn_dropout else gx

    def combine(self, z_prev: torch.Tensor, gx: torch.Tensor) -> Distribution:
        """q(z_t | z_{t−1}, g^x_t) from z_{t−1} and g^x_t; any leading dims."""
        g = (self.mlp_ztm1_g(z_prev) + gx) / self.n_terms
        return self.conditional(*self.head(self.mlp_g_z(g)))

    def conditional(self, loc: torch.Tensor, scale: torch.Tensor) -> Distribution:
        """q(z_t | ·) from the combiner's N(loc, diag scale²); any leading dims."""
        return diag_normal(loc, scale)

    def sampler(self, gx: torch.Tensor) -> Step:
        """The sampling step along g^x (B, T, H): :meth:`combine` with the affine layer after
        the average split, W (m_t + g^x_t)/n + b = (W/n) m_t + ((W/n) g^x_t + b) for
        m_t = MLP(z_{t−1}). The g^x share is one product over all t; a step adds (W/n) m_t.
        Same parameters and values, and no slice of g^x (whose backward fills a (B, T, H)
        tensor) nor the sum and division per step."""
        first, *rest = self.mlp_g_z if len(self.mlp_g_z) else [self.head.linear]
        w = first.weight / self.n_terms
        gx_part, w_t = F.linear(gx, w, first.bias).unbind(1), w.t()

        def step(t: int, z_prev: torch.Tensor, state: None):
            pre = torch.addmm(gx_part[t], self.mlp_ztm1_g(z_prev), w_t)
            if len(self.mlp_g_z) == 0:  # the layer is the head's
                return self.conditional(*self.head.split(pre)), None
            for layer in rest:
                pre = layer(pre)
            return self.conditional(*self.head(pre)), None

        return step

    def forward(self, x: torch.Tensor) -> Trajectory:
        gx = self.summary(x)
        B, T, _ = x.shape
        return Trajectory(
            step=self.sampler(gx),
            parallel=lambda z: self.combine(shift(z, self.z_q_0), gx),
            batch_size=B,
            T=T,
            L=self.z_dim,
            like=x,
            z_0=self.z_q_0,
        )


register_guide("dks")(partial(DKFInference, bidirectional=False))
register_guide("st_lr")(partial(DKFInference, bidirectional=True))


@register_guide("iaf")
class IAFInference(DKFInference):
    """The DKS guide with inverse autoregressive flows (Kingma et al. 2016), as in Pyro's DMM:
    the combiner's N(μ_t, diag σ_t²) pushed through K affine autoregressive transforms that
    every step shares,

        z_t = f_K ∘ … ∘ f_1(u),  u ~ N(μ_t, diag σ_t²),  f_k(u) = u ⊙ exp(s_k(u)) + m_k(u),

    with (m_k, s_k) a MADE of ``iaf_hidden`` units (Pyro's ``affine_autoregressive``), so
    log q(z_t | ·) = log N(u; μ_t, σ_t²) − Σ_k Σ_l s_k(u_{k−1})_l. No KL to the prior has a closed
    form: the ELBO scores this term with log q(z) − log p(z) of the draw.
    ``forward(x (B, T, D)) -> Trajectory`` over z.
    """

    def __init__(self, *args, iaf_flows: int = 2, iaf_hidden: int = 100, **sizes) -> None:
        for key, value in (("iaf_flows", iaf_flows), ("iaf_hidden", iaf_hidden)):
            if type(value) is not int or value < 1:
                raise ValueError(f"model.<modality>.{key}={value!r}: expected an integer >= 1")
        super().__init__(*args, bidirectional=False, **sizes)
        self.flows = nn.ModuleList(
            affine_autoregressive(self.z_dim, hidden_dims=[iaf_hidden]) for _ in range(iaf_flows)
        )
        for flow in self.flows:  # the flows' shifts and scales are the density's parameters
            flow.arn.register_forward_hook(_float32_outputs)

    def conditional(self, loc: torch.Tensor, scale: torch.Tensor) -> Distribution:
        """q(z_t | ·): the combiner's Gaussian through the flows; any leading dims."""
        return TransformedDistribution(super().conditional(loc, scale), list(self.flows))


def _float32_outputs(
    _module: nn.Module, _inputs: tuple, outputs: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    """Forward hook of an IAF's autoregressive network: its (shift, log-scale) in float32 under
    autocast (:func:`~pyro_dvae.nn.full_precision`)."""
    return tuple(full_precision(t) for t in outputs)


@register_guide("mean_field")
class MeanFieldInference(nn.Module):
    """q(z_t | x_t) = N(heads(MLP(x_t))): every frame on its own, as in the VAE, so the guide
    ignores the dynamics the prior models. ``forward(x (B, T, D)) -> Trajectory`` over z.

    It takes DKF's inference sizes and uses ``dense_x_gx`` for its MLP.
    """

    def __init__(
        self, x_dim: int, z_dim: int, dense_x_gx: Sequence[int], activation: str = "tanh", **_
    ) -> None:
        super().__init__()
        self.mlp = MLP(x_dim, dense_x_gx, activation)
        self.head = GaussianHead(self.mlp.out_dim, z_dim)

    def forward(self, x: torch.Tensor) -> Trajectory:
        return IndependentTrajectory(diag_normal, *self.head(self.mlp(x)))


class DKF(LatentDecoderDVAE):
    """Deep Kalman filter with a swappable transition prior and inference network.

    Args:
        x_dim, z_dim, likelihood: see :class:`DVAE`.
        guide: a registered guide (:data:`GUIDES`): ``dks`` (default), ``st_lr``, ``mean_field``,
            ``iaf``.
        prior: a registered transition, ``gated`` (default) or ``linear``.
        dense_x_gx, dim_rnn_gx, dense_ztm1_g, dense_g_z: inference-network sizes.
        dense_z_x: decoder hidden sizes.
        activation: of the inference MLPs, and of the decoder unless ``decoder_activation``.
        input_activation: of the inference MLP before the RNN (None: ``activation``). The DMM
            authors' code: a ``relu`` embedding, a ``tanh`` combiner.
        rnn: the inference RNN over x, ``lstm`` or an Elman RNN ``relu`` / ``tanh``.
        rnn_dropout: dropout on the inference RNN's outputs while training (the DMM authors'
            0.1; 0: none).
        decoder_activation: of the decoder MLP (None: ``activation``). Pyro's DMM: ``relu``
            decoder, ``tanh`` combiner.
        iaf_flows, iaf_hidden: flows and MADE width of ``guide=iaf``.
        learn_initial: the prior's z_0, the guide's z_0 and its RNN's h_0 are parameters
            (Pyro's DMM), not 0.
        guide_scale: σ of the guide's combiner, ``exp`` (of half a log-variance), ``softplus``
            (Pyro's DMM) or ``sqrt_softplus`` (the variance is softplus: the DMM authors').
        prior_options: options of the transition (``prior.options``, e.g. ``hidden``).
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        likelihood: Likelihood,
        guide: str | None = None,
        prior: str | None = None,
        dense_x_gx: Sequence[int] = (256,),
        dim_rnn_gx: int = 128,
        dense_ztm1_g: Sequence[int] = (32,),
        dense_g_z: Sequence[int] = (32,),
        dense_z_x: Sequence[int] = (32, 64, 128, 256),
        activation: str = "tanh",
        rnn: str = "lstm",
        decoder_activation: str | None = None,
        iaf_flows: int = 2,
        iaf_hidden: int = 100,
        learn_initial: bool = False,
        guide_scale: str = "exp",
        input_activation: str | None = None,
        rnn_dropout: float = 0.0,
        prior_options: dict | None = None,
    ) -> None:
        super().__init__(x_dim, z_dim, likelihood)
        inference = self.choose_guide(guide, GUIDES, default="dks")
        self.prior = build_transition(prior or "gated", z_dim, **(prior_options or {}))
        if not isinstance(learn_initial, bool):
            raise ValueError(f"model.<modality>.learn_initial={learn_initial!r}: expected a bool")
        if guide_scale not in HEAD_SCALES:
            raise ValueError(
                f"model.<modality>.guide_scale={guide_scale!r}: expected one of {list(HEAD_SCALES)}"
            )
        if learn_initial:
            self.prior.learn_initial_state(z_dim)
        decoder_activation = decoder_activation or activation
        for key, value in (
            ("decoder_activation", decoder_activation),
            ("input_activation", input_activation),
        ):
            if value is not None:
                activation_class(value, f"model.<modality>.{key}")
        mlp_z_x = MLP(z_dim, dense_z_x, decoder_activation)
        self.decoder = nn.Sequential(mlp_z_x, OutputLinear(mlp_z_x.out_dim, x_dim))
        self.inference = inference(
            x_dim=x_dim,
            z_dim=z_dim,
            dense_x_gx=dense_x_gx,
            dim_rnn_gx=dim_rnn_gx,
            dense_ztm1_g=dense_ztm1_g,
            dense_g_z=dense_g_z,
            activation=activation,
            input_activation=input_activation,
            rnn=rnn,
            rnn_dropout=rnn_dropout,
            iaf_flows=iaf_flows,
            iaf_hidden=iaf_hidden,
            learn_initial=learn_initial,
            guide_scale=guide_scale,
        )
        check_guide_steps(self.inference, x_dim, self.guide_name)

"""Linear-Gaussian state-space models: exact filtering, smoothing and log-likelihood.

Notation (Fraccaro et al. 2017, §3), for t = 1..T::

    z_0 ~ N(m_0, P_0)
    z_t = A_t z_{t−1} + b_t + ε_t,      ε_t ~ N(0, Q)        state      (Z,)
    a_t = C_t z_t + δ_t,                δ_t ~ N(0, R)        observation (N,)

``b_t`` is the effect of a control input, ``B_t u_t``. The state before the first observation
is z_0, as in Pyro's ``GaussianHMM``: a_1 already follows one transition.

Plain functions of tensors, kept apart from any network (as in dynamax), so that the KVAE, the
tests and any other model share them. Every tensor may carry leading batch dimensions ``...``.
Covariances enter gains only through Cholesky factors: the Kalman update is one triangular solve
with the Cholesky factor of the innovation covariance, the smoother gain a ``cholesky_solve``;
nothing is inverted explicitly. Covariances are symmetrised after every update.

Missing observations: ``observed (..., T)`` bool. An unobserved step is predicted but not
updated, and adds nothing to the log-likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro.distributions import MultivariateNormal


@dataclass(frozen=True)
class LGSSM:
    """The parameters of one LGSSM (or a batch of them) over T steps.

    Attributes:
        init_loc: m_0 ``(..., Z)``.
        init_cov: P_0 ``(..., Z, Z)``.
        A: transition matrices ``(..., T, Z, Z)``.
        b: transition offsets ``(..., T, Z)`` (B_t u_t; zeros without control).
        C: emission matrices ``(..., T, N, Z)``.
        Q: transition noise covariance ``(..., Z, Z)``.
        R: emission noise covariance ``(..., N, N)``.
    """

    init_loc: torch.Tensor
    init_cov: torch.Tensor
    A: torch.Tensor
    b: torch.Tensor
    C: torch.Tensor
    Q: torch.Tensor
    R: torch.Tensor

    @property
    def T(self) -> int:
        return self.A.shape[-3]

    def steps(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(A_t, b_t, C_t)`` of every step, in order: views by ``unbind``, whose backward
        stacks the steps' gradients once (indexing step t fills a zero gradient of the whole
        tensor for each t)."""
        return list(zip(self.A.unbind(-3), self.b.unbind(-2), self.C.unbind(-3), strict=True))


@dataclass(frozen=True)
class Filtered:
    """The Kalman filter's output, every field ``(..., T, ·)``.

    Attributes:
        pred_loc, pred_cov: z_t | a_{<t} (predicted).
        loc, cov: z_t | a_{≤t} (filtered; the prediction where a_t is missing).
        obs_loc, obs_scale_tril: a_t | a_{<t}, the one-step predictive of the observation:
            mean ``C_t m_{t|t−1}`` and the Cholesky factor of ``C_t P_{t|t−1} C_tᵀ + R``.
    """

    pred_loc: torch.Tensor
    pred_cov: torch.Tensor
    loc: torch.Tensor
    cov: torch.Tensor
    obs_loc: torch.Tensor
    obs_scale_tril: torch.Tensor

    def predictive(self) -> MultivariateNormal:
        """p(a_t | a_{<t}) for every t: batch ``(..., T)``, event ``(N,)``."""
        return MultivariateNormal(self.obs_loc, scale_tril=self.obs_scale_tril)

    def log_likelihood(self, a: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(a_{1:T}) = Σ_t log p(a_t | a_{<t})`` over the observed steps, ``(...,)``."""
        log_p = self.predictive().log_prob(a)
        if observed is not None:
            log_p = log_p * observed
        return log_p.sum(-1)


def symmetrise(m: torch.Tensor) -> torch.Tensor:
    """½(M + Mᵀ) over the last two dimensions."""
    return 0.5 * (m + m.mT)


def predict(
    loc: torch.Tensor, cov: torch.Tensor, A: torch.Tensor, b: torch.Tensor, Q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Time update: ``m⁻ = A m + b``, ``P⁻ = A P Aᵀ + Q``; ``loc (..., Z)``, ``cov (..., Z, Z)``."""
    loc = (A @ loc[..., None])[..., 0] + b
    return loc, A @ cov @ A.mT + Q


def emission(
    loc: torch.Tensor, cov: torch.Tensor, C: torch.Tensor, R: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distribution of a = C z + δ for z ~ N(loc, cov): mean ``(..., N)`` and Cholesky factor
    of ``S = C P Cᵀ + R`` ``(..., N, N)``."""
    mean = (C @ loc[..., None])[..., 0]
    return mean, cholesky(C @ cov @ C.mT + R)


def cholesky(m: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of a symmetric positive-definite ``m (..., n, n)``; NaN where ``m`` is not
    positive definite (so that a loss built on it fails loudly), without the host
    synchronisation of ``torch.linalg.cholesky``'s error check."""
    tril, info = torch.linalg.cholesky_ex(symmetrise(m))
    return torch.where(info[..., None, None] == 0, tril, torch.nan)


def update(
    loc: torch.Tensor,
    cov: torch.Tensor,
    C: torch.Tensor,
    obs_loc: torch.Tensor,
    obs_scale_tril: torch.Tensor,
    a: torch.Tensor,
    observed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Measurement update of N(loc, cov) by ``a (..., N)`` given :func:`emission`'s output.

    One triangular solve with S's Cholesky factor L gives ``W = L⁻¹ C P`` and
    ``v = L⁻¹ (a − C m⁻)``; then ``m = m⁻ + Wᵀ v`` and ``P = P⁻ − Wᵀ W``, which are
    ``m⁻ + K (a − C m⁻)`` and ``P⁻ − K S Kᵀ`` for the gain ``K = P⁻ Cᵀ S⁻¹``. Where
    ``observed (...)`` is False the prediction is returned unchanged.
    """
    rhs = torch.cat([C @ cov, (a - obs_loc)[..., None]], dim=-1)
    solved = torch.linalg.solve_triangular(obs_scale_tril, rhs, upper=False)
    w, v = solved[..., :-1], solved[..., -1:]
    new_loc = loc + (w.mT @ v)[..., 0]
    new_cov = symmetrise(cov - w.mT @ w)
    if observed is None:
        return new_loc, new_cov
    return (
        torch.where(observed[..., None], new_loc, loc),
        torch.where(observed[..., None, None], new_cov, cov),
    )


def kalman_filter(model: LGSSM, a: torch.Tensor, observed: torch.Tensor | None = None) -> Filtered:
    """Filter ``a (..., T, N)`` (``observed (..., T)`` bool marks the steps present)."""
    loc, cov = model.init_loc, model.init_cov
    fields: dict[str, list[torch.Tensor]] = {name: [] for name in Filtered.__dataclass_fields__}
    masks = [None] * model.T if observed is None else observed.unbind(-1)
    for (A, b, C), a_t, mask in zip(model.steps(), a.unbind(-2), masks, strict=True):
        loc, cov = predict(loc, cov, A, b, model.Q)
        obs_loc, obs_scale_tril = emission(loc, cov, C, model.R)
        fields["pred_loc"].append(loc)
        fields["pred_cov"].append(cov)
        fields["obs_loc"].append(obs_loc)
        fields["obs_scale_tril"].append(obs_scale_tril)
        loc, cov = update(loc, cov, C, obs_loc, obs_scale_tril, a_t, mask)
        fields["loc"].append(loc)
        fields["cov"].append(cov)
    return stack_filtered(fields)


def stack_filtered(fields: dict[str, list[torch.Tensor]]) -> Filtered:
    """A :class:`Filtered` from per-step lists of its fields (each stacked along time)."""
    return Filtered(
        **{
            name: torch.stack(steps, dim=-2 if name.endswith("loc") else -3)
            for name, steps in fields.items()
        }
    )


def rts_smoother(model: LGSSM, filtered: Filtered) -> tuple[torch.Tensor, torch.Tensor]:
    """Rauch–Tung–Striebel smoother: the means ``(..., T, Z)`` and covariances ``(..., T, Z, Z)``
    of z_t | a_{1:T} (all observed steps).

    ``J_t = P_{t|t} A_{t+1}ᵀ P_{t+1|t}⁻¹`` by a Cholesky solve;
    ``m_{t|T} = m_{t|t} + J_t (m_{t+1|T} − m_{t+1|t})``,
    ``P_{t|T} = P_{t|t} + J_t (P_{t+1|T} − P_{t+1|t}) J_tᵀ``.
    """
    filt_locs, filt_covs = filtered.loc.unbind(-2), filtered.cov.unbind(-3)
    pred_locs, pred_covs = filtered.pred_loc.unbind(-2), filtered.pred_cov.unbind(-3)
    A = model.A.unbind(-3)
    loc, cov = filt_locs[-1], filt_covs[-1]
    locs, covs = [loc], [cov]
    for t in range(model.T - 2, -1, -1):
        filt_cov, pred_cov = filt_covs[t], pred_covs[t + 1]
        gain = torch.cholesky_solve(A[t + 1] @ filt_cov, cholesky(pred_cov)).mT
        loc = filt_locs[t] + (gain @ (loc - pred_locs[t + 1])[..., None])[..., 0]
        cov = symmetrise(filt_cov + gain @ (cov - pred_cov) @ gain.mT)
        locs.append(loc)
        covs.append(cov)
    return torch.stack(locs[::-1], dim=-2), torch.stack(covs[::-1], dim=-3)


__all__ = [
    "LGSSM",
    "Filtered",
    "cholesky",
    "emission",
    "kalman_filter",
    "predict",
    "rts_smoother",
    "stack_filtered",
    "symmetrise",
    "update",
]

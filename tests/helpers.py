"""Hand-written closed forms that the tests compare Pyro's numbers with."""

import math

import torch


def exponential_nll(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """−log Exponential(x; rate e^{−y}) = y + x e^{−y}, summed."""
    return (y + x * torch.exp(-y)).sum()


def gaussian_kl(mq, sq, mp, sp) -> torch.Tensor:
    """Σ KL(N(mq, sq²) ‖ N(mp, sp²)) = ½ Σ [log sp²/sq² + (sq² + (mq − mp)²)/sp² − 1]."""
    return 0.5 * (torch.log(sp**2 / sq**2) + (sq**2 + (mq - mp) ** 2) / sp**2 - 1).sum()


def gaussian_log_density(z, m, s) -> torch.Tensor:
    """Σ log N(z; m, s²)."""
    return (-0.5 * ((z - m) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum()

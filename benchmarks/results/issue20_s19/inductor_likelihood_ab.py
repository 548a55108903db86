"""Whole Pyro training steps with the Exponential likelihood as Inductor's C++ kernels
(``torch.compile``: one pass forward that writes the gradient factor 1 − x·e^{−y}, one pass
backward) against the shipped eager ``likelihoods._ExponentialNLL``, alternated step by step in
one process, glibc's allocator, 2 threads, speech B = 128; medians (ms). Made
``inductor_likelihood_ab_xeon.json`` (nineteenth session) at ``bc797c0``::

    python benchmarks/results/issue20_s19/inductor_likelihood_ab.py out.json
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.train_step import record, switch_rows  # noqa: E402
from pyro_dvae import likelihoods  # noqa: E402
from pyro_dvae.nn import LOGVAR_BOUND  # noqa: E402

MODELS = ("vae", "dkf", "storn", "vrnn", "srnn", "rvae_causal", "rvae_noncausal", "dsae")


@torch.compile(dynamic=False, fullgraph=True)
def _nll_and_factor(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = y.clamp(-LOGVAR_BOUND, LOGVAR_BOUND)
    ratio = x * torch.exp(-y)
    return (y + ratio).sum((-2, -1)), 1 - ratio


@torch.compile(dynamic=False, fullgraph=True)
def _scaled(factor: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return factor * grad[..., None, None]


class CompiledNLL(torch.autograd.Function):
    """``_ExponentialNLL`` for data x (no gradient), through the two compiled kernels."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nll, factor = _nll_and_factor(x, y)
        ctx.save_for_backward(factor)
        return nll

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, _scaled(ctx.saved_tensors[0], grad)


def main(path: str) -> None:
    variants = {"eager": likelihoods._ExponentialNLL, "inductor": CompiledNLL}
    cases = [(model, "speech", 128) for model in MODELS]
    record(path, switch_rows(likelihoods, "_ExponentialNLL", variants, cases))


if __name__ == "__main__":
    main(sys.argv[1])

"""The two hand-written CPU forms of the speech step that remain, each against the plain torch
form it replaces, in whole Pyro training steps alternated step by step in one process
(:func:`benchmarks.train_step.switch_ab`: glibc's allocator, 2 threads; medians, ms):

* ``output_linear``: the decoders' output layer writing rows padded to 16 floats
  (``nn.OutputLinear``, ``MIN_ROWS`` = 1,024) against ``F.linear`` (``MIN_ROWS`` beyond any
  batch), speech B = 128 (at B = 8 a step has 400 rows and both are ``F.linear``);
* ``exponential``: the fused Exponential log-density (``likelihoods._ExponentialNLL``) against
  the per-frame formula summed (``step_log_prob``), speech B = 128 and B = 8.

Made ``kept_forms_ab_xeon.json`` (eighteenth session)::

    python benchmarks/results/issue20_s18/kept_forms_ab.py out.json
"""

import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.train_step import record, switch_rows  # noqa: E402
from pyro_dvae import nn as dvae_nn  # noqa: E402
from pyro_dvae.likelihoods import ExponentialLogMean  # noqa: E402

MODELS = ("vae", "dkf", "storn", "vrnn", "srnn", "rvae_causal", "rvae_noncausal", "dsae")


def per_frame(self: ExponentialLogMean, x):
    return self.step_log_prob(x).sum(-1)


EXPERIMENTS = {
    "output_linear": (dvae_nn, "MIN_ROWS", {"padded": 1024, "plain": 1 << 62}, (128,)),
    "exponential": (
        ExponentialLogMean,
        "log_prob",
        {"fused": ExponentialLogMean.log_prob, "plain": per_frame},
        (128, 8),
    ),
}


def rows() -> Iterator[dict]:
    for experiment, (owner, name, variants, batches) in EXPERIMENTS.items():
        cases = [(model, "speech", B) for B in batches for model in MODELS]
        yield from switch_rows(owner, name, variants, cases, experiment=experiment)


if __name__ == "__main__":
    record(sys.argv[1], rows())

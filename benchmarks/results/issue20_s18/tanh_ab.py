"""Whole Pyro training steps with every MLP's tanh as the one-node 2σ(2x) − 1 on large CPU
tensors (``pyro_dvae.activations.Tanh``, ``MIN_ELEMENTS`` = 65,536) against ``torch.tanh``
everywhere (``MIN_ELEMENTS`` beyond any tensor), alternated step by step in one process,
glibc's allocator, 2 threads; medians (ms). Made ``tanh_ab_xeon.json`` (eighteenth session) at
``1586748``, before ``pyro_dvae.activations`` was removed (every MLP's tanh is now
``nn.Tanh``)::

    python benchmarks/results/issue20_s18/tanh_ab.py out.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.train_step import record, switch_rows  # noqa: E402
from pyro_dvae import activations  # noqa: E402

MODELS = ("vae", "dkf", "storn", "vrnn", "srnn", "rvae_causal", "rvae_noncausal", "dsae")


def main(path: str) -> None:
    variants = {"sigmoid_form": 1 << 16, "torch_tanh": 1 << 62}
    cases = [(model, "speech", B) for B in (128, 8) for model in MODELS]
    record(path, switch_rows(activations, "MIN_ELEMENTS", variants, cases))


if __name__ == "__main__":
    main(sys.argv[1])

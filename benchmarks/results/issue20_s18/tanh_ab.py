"""Whole Pyro training steps with every MLP's tanh as the one-node 2σ(2x) − 1 on large CPU
tensors (``pyro_dvae.activations.Tanh``, ``MIN_ELEMENTS`` = 65,536) against ``torch.tanh``
everywhere (``MIN_ELEMENTS`` beyond any tensor), alternated step by step in one process,
glibc's allocator, 2 threads; medians (ms). Made ``tanh_ab_xeon.json`` (eighteenth session) at
``1586748``, before ``pyro_dvae.activations`` was removed (every MLP's tanh is now
``nn.Tanh``)::

    python benchmarks/results/issue20_s18/tanh_ab.py out.json
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.train_step import switch_ab  # noqa: E402
from pyro_dvae import activations  # noqa: E402

MODELS = ("vae", "dkf", "storn", "vrnn", "srnn", "rvae_causal", "rvae_noncausal", "dsae")


def main(path: str) -> None:
    rows, variants = [], {"sigmoid_form": 1 << 16, "torch_tanh": 1 << 62}
    for shape, B in (("speech", 128), ("speech", 8)):
        for name in MODELS:
            n = 20 if B == 128 else 40
            row = {"model": name, "shape": shape, "B": B}
            row |= switch_ab(activations, "MIN_ELEMENTS", variants, n, model=name, shape=shape, B=B)
            row["torch_tanh/sigmoid_form"] = row["torch_tanh"] / row["sigmoid_form"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(path).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])

"""Whole Pyro training steps with the per-step LSTM cell as the library's one autograd node
(``nn._LSTMCell``, a hand-written backward) against the same cell as plain torch operations
(chunk, sigmoid, tanh, products: autograd's own nodes), alternated step by step in one
process, glibc's allocator, 2 threads; medians (ms). The models whose per-step loops run the
cell in training: VRNN's and RVAE's guides, DSAE's prior. Made ``lstm_cell_ab_xeon.json``
(eighteenth session) at ``1586748``, before the one-node cell was removed (``lstm_cell`` is now
the plain form)::

    python benchmarks/results/issue20_s18/lstm_cell_ab.py out.json
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.train_step import record, switch_rows  # noqa: E402
from pyro_dvae import nn as dvae_nn  # noqa: E402


def plain(gates: torch.Tensor, c: torch.Tensor):
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def main(path: str) -> None:
    variants = {"node": dvae_nn._LSTMCell.apply, "plain": plain}
    shapes = (("speech", 8), ("motion", 128), ("speech", 128))
    models = ("vrnn", "rvae_causal", "rvae_noncausal", "dsae")
    cases = [(model, shape, B) for shape, B in shapes for model in models]
    record(path, switch_rows(dvae_nn._LSTMCell, "apply", variants, cases))


if __name__ == "__main__":
    main(sys.argv[1])

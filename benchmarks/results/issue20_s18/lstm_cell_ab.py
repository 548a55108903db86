"""Whole Pyro training steps with the per-step LSTM cell as the library's one autograd node
(``nn._LSTMCell``, a hand-written backward) against the same cell as plain torch operations
(chunk, sigmoid, tanh, products: autograd's own nodes), alternated step by step in one
process, glibc's allocator, 2 threads; medians (ms). The models whose per-step loops run the
cell in training: VRNN's and RVAE's guides, DSAE's prior. Made ``lstm_cell_ab_xeon.json``
(eighteenth session) at ``1586748``, before the one-node cell was removed (``lstm_cell`` is now
the plain form)::

    python benchmarks/results/issue20_s18/lstm_cell_ab.py out.json
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.train_step import switch_ab  # noqa: E402
from pyro_dvae import nn as dvae_nn  # noqa: E402


def plain(gates: torch.Tensor, c: torch.Tensor):
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def main(path: str) -> None:
    cell, rows = dvae_nn._LSTMCell, []
    variants = {"node": cell.apply, "plain": plain}
    for shape, B in (("speech", 8), ("motion", 128), ("speech", 128)):
        for name in ("vrnn", "rvae_causal", "rvae_noncausal", "dsae"):
            n = 20 if (shape, B) == ("speech", 128) else 40
            row = {"model": name, "shape": shape, "B": B}
            row |= switch_ab(cell, "apply", variants, n, model=name, shape=shape, B=B)
            row["plain/node"] = row["plain"] / row["node"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(path).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])

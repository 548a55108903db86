"""The LSTM scan against torch's (oneDNN's) LSTM over a whole sequence whose input needs no
gradient, as ``run_rnn_fast`` runs RVAE's g^x and DSAE's φ directions: forward and backward of
a backward-in-time LSTM, T = 50, 2 threads, the two alternated in one process, medians of 20
calls after 5 (ms). Made ``scan_vs_torch_lstm_xeon.json`` (seventeenth session)::

    python benchmarks/results/issue20_s17/scan_vs_torch_lstm.py out.json
"""

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.train_step import alternated_ms, record  # noqa: E402
from pyro_dvae.nn import lstm, run_rnn  # noqa: E402
from pyro_dvae.scan import scan_rnn  # noqa: E402

GRID = [  # (D, H, bidirectional, batch sizes)
    *[(d, h, bi, (8, 16, 32, 64, 128)) for d, h, bi in [(513, 128, False), (513, 128, True)]],
    *[(d, h, bi, (8, 16, 32, 64, 128)) for d, h, bi in [(96, 64, False), (96, 64, True)]],
    *[(d, h, bi, (8, 16, 32, 64, 128)) for d, h, bi in [(513, 64, False), (96, 128, False)]],
    (257, 128, False, (8, 16, 32, 64, 128)),
    *[(d, h, bi, (32, 48, 64, 96, 128)) for d, h, bi in [(160, 128, False), (192, 128, False)]],
    *[(d, h, bi, (32, 48, 64, 96, 128)) for d, h, bi in [(160, 64, True), (513, 256, False)]],
    (384, 128, False, (32, 48, 64, 96, 128)),
]


def timed(fn, rnn: torch.nn.LSTM, x: torch.Tensor):
    def run() -> float:
        start = time.perf_counter()
        fn(rnn, x, backward=True).square().sum().backward()
        return time.perf_counter() - start

    return run


def rows() -> Iterator[dict]:
    torch.set_num_threads(2)
    for D, H, bidirectional, batches in GRID:
        for B in batches:
            torch.manual_seed(0)
            rnn, x = lstm(D, H, bidirectional), torch.rand(B, 50, D)
            steps = {"scan": timed(scan_rnn, rnn, x), "onednn": timed(run_rnn, rnn, x)}
            row = {"D": D, "H": H, "bi": bidirectional, "B": B} | alternated_ms(steps, 5, 20)
            row["scan/onednn"] = row["scan"] / row["onednn"]
            yield row


if __name__ == "__main__":
    record(sys.argv[1], rows())

"""Whole Pyro training steps with every one-directional, whole-sequence LSTM of ``run_rnn``
(DKF's g^x, STORN's two, SRNN's, DSAE's, RVAE's) run as the scan of :mod:`pyro_dvae.scan`
against torch's (oneDNN's) LSTM as shipped, at speech shape, B = 128, where B·D is above
``SCAN_MIN_STEP_INPUT`` but the input x needs its gradient (an MLP precedes each LSTM).
Alternated step by step in one process, glibc's allocator, 2 threads; medians (ms). Made
``lstm_scan_ab_xeon.json`` (eighteenth session)::

    python benchmarks/results/issue20_s18/lstm_scan_ab.py out.json
"""

import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import pyro_dvae.nn as dvae_nn  # noqa: E402
from benchmarks.train_step import record, switch_rows  # noqa: E402

SHIPPED = dvae_nn._forward


class Switch:
    scan = False


def forward(rnn: nn.RNNBase, x, h_0):
    """``run_rnn``'s forward pass, with LSTMs as scans while ``Switch.scan``."""
    lstm = isinstance(rnn, nn.LSTM) and not rnn.bidirectional and h_0 is None
    if Switch.scan and lstm and dvae_nn.is_scannable(rnn):
        return dvae_nn.scan_rnn(rnn, x)
    return SHIPPED(rnn, x, h_0)


def main(path: str) -> None:
    dvae_nn._forward = forward
    cases = [(model, "speech", 128) for model in ("dkf", "storn", "srnn", "dsae", "rvae_causal")]
    record(path, switch_rows(Switch, "scan", {"onednn": False, "scan": True}, cases))


if __name__ == "__main__":
    main(sys.argv[1])

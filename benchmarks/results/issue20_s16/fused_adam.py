"""Fused against unfused Adam in the trainer's step, alternated in one process (sixteenth session).

    python benchmarks/results/issue20_s16/fused_adam.py --B 8 --steps 40 > fused_adam_B8.jsonl
    python benchmarks/results/issue20_s16/fused_adam.py --B 128 --steps 12 > fused_adam_B128.jsonl

One JSON line per model: the median ms of each step and their ratio (speech shape, 2 threads,
glibc's allocator).
"""

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks.train_step import alternated_ms, model_names, setup, timed  # noqa: E402
from pyro_dvae.step import ELBOLoss, train_step  # noqa: E402


def step(model, x: torch.Tensor, fused: bool):
    """The trainer's step of a copy of ``model`` on ``x`` with its own Adam."""
    model = copy.deepcopy(model)
    loss = ELBOLoss(model, "mean_field")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=fused)
    return timed(lambda: train_step(loss, optimizer, x, None, 1.0), x.device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="all")
    parser.add_argument("--B", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    opts = parser.parse_args()
    for name in model_names(opts.models):
        args = {"model": name, "shape": "speech", "x_dim": None, "B": opts.B, "T": 50}
        model, x = setup({**args, "threads": 2, "device": "cpu", "sites": "trajectory"})
        steps = {"unfused": step(model, x, False), "fused": step(model, x, True)}
        ms = alternated_ms(steps, 3, opts.steps)
        row = {"model": name, "B": opts.B, **ms, "fused_over_unfused": ms["fused"] / ms["unfused"]}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

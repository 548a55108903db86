"""Exact-comparison training for tests/test_distributed.py: :func:`exact_arithmetic`, and as a
script ``experiments/run.py`` under it: ``[torchrun ...] tests/zero_noise_run.py key=value ...``.
"""

import contextlib
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository, for the tests package

from pyro_dvae import train  # noqa: E402
from tests.helpers import zero_noise  # noqa: E402


@contextlib.contextmanager
def exact_arithmetic() -> Iterator[None]:
    """Zero noise (:func:`tests.helpers.zero_noise`) and float64: models built inside have float64
    parameters (torch's default dtype) and every batch the trainer reads, ``x (B, T, D)``, is
    cast to float64 (the data's float32 values are exact in float64). Runs on different numbers
    of processes then differ only by the float64 round-off of sums taken in another order."""
    previous_dtype, on_device = torch.get_default_dtype(), train.on_device

    def on_device_float64(batch, device: torch.device):
        x, mask = on_device(batch, device)
        return x.to(torch.float64), mask

    torch.set_default_dtype(torch.float64)
    train.on_device = on_device_float64
    try:
        with zero_noise():
            yield
    finally:
        train.on_device = on_device
        torch.set_default_dtype(previous_dtype)


if __name__ == "__main__":
    with exact_arithmetic():
        runpy.run_path(str(ROOT / "experiments" / "run.py"), run_name="__main__")

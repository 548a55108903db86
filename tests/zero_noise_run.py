"""``experiments/run.py`` under :func:`helpers.zero_noise`, for tests/test_distributed.py:
``[torchrun ...] tests/zero_noise_run.py key=value ...``."""

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from helpers import zero_noise  # noqa: E402

with zero_noise():
    runpy.run_path(str(HERE.parent / "experiments" / "run.py"), run_name="__main__")

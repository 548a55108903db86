"""benchmarks/epoch.py: it builds the run as experiments/run.py does and times whole epochs."""

import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import epoch  # noqa: E402  (a script, not a package module)

SMALL_DMM = [  # Pyro's DMM recipe on the JSB chorales, with tiny networks
    "+experiment=dmm_jsb",
    "threads=1",
    "train.batch_size=50",
    "model.music.z_dim=4",
    "model.music.dim_rnn_gx=8",
    "model.music.dense_z_x=[8]",
    "prior.options.hidden=8",
]


def test_an_epoch_is_every_batch_of_the_runs_training_split(data_root, tmp_path):
    out = tmp_path / "epoch.json"
    row = epoch.main([*SMALL_DMM, "--epochs", "2", "--warmup", "0", "--json", str(out)])
    assert row["train_sequences"] == 229  # JSB's training chorales
    assert row["steps_per_epoch"] == math.ceil(229 / 50)  # the run's own batch size
    assert row["threads"] == 1 and row["device"] == "cpu"
    assert len(row["train_seconds_all"]) == 2
    assert row["train_seconds"] == statistics.median(row["train_seconds_all"])
    assert math.isclose(row["ms_per_step"], 1000 * row["train_seconds"] / row["steps_per_epoch"])
    assert row["validate_seconds"] > 0
    assert out.is_file()

"""pyro_dvae.records: seeding, the RNG states through a weights-only checkpoint, checkpoints
written atomically and read back exactly, the errors for files that are not checkpoints (naming
the file and what was expected), ``metrics.csv`` written and read back exactly and what
``loss.png`` draws."""

import csv
import random
import re
import struct

import numpy as np
import pytest
import torch
from matplotlib import pyplot

from pyro_dvae.records import (
    atomic_save,
    load_checkpoint,
    plot_losses,
    rng_state,
    seed_everything,
    set_rng_state,
    write_metrics,
)


def test_seed_everything_seeds_python_numpy_and_torch():
    seed_everything(7)
    draws = (random.random(), np.random.random_sample(), torch.rand(2))
    assert draws[0] == random.Random(7).random()
    assert draws[1] == np.random.RandomState(7).random_sample()
    assert torch.equal(draws[2], torch.rand(2, generator=torch.Generator().manual_seed(7)))


def _draws() -> list[float]:
    return [
        random.random(),
        random.gauss(0, 1),
        float(np.random.rand()),
        float(np.random.randn()),
        torch.rand(1).item(),
    ]


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    seed_everything(3)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's and NumPy's states
    np.random.randn()
    atomic_save({"model": {}, "rng": rng_state()}, tmp_path / "rng.pt")
    expected = _draws()
    seed_everything(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draws() == expected


def test_a_checkpoint_is_read_back_exactly(tmp_path):
    """Tensors of any dtype and nested plain values, saved over an older file; no temporary
    file is left."""
    path = tmp_path / "last.pt"
    atomic_save({"model": {}}, path)
    saved = {
        "model": {"w": torch.randn(3, 2, dtype=torch.float64), "steps": torch.arange(4)},
        "state": {"epoch": 3, "history": [{"val_loss": 0.1 + 0.2, "best_epoch": 2}], "x": None},
        "name": "dkf",
    }
    atomic_save(saved, path)
    loaded = load_checkpoint(path)
    assert loaded.keys() == saved.keys() and loaded["model"].keys() == saved["model"].keys()
    for key, value in saved["model"].items():
        got = loaded["model"][key]
        assert got.dtype == value.dtype and torch.equal(got, value)
    assert (loaded["state"], loaded["name"]) == (saved["state"], saved["name"])
    assert list(tmp_path.iterdir()) == [path]


def test_a_save_that_fails_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(2)}}, path)
    with pytest.raises(AttributeError, match="pickle"):  # a local function cannot be pickled
        atomic_save({"model": {"w": torch.zeros(2)}, "hook": lambda: None}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left


def test_metrics_that_cannot_be_written_leave_the_previous_file(tmp_path):
    path = tmp_path / "metrics.csv"
    write_metrics([{"epoch": 0, "loss": 1.5}], path)
    with pytest.raises(ValueError, match="fields not in fieldnames"):
        write_metrics([{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5, "new": 2}], path)
    assert path.read_bytes() == b"epoch,loss\r\n0,1.5\r\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


class Payload:
    """A pickled object of a foreign class."""


class Trap:
    """Unpickling it would create ``marker`` (a stand-in for running any code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_foreign_or_truncated_checkpoints_are_clear_errors(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}, "extra": Payload()}, tmp_path / "object.pt")
    with pytest.raises(ValueError, match=r"object\.pt .*refers to .*Payload.*weights_only=True"):
        load_checkpoint(tmp_path / "object.pt")
    marker = tmp_path / "code-ran"
    torch.save({"model": Trap(marker)}, tmp_path / "trap.pt")
    with pytest.raises(ValueError, match=r"trap\.pt was not loaded: it refers to"):
        load_checkpoint(tmp_path / "trap.pt")
    assert not marker.exists()

    atomic_save({"model": {"w": torch.randn(64, 64)}, "state": {"epoch": 1}}, tmp_path / "last.pt")
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pt is not a readable .*truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"text\.pt is not a readable"):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"no checkpoint at {tmp_path / 'missing.pt'}")
    ):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_torch_file_without_model_weights_says_what_it_holds(tmp_path):
    torch.save({"w": torch.ones(2), "b": torch.zeros(1)}, tmp_path / "bare.pt")  # a state dict
    torch.save(torch.ones(2), tmp_path / "tensor.pt")
    for name, found in (("bare.pt", "['b', 'w']"), ("tensor.pt", "Tensor")):
        message = (
            f"{tmp_path / name} is not a pyro-dvae checkpoint: expected a dict with 'model' "
            f"weights, found {found}"
        )
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            load_checkpoint(tmp_path / name)


HISTORY = [
    {"epoch": 0, "train_loss": 0.1 + 0.2, "val_loss": 1e-300},
    {"epoch": 1, "train_loss": -2.5, "val_loss": 3.141592653589793},
]
"""Two rows of a history, with floats whose shortest decimal form has 17 digits or an
exponent."""


def test_metrics_are_written_as_csv_and_read_back_exactly(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("an older file\n")
    write_metrics(HISTORY, path)
    assert path.read_bytes() == (
        b"epoch,train_loss,val_loss\r\n0,0.30000000000000004,1e-300\r\n1,-2.5,3.141592653589793\r\n"
    )
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    assert rows == HISTORY
    assert list(tmp_path.iterdir()) == [path]


def test_the_loss_plot_draws_each_column_against_the_epochs(tmp_path, monkeypatch):
    """Three panels (train and validation loss, reconstruction, KL) of a 12 × 3.2 inch figure
    at 80 dpi: a 960 × 256 PNG."""
    history = [
        dict(epoch=e, train_loss=10.0 - e, val_loss=11.0 - e, val_recon=8.0 + e, val_kl=0.5 * e)
        for e in range(3)
    ]
    figures = []
    close = pyplot.close
    monkeypatch.setattr(pyplot, "close", lambda fig: (figures.append(fig), close(fig)))
    path = tmp_path / "loss.png"
    plot_losses(history, path)
    (figure,) = figures
    panels = [
        [(line.get_label(), line.get_xydata().tolist()) for line in axes.lines]
        for axes in figure.axes
    ]
    assert panels == [
        [
            ("train_loss", [[0, 10], [1, 9], [2, 8]]),
            ("val_loss", [[0, 11], [1, 10], [2, 9]]),
        ],
        [("val_recon", [[0, 8], [1, 9], [2, 10]])],
        [("val_kl", [[0, 0], [1, 0.5], [2, 1]])],
    ]
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (960, 256)
    assert list(tmp_path.iterdir()) == [path]

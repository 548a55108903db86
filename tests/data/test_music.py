"""JSB chorales: piano rolls, the standard split, padding masks, download, and the trainer on
padded batches."""

import hashlib
import json
import logging
import math
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pyro_dvae.data import build_task, music, sources
from pyro_dvae.data.base import DECISION_BAND, ROUNDING_INTERVALS
from pyro_dvae.data.music import PianoRolls, piano_roll, read_splits
from pyro_dvae.likelihoods import Bernoulli
from pyro_dvae.models.base import DVAE
from pyro_dvae.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def jsb(data_root):
    return build_task("jsb_chorales", module="pyro_dvae.data.music", root=str(data_root))


def test_the_standard_split_and_its_shapes(jsb):
    assert (len(jsb.train), len(jsb.val), len(jsb.test)) == (229, 76, 77)
    lengths = torch.cat([jsb.train.lengths, jsb.val.lengths, jsb.test.lengths])
    assert lengths.sum() == 23_134 and lengths.min() == 25 and lengths.max() == 160
    assert jsb.test.lengths.sum() == 4_725 and jsb.x_dim == 88 and jsb.modality == "music"
    assert jsb.test[0].shape == (84, 88) and jsb.test[0].dtype == torch.float32


def test_a_hand_checked_chord_and_a_rest(jsb):
    """Test chorale 0 opens on C5 E5 G5 C6 (MIDI 72 76 79 84: keys 51 55 58 63); step 6 is a
    rest."""
    roll = jsb.test[0]
    assert roll[0].nonzero().flatten().tolist() == [51, 55, 58, 63]
    assert roll[6].sum() == 0
    assert set(roll.unique().tolist()) == {0.0, 1.0}


def test_a_batch_is_padded_to_its_longest_chorale_with_a_mask(jsb):
    index = torch.tensor([1, 0, 2])  # lengths 65, 129, 49
    x, mask = jsb.train.batch(index)
    assert x.shape == (3, 129, 88) and mask.shape == (3, 129) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [65, 129, 49]
    assert x[~mask].abs().sum() == 0
    torch.testing.assert_close(x[0, :65], jsb.train[1])


def test_piano_roll_keys_span_a0_to_c8():
    roll = piano_roll([[21, 108], [], [60]], "here")
    assert roll.shape == (3, 88) and roll.dtype == np.uint8
    assert roll[0].nonzero()[0].tolist() == [0, 87] and roll[1].sum() == 0
    assert roll[2].nonzero()[0].tolist() == [39]


@pytest.mark.parametrize("step", [[20], [109], [60.5], ["C4"], [[60]]])
def test_a_bad_step_names_the_chorale_and_the_step(step):
    with pytest.raises(ValueError, match=r"song\.json \['test'\]\[3\], step 1: .* not a list of"):
        piano_roll([[60], step], "song.json ['test'][3]")


def test_a_file_without_a_split_names_it(tmp_path):
    path = tmp_path / "chorales.json"
    path.write_text(json.dumps({"train": [[[60]]], "test": [[[60]]]}))
    with pytest.raises(ValueError, match=f"{path}: expected a non-empty list .* under 'valid'"):
        read_splits(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path}: not a readable JSON"):
        read_splits(path)


def test_evaluate_scores_reconstructions_and_render_writes_piano_rolls(tmp_path):
    """A perfect reconstruction: accuracy 1 and NLL ~0; p = ½ everywhere: 88·log 2 per step;
    one note missed and one added at every step: TP / (TP + FP + FN) = 7 / 16."""
    rolls = [piano_roll([[60, 64], [62], []], "a"), piano_roll([[70]] * 5, "b")]
    task = build_task("jsb_chorales", module="pyro_dvae.data.music", root=str(fake_root(tmp_path)))
    task.test = PianoRolls(rolls)
    perfect = task.evaluate(lambda x: x, tmp_path / "eval", n_examples=1)
    assert perfect["note_accuracy"] == 1.0 and perfect["recon_nll_per_step"] < 1e-3
    assert perfect["steps"] == 8 and (tmp_path / "eval" / "reconstructions.png").is_file()
    half = task.evaluate(lambda x: torch.full_like(x, 0.5), tmp_path / "eval", n_examples=0)
    assert half["recon_nll_per_step"] == pytest.approx(88 * math.log(2))
    assert half["note_accuracy"] == 0.0

    def wrong_notes(x):  # drops C4 (key 39: one of 8 notes), adds A0 (key 0) at all 8 steps
        p = x.clone()
        p[..., 39], p[..., 0] = 0.0, 1.0
        return p

    scores = task.evaluate(wrong_notes, tmp_path / "eval", n_examples=0)
    assert scores["note_accuracy"] == pytest.approx(7 / (7 + 8 + 1))  # TP / (TP + FP + FN)
    png, npy = task.render(torch.full((2, 4, 88), 0.3), tmp_path / "gen")
    samples = np.load(npy)
    assert png.is_file() and samples.shape == (2, 4, 88) and set(np.unique(samples)) <= {0, 1}


def test_note_counts_give_their_range_if_the_keys_near_one_half_flipped(tmp_path):
    """The perfect reconstruction with C4 (key 39) at ½ + DECISION_BAND/2 at every step of
    chorale a (right where it sounds, a false note elsewhere) and A0 (key 0) at ½ everywhere
    (silent: right): 3 steps of key 39 and 8 of key 0 lie within the band."""
    band = DECISION_BAND
    task = build_task("jsb_chorales", module="pyro_dvae.data.music", root=str(fake_root(tmp_path)))
    task.test = PianoRolls([piano_roll([[60, 64], [62], []], "a"), piano_roll([[70]] * 5, "b")])

    def nudged(x):
        p = x.clone()
        p[..., 0] = 0.5
        if x.shape[1] == 3:  # chorale a
            p[..., 39] = 0.5 + band / 2
        return p

    scores = task.evaluate(nudged, tmp_path / "eval", n_examples=0)
    hits, errors, predicted, near = 8, 2, 10, 11  # C4 added at the two steps without it
    assert scores["note_accuracy"] == hits / (hits + errors)
    assert scores["notes_predicted"] == predicted
    assert scores[ROUNDING_INTERVALS] == {
        "note_accuracy": [0.0, 1.0],
        "notes_predicted": [0, predicted + near],
    }
    assert music.rounding_intervals(hits=30, errors=10, predicted=35, near=4) == {
        "note_accuracy": [26 / 40, 34 / 40],
        "notes_predicted": [31, 39],
    }


def test_the_figure_shows_as_many_chorales_as_asked(tmp_path, monkeypatch):
    """Each chorale is two panels (it and its reconstruction): 4 asked, 4 shown, not 2."""
    task = build_task("jsb_chorales", module="pyro_dvae.data.music", root=str(fake_root(tmp_path)))
    task.test = PianoRolls([piano_roll([[60 + i]] * (i + 1), str(i)) for i in range(5)])
    shown = []
    monkeypatch.setattr(music, "piano_roll_figure", lambda rows, path: shown.append(rows))
    for asked, n in [(4, 4), (7, 5), (1, 1)]:
        task.evaluate(lambda x: x, tmp_path / "eval", n_examples=asked)
        assert [label for label, _ in shown.pop()] == [
            label for i in range(n) for label in (f"test chorale {i}", "reconstruction")
        ]
    task.evaluate(lambda x: x, tmp_path / "eval", n_examples=0)
    assert shown == []


def test_a_model_that_predicts_no_note_is_explained_and_counts_are_given(tmp_path, caplog):
    """Notes at p = 0.3 everywhere (below ½): no note predicted, accuracy 0.0, and a warning
    that says why; a perfect reconstruction predicts the 8 notes of the two chorales."""
    task = build_task("jsb_chorales", module="pyro_dvae.data.music", root=str(fake_root(tmp_path)))
    task.test = PianoRolls([piano_roll([[60, 64], [62], []], "a"), piano_roll([[70]] * 5, "b")])
    caplog.set_level(logging.WARNING, logger="pyro_dvae.data.music")
    perfect = task.evaluate(lambda x: x, tmp_path / "eval", n_examples=0)
    assert perfect["notes_predicted"] == 8 and caplog.records == []
    assert perfect["counts"] == {
        "recon_nll_per_step": {"scored": 2, "items": 2},
        "note_accuracy": {"scored": 2, "items": 2},
    }
    constant = task.evaluate(lambda x: torch.full_like(x, 0.3), tmp_path / "eval", n_examples=0)
    assert constant["note_accuracy"] == 0.0 and constant["notes_predicted"] == 0
    assert [r.getMessage() for r in caplog.records] == [
        "note_accuracy 0.0: no note of the 2 test chorales has a probability above 1/2, so none "
        "is predicted (TP = 0); a distribution constant over time that gives every key its "
        "frequency, all below 1/2, does this; see recon_nll_per_step"
    ]


def fake_root(tmp_path: Path) -> Path:
    """A data root holding a two-chorale-per-split JSON."""
    folder = tmp_path / "root" / "jsb_chorales"
    folder.mkdir(parents=True)
    splits = {key: [[[60], [64]], [[67]]] for key in ("train", "valid", "test")}
    (folder / "jsb-chorales-quarter.json").write_text(json.dumps(splits))
    return tmp_path / "root"


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Path:
    """No local data and an empty cache; returns the cache folder."""
    monkeypatch.setenv("PYRO_DVAE_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("PYRO_DVAE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def serve(monkeypatch, content: bytes) -> None:
    """The JSB release served as ``content``, with the checksum of ``b"genuine"``."""
    monkeypatch.setattr(
        sources.urllib.request,
        "urlretrieve",
        lambda url, filename: Path(filename).write_bytes(content),
    )
    release = sources.FileRelease(
        "https://example.org/jsb.json",
        "jsb-chorales-quarter.json",
        hashlib.sha256(b"genuine").hexdigest(),
    )
    monkeypatch.setitem(sources.FILE_RELEASES, "jsb_chorales", release)


def test_the_download_is_checked_and_placed_in_the_cache(monkeypatch, offline):
    serve(monkeypatch, b"genuine")
    folder = sources.locate("jsb_chorales")
    assert folder == offline / "data" / "jsb_chorales"
    assert (folder / "jsb-chorales-quarter.json").read_bytes() == b"genuine"


def test_a_checksum_mismatch_leaves_nothing_in_the_cache(monkeypatch, offline):
    serve(monkeypatch, b"tampered")
    with pytest.raises(OSError, match="example.org/jsb.json: checksum mismatch.*discarded"):
        sources.locate("jsb_chorales")
    assert list((offline / "data").iterdir()) == []


def test_offline_the_download_error_says_where_to_put_the_file(monkeypatch, offline):
    def no_network(url, filename):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(sources.urllib.request, "urlretrieve", no_network)
    with pytest.raises(FileNotFoundError, match="jsb_chorales/jsb-chorales-quarter.json"):
        sources.locate("jsb_chorales")


def test_the_release_checksum_is_that_of_the_shared_copy(data_root):
    release = sources.FILE_RELEASES["jsb_chorales"]
    content = (data_root / "jsb_chorales" / release.name).read_bytes()
    assert hashlib.sha256(content).hexdigest() == release.sha256
    assert "czhuang/JSB-Chorales-dataset" in release.url


class KeyFrequencies(DVAE):
    """No latent: key k sounds with probability sigmoid(w_k) at every step, so the loss is the
    Bernoulli NLL per valid frame, known in closed form."""

    def __init__(self) -> None:
        super().__init__(88, 1, Bernoulli())
        self.logits = nn.Parameter(torch.linspace(-3.0, 1.0, 88))

    def model(self, x, kl_weight=1.0):
        with self.sequences(x):
            return self.observe(self.logits.expand(x.shape), x)

    def guide(self, x, kl_weight=1.0):
        with self.sequences(x):
            pass


def test_the_trainer_scores_padded_batches_per_valid_frame(tmp_path):
    """Batches of 3 chorales of different lengths (padding included): the trainer's training
    and validation losses are the NLL per valid frame over the whole split."""
    g = torch.Generator().manual_seed(0)
    rolls = [
        (torch.rand(n, 88, generator=g) < 0.1).numpy().astype(np.uint8)
        for n in (7, 3, 12, 5, 9, 4, 11)
    ]
    data = PianoRolls(rolls)
    model = KeyFrequencies()
    cfg = TrainConfig(epochs=1, batch_size=3, lr=1e-12, progress=False)
    trainer = Trainer(model, data, data, cfg, tmp_path, torch.device("cpu"))
    x = torch.cat([torch.from_numpy(r).float() for r in rolls])  # the 51 valid frames
    expected = nn.functional.binary_cross_entropy_with_logits(
        model.logits.detach().expand(x.shape), x, reduction="sum"
    ) / len(x)
    row = trainer.run_epoch(0)
    assert row["val_recon"] == pytest.approx(expected.item(), rel=1e-6) and row["val_kl"] == 0
    assert row["train_loss"] == pytest.approx(expected.item(), rel=1e-6)

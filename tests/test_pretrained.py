"""The pretrained zoo: every shipped entry reproduces its recorded row; the registry verifies,
fetches and refuses weights; ``experiments/zoo.py add`` writes entries that reproduce."""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pyro_dvae import pretrained, runner
from pyro_dvae.data.base import ROUNDING_INTERVALS
from pyro_dvae.records import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [name for name in pretrained.names() if pretrained.entry(name).ships]
IN_REPOSITORY = [name for name in pretrained.names() if pretrained.entry(name).in_repository]
SMOKE = "dkf-jsb-smoke"
LOGLIK = (*pretrained.MONTE_CARLO, "iwae_samples", "loglik_seconds")
"""The keys of a row that its importance-sampled pass (K = 2,000 for JSB: minutes) writes."""


def data_checksums(config: dict) -> dict:
    """The data layer's checksums of the folders that a run's ``config`` reads."""
    return pretrained.build_task_recorded(OmegaConf.create(config))[1]


def replay(item: pretrained.Entry, out_dir: Path) -> dict:
    """Evaluate ``item`` as its recorded row was made (posterior, mode and K of the row)."""
    row = item.results
    sample, mode = row["posterior"] == "sample", row["mode"]
    return pretrained.evaluate(item.name, out_dir, torch.device("cpu"), sample, 1, mode)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_entry_reproduces_its_row(name, request, tmp_path):
    item = pretrained.entry(name)
    if item.data:  # a simulated data set reads no files
        request.getfixturevalue("data_root")  # skips without $PYRO_DVAE_DATA
    assert data_checksums(item.config) == item.data
    results = replay(item, tmp_path)
    assert pretrained.differences(item, results) == []
    assert json.loads((tmp_path / "results.json").read_text()) == results


@pytest.mark.parametrize("name", IN_REPOSITORY)
def test_repository_entry_reproduces_its_row_but_the_sampled_bounds(name, data_root, tmp_path):
    """The weights committed to the repository load (their SHA-256 checked) and reproduce every
    value of the row that the posterior-mean pass gives; the bounds' K = 2,000 pass is left to
    ``evaluate.py pretrained=NAME`` (the closing notes give its line)."""
    item = pretrained.entry(name)
    assert data_checksums(item.config) == item.data
    results = pretrained.evaluate(
        name, tmp_path, torch.device("cpu"), False, 1, "teacher_forcing", 0
    )
    assert not set(LOGLIK) & set(results)
    recorded = {key: value for key, value in item.results.items() if key not in LOGLIK}
    assert pretrained.differences(dataclasses.replace(item, results=recorded), results) == []


def test_the_smoke_entry_ships_small():
    item = pretrained.entry(SMOKE)
    assert SMOKE in SHIPPED and item.weights["url"] is None
    assert item.weights["bytes"] == (pretrained.ZOO / f"{SMOKE}.pt").stat().st_size < 200_000
    assert sum(p.stat().st_size for p in pretrained.ZOO.glob("*.pt")) <= pretrained.SHIP_TOTAL_BYTES
    assert all(se > 0 for se in item.standard_errors.values())
    assert set(item.standard_errors) == set(pretrained.MONTE_CARLO)


@pytest.fixture
def zoo(tmp_path, monkeypatch) -> Path:
    """A zoo folder of its own holding a copy of the smoke entry, and an empty cache."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    for suffix in (".json", ".pt"):
        shutil.copy(pretrained.ZOO / f"{SMOKE}{suffix}", folder)
    monkeypatch.setattr(pretrained, "ZOO", folder)
    monkeypatch.setenv("PYRO_DVAE_CACHE", str(tmp_path / "cache"))
    return folder


def no_data(monkeypatch) -> None:
    def refuse(**_):
        raise AssertionError("data were read")

    monkeypatch.setattr(pretrained, "build_task", refuse)


def test_load_gives_the_weights_in_eval_mode_without_data(zoo, monkeypatch):
    no_data(monkeypatch)
    model = pretrained.load(SMOKE)
    saved = load_checkpoint(zoo / f"{SMOKE}.pt")["model"]
    assert not model.training and model.state_dict().keys() == saved.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_weights_with_another_sha_are_refused_naming_the_file(zoo):
    path = zoo / f"{SMOKE}.pt"
    data = bytearray(path.read_bytes())
    data[-30] ^= 1  # one bit of the file
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256") as err:
        pretrained.load(SMOKE)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unknown_name_lists_the_known_ones(zoo):
    with pytest.raises(ValueError, match=rf"pretrained='nope'.*\['{SMOKE}'\]"):
        pretrained.load("nope")


def host(zoo: Path, name: str, url: str) -> None:
    """Turn the zoo's copy of the smoke entry into the hosted entry ``name`` at ``url``."""
    item = json.loads((zoo / f"{SMOKE}.json").read_text())
    item.update(name=name, weights={**item["weights"], "url": url})
    (zoo / f"{name}.json").write_text(json.dumps(item))


@pytest.mark.parametrize("as_uri", [False, True])
def test_a_hosted_entry_is_fetched_verified_and_cached(zoo, tmp_path, monkeypatch, as_uri):
    no_data(monkeypatch)
    served = tmp_path / "server" / "weights.pt"
    served.parent.mkdir()
    shutil.move(zoo / f"{SMOKE}.pt", served)
    host(zoo, "hosted", served.as_uri() if as_uri else str(served))
    cached = tmp_path / "cache" / "zoo" / "hosted.pt"
    assert not cached.exists()
    first = pretrained.load("hosted")
    assert cached.read_bytes() == served.read_bytes()
    served.unlink()  # from now on the cached copy alone
    again = pretrained.load("hosted").state_dict()
    assert all(torch.equal(again[k], v) for k, v in first.state_dict().items())


def test_a_repository_entry_is_read_from_the_repository_not_the_working_directory(
    zoo, tmp_path, monkeypatch
):
    no_data(monkeypatch)
    repository = tmp_path / "clone"
    (repository / "zoo").mkdir(parents=True)
    shutil.move(zoo / f"{SMOKE}.pt", repository / "zoo" / "in-repo.pt")
    monkeypatch.setattr(pretrained, "REPOSITORY", repository)
    monkeypatch.chdir(tmp_path)  # where zoo/in-repo.pt is not
    host(zoo, "in-repo", "zoo/in-repo.pt")
    assert pretrained.entry("in-repo").in_repository
    saved = load_checkpoint(repository / "zoo" / "in-repo.pt")["model"]
    loaded = pretrained.load("in-repo").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())


def test_a_repository_entry_outside_a_clone_says_where_the_file_is(zoo, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "REPOSITORY", tmp_path / "site-packages")
    host(zoo, "in-repo", "zoo/in-repo.pt")
    with pytest.raises(FileNotFoundError) as err:
        pretrained.load("in-repo")
    message = str(err.value)
    assert "committed to the pyro-dvae repository as zoo/in-repo.pt" in message
    assert message.endswith(f"copy that file to {tmp_path / 'cache' / 'zoo' / 'in-repo.pt'}")


def test_a_hosted_download_with_another_sha_is_discarded(zoo, tmp_path):
    served = tmp_path / "other.pt"
    served.write_bytes((zoo / f"{SMOKE}.pt").read_bytes()[:-1])
    host(zoo, "hosted", str(served))
    with pytest.raises(OSError, match=rf"{served}: SHA-256 mismatch .*discarded"):
        pretrained.load("hosted")
    assert list((tmp_path / "cache" / "zoo").iterdir()) == []


def test_a_hosted_entry_offline_says_where_to_put_the_file(zoo, tmp_path):
    host(zoo, "hosted", str(tmp_path / "absent.pt"))
    with pytest.raises(FileNotFoundError, match=r"Offline\? Copy .* to .*cache/zoo/hosted\.pt"):
        pretrained.load("hosted")


def recorded(results: dict, standard_errors: dict | None = None) -> pretrained.Entry:
    """An entry that records only the row ``results`` (and ``standard_errors``)."""
    return pretrained.Entry(
        name="x",
        description="",
        x_dim=1,
        config={},
        data={},
        weights={},
        training={},
        made_with={},
        standard_errors=standard_errors or {},
        results=results,
    )


def test_differences_match_sampled_bounds_to_their_standard_error():
    row = {"nll_per_step": 10.0, "recon": 2.0, "steps": 5, "counts": {"a": {"n": 3}}}
    item = recorded({**row, "eval_seconds": 1.0}, {"nll_per_step": 0.01})
    allowed = 5 * math.sqrt(2) * 0.01
    same = {**item.results, "eval_seconds": 9.0}
    assert pretrained.differences(item, {**same, "nll_per_step": 10.0 + 0.99 * allowed}) == []
    assert pretrained.differences(item, {**same, "recon": 2.0 * (1 + 2**-24)}) == []
    changed = {
        **same,
        "nll_per_step": 10.0 - 1.01 * allowed,
        "recon": 2.0 * (1 + 2**-16),
        "steps": 6,
        "counts": {"a": {"n": 4}},
    }
    found = pretrained.differences(item, changed)
    assert [line.split(":")[0] for line in found] == [
        "counts.a.n",
        "nll_per_step",
        "recon",
        "steps",
    ]


def test_a_thresholded_metric_matches_within_its_range_under_rounding():
    """pixel_error recorded as 5 wrong pixels of 1,000, evaluated elsewhere as 6 with 2 pixels
    within rounding of ½: a match (5 lies in [4, 8]), but not with none (the plain rounding
    tolerance is far below one pixel) nor with the record at 3; the intervals themselves are
    not compared (a recorded row written before them has none)."""
    item = recorded({"pixel_error": 0.005, "steps": 5})
    moved = {"pixel_error": 0.006, "steps": 5}
    assert (
        pretrained.differences(item, {**moved, ROUNDING_INTERVALS: {"pixel_error": [0.004, 0.008]}})
        == []
    )
    assert [line.split(":")[0] for line in pretrained.differences(item, moved)] == ["pixel_error"]
    far = recorded({"pixel_error": 0.003, "steps": 5})
    assert pretrained.differences(
        far, {**moved, ROUNDING_INTERVALS: {"pixel_error": [0.004, 0.008]}}
    ) == ["pixel_error: 0.006, recorded 0.003 outside [0.004, 0.008]"]


def test_standard_errors_follow_the_formulas(monkeypatch):
    """Two sequences of 2 and 3 valid steps, K = 4 given log-weights each."""
    log_w = {0: torch.tensor([-1.0, -2.0, -4.0, -1.5]), 1: torch.tensor([-3.0, -3.5, -2.0, -6.0])}
    lengths = {0: 2, 1: 3}

    class Test:
        def __len__(self):
            return 2

        def batch(self, index):
            i = int(index)
            return torch.zeros(1, 3, 1), (torch.arange(3) < lengths[i])[None]

    class Task:
        test = Test()

    def fake_log_weights(model, x, K, mask, max_batch):
        return log_w[int(mask.sum()) - 2][:, None]

    monkeypatch.setattr(pretrained, "importance_log_weights", fake_log_weights)
    se = pretrained.standard_errors(None, Task(), 4, torch.device("cpu"))

    def var(values: list[float]) -> float:  # unbiased sample variance
        mean = sum(values) / len(values)
        return sum((v - mean) ** 2 for v in values) / (len(values) - 1)

    elbo = [var(log_w[i].tolist()) / 4 for i in (0, 1)]
    iwae = []
    for i in (0, 1):
        w = [math.exp(v) for v in log_w[i].tolist()]
        iwae.append(var([4 * v / sum(w) for v in w]) / 4)
    assert se["elbo_per_step"] == pytest.approx(math.sqrt(sum(elbo)) / 5, rel=1e-12)
    assert se["elbo_per_sequence_step"] == pytest.approx(
        math.sqrt(elbo[0] / 4 + elbo[1] / 9) / 2, rel=1e-12
    )
    assert se["nll_per_step"] == pytest.approx(math.sqrt(sum(iwae)) / 5, rel=1e-12)


def smoke_run(run_dir: Path) -> Path:
    """A run directory as the smoke entry was made from: config, best weights, results."""
    item = pretrained.entry(SMOKE)
    run_dir.mkdir()
    OmegaConf.save(OmegaConf.create(item.config), run_dir / "config.yaml")
    shutil.copy(pretrained.ZOO / f"{SMOKE}.pt", run_dir / "best.pt")
    (run_dir / "results.json").write_text(json.dumps(item.results))
    return run_dir


def test_add_reproduces_the_shipped_entry(data_root, zoo, tmp_path):
    shipped = pretrained.entry(SMOKE)
    added, path = pretrained.add("again", smoke_run(tmp_path / "run"), None, "d", tmp_path / "h")
    assert path == zoo / "again.pt" and path.read_bytes() == (zoo / f"{SMOKE}.pt").read_bytes()
    assert pretrained.entry("again") == added
    assert (added.weights, added.data, added.config) == (
        shipped.weights,
        shipped.data,
        shipped.config,
    )
    for key, se in shipped.standard_errors.items():
        assert added.standard_errors[key] == pytest.approx(se, rel=pretrained.rounding(1.0))
    assert not (tmp_path / "h").exists()


def fake_task(monkeypatch) -> None:
    """Adding without data: the smoke entry's data checksums, no standard errors to compute."""
    item = pretrained.entry(SMOKE)

    class Task:
        x_dim = item.x_dim

    monkeypatch.setattr(pretrained, "build_task_recorded", lambda cfg: (Task(), item.data))
    monkeypatch.setattr(pretrained, "standard_errors", lambda *args: item.standard_errors)


def test_add_with_a_url_is_hosted(zoo, tmp_path, monkeypatch):
    fake_task(monkeypatch)
    url = "https://example.org/zoo/h.pt"
    item, path = pretrained.add("h", smoke_run(tmp_path / "run"), url, "", tmp_path / "up")
    assert path == tmp_path / "up" / "h.pt" and not (zoo / "h.pt").exists()
    size = pretrained.entry(SMOKE).weights["bytes"]
    assert item.weights == {"sha256": pretrained.sha256_file(path), "bytes": size, "url": url}
    assert not item.ships and pretrained.entry("h").weights["url"] == url


def test_add_too_large_to_ship_says_to_host_it(zoo, tmp_path, monkeypatch):
    fake_task(monkeypatch)
    monkeypatch.setattr(pretrained, "SHIP_MAX_BYTES", pretrained.entry(SMOKE).weights["bytes"] - 1)
    with pytest.raises(ValueError, match=r"0\.08 MiB .* host .*up/big\.pt and add it with --url"):
        pretrained.add("big", smoke_run(tmp_path / "run"), None, "", tmp_path / "up")
    assert (tmp_path / "up" / "big.pt").is_file()
    assert "big" not in pretrained.names() and not (zoo / "big.pt").exists()


def test_add_refuses_a_run_evaluated_from_its_last_weights(zoo, tmp_path):
    run_dir = smoke_run(tmp_path / "run")
    results = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").write_text(json.dumps({**results, "checkpoint": "last"}))
    with pytest.raises(ValueError, match="checkpoint=last.*checkpoint=best"):
        pretrained.add("x", run_dir)


def evaluate_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "evaluate.py"), *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )


def test_cli_source_errors_are_one_line(tmp_path):
    done = evaluate_cli("pretrained=nope", f"hydra.run.dir={tmp_path / 'out'}")
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == (
        f"error: pretrained='nope': no such pretrained model; expected one of {pretrained.names()}"
    )
    assert not (tmp_path / "out").exists()
    done = evaluate_cli(f"run_dir={tmp_path}", f"pretrained={SMOKE}")
    assert done.returncode == 2 and "not both" in done.stderr.splitlines()[0]


def test_cli_evaluates_a_pretrained_model(data_root, tmp_path):
    out = tmp_path / "out"
    done = evaluate_cli(f"pretrained={SMOKE}", f"hydra.run.dir={out}", "device=cpu")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"pretrained {SMOKE}: reproduces its recorded row"
    results = json.loads((out / "results.json").read_text())
    assert pretrained.differences(pretrained.entry(SMOKE), results) == []
    assert results["epochs"] == pretrained.entry(SMOKE).results["epochs"]
    assert runner.markdown_row(results) == (out / "results.md").read_text()

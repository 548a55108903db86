"""Without the shared data the suite still passes, but it says how many tests skipped and why:
pytest runs (in this process, :mod:`pytester`) on three small tests under this conftest."""

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py").read_text()
TESTS = """
import pytest

def test_reads_data(data_root):
    assert data_root.is_dir()

def test_reads_data_too(data_root):
    pass

@pytest.mark.skipif(True, reason="no GPU")
def test_on_a_gpu():
    pass

def test_without_data():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_small=TESTS)
    return pytester


def _summary(suite: pytest.Pytester) -> list[str]:
    """The run's lines that count skipped tests, checking its outcome: all pass or skip."""
    result = suite.runpytest("-p", "no:cacheprovider")
    assert result.ret == 0
    return [line for line in result.outlines if " skipped: " in line]


def test_unset_data_variable_is_named_with_the_number_of_skips(suite, monkeypatch):
    monkeypatch.delenv("PYRO_DVAE_DATA", raising=False)
    assert _summary(suite) == [
        "2 tests skipped: PYRO_DVAE_DATA is not set (the shared data folder, e.g. ../shared/data)",
        "1 test skipped: no GPU",
    ]


def test_a_data_folder_that_does_not_exist_is_named(suite, monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_DVAE_DATA", str(tmp_path / "nowhere"))
    assert _summary(suite) == [
        f"2 tests skipped: PYRO_DVAE_DATA={tmp_path / 'nowhere'} is not a folder",
        "1 test skipped: no GPU",
    ]


def test_with_a_data_folder_only_the_other_skips_are_counted(suite, monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_DVAE_DATA", str(tmp_path))
    assert _summary(suite) == ["1 test skipped: no GPU"]

"""Where corpora come from: local roots, $PYRO_DVAE_DATA, and the verified download."""

import hashlib
import io
import tarfile
import urllib.error
from pathlib import Path

import pytest

from pyro_dvae.data import sources


def test_tree_digest_by_hand(tmp_path):
    (tmp_path / "b.wav").write_bytes(b"\x00\x01")
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "sub").mkdir()  # folders are not part of the digest
    h = hashlib.sha256()
    for name, content in [("a.txt", b"hello"), ("b.wav", b"\x00\x01")]:
        h.update(name.encode())
        h.update(hashlib.sha256(content).digest())
    assert sources.tree_digest(tmp_path) == h.hexdigest()


def test_locate_with_a_missing_root_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/fsdd"):
        sources.locate("fsdd", tmp_path)


def test_locate_finds_fsdd_under_the_root_and_the_environment(monkeypatch, data_root):
    assert sources.locate("fsdd", data_root) == data_root / "fsdd"
    monkeypatch.setenv("PYRO_DVAE_DATA", str(data_root))
    assert sources.locate("fsdd") == data_root / "fsdd"


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Path:
    """No local data and an empty cache; returns the cache folder."""
    monkeypatch.setenv("PYRO_DVAE_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("PYRO_DVAE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_corpus_without_a_download_says_where_to_put_it(offline):
    with pytest.raises(FileNotFoundError, match="asterisk_en_allison_16k.*PYRO_DVAE_DATA"):
        sources.locate("asterisk_en_allison_16k")


def test_offline_download_failure_is_a_clear_error(monkeypatch, offline):
    def no_network(url, filename):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(sources.urllib.request, "urlretrieve", no_network)
    with pytest.raises(FileNotFoundError, match="Could not download 'fsdd'.*Offline.*data.root"):
        sources.locate("fsdd")
    assert not (offline / "data" / "fsdd").exists()


def fake_release(monkeypatch, archive: bytes, digest: str) -> None:
    """Serve ``archive`` as the fsdd release with checksum ``digest``."""
    monkeypatch.setattr(sources.urllib.request, "urlretrieve",
                        lambda url, filename: Path(filename).write_bytes(archive))
    release = sources.Release("https://example.org/fsdd.tar.gz", "recordings", "recordings", digest)
    monkeypatch.setitem(sources.RELEASES, "fsdd", release)


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_download_is_verified_and_extracted_into_the_cache(monkeypatch, offline, tmp_path):
    recordings = tmp_path / "expected"
    recordings.mkdir()
    (recordings / "0_a_0.wav").write_bytes(b"fake")
    archive = tar_gz({"repo-26eb9aa/recordings/0_a_0.wav": b"fake", "repo-26eb9aa/README": b""})
    fake_release(monkeypatch, archive, sources.tree_digest(recordings))
    folder = sources.locate("fsdd")
    assert folder == offline / "data" / "fsdd"
    assert (folder / "recordings" / "0_a_0.wav").read_bytes() == b"fake"


def test_a_checksum_mismatch_discards_the_download(monkeypatch, offline):
    fake_release(monkeypatch, tar_gz({"repo/recordings/0_a_0.wav": b"tampered"}), "0" * 64)
    with pytest.raises(OSError, match="checksum mismatch"):
        sources.locate("fsdd")
    assert not (offline / "data" / "fsdd").exists()


def test_a_corrupt_download_is_a_clear_error(monkeypatch, offline):
    fake_release(monkeypatch, b"<html>rate limited</html>", "0" * 64)
    with pytest.raises(OSError, match="not a readable archive"):
        sources.locate("fsdd")

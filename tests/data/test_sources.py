"""Where corpora come from: local roots, $PYRO_DVAE_DATA, and the verified download."""

import hashlib
import io
import re
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


def test_tree_digest_covers_nested_files_and_links_and_equals_the_flat_rule(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"a")
    flat = sources.tree_digest(tmp_path)
    h = hashlib.sha256(b"a.wav" + hashlib.sha256(b"a").digest())
    assert flat == h.hexdigest()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.wav").write_bytes(b"b")
    nested = sources.tree_digest(tmp_path)
    h.update(b"sub/b.wav" + hashlib.sha256(b"b").digest())
    assert nested == h.hexdigest()
    (tmp_path / "sub" / "link.wav").symlink_to("../a.wav")  # hashed as a link, not followed
    h.update(b"sub/link.wav" + b"link:../a.wav")
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
    monkeypatch.setattr(
        sources.urllib.request,
        "urlretrieve",
        lambda url, filename: Path(filename).write_bytes(archive),
    )
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


@pytest.mark.parametrize("extra", [{}, {"repo/recordings/sub/extra.wav": b"unverified"}])
def test_a_checksum_mismatch_leaves_nothing_usable_in_the_cache(
    monkeypatch, offline, tmp_path, extra
):
    recordings = tmp_path / "expected"
    recordings.mkdir()
    (recordings / "0_a_0.wav").write_bytes(b"genuine")
    content = b"tampered" if not extra else b"genuine"  # or a genuine file and a nested extra
    archive = tar_gz({"repo/recordings/0_a_0.wav": content, **extra})
    fake_release(monkeypatch, archive, sources.tree_digest(recordings))
    with pytest.raises(OSError, match="checksum mismatch.*discarded"):
        sources.locate("fsdd")
    assert list((offline / "data").iterdir()) == []  # no fsdd, no temporary folder left over
    with pytest.raises(FileNotFoundError, match="No local copy of 'fsdd'"):
        sources.locate("fsdd", download=False)


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    """A tar member: a file, a folder, a link to ``link`` or a special file, per ``kind``."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def tar_of(members: list[tarfile.TarInfo], path: Path) -> Path:
    """Write ``members`` (files get the content ``evil``) to the tar ``path``."""
    with tarfile.open(path, "w") as tar:
        for info in members:
            info.size = 4 if info.isfile() else 0
            tar.addfile(info, io.BytesIO(b"evil") if info.isfile() else None)
    return path


UNSAFE = {  # name: (members, what the error names)
    "parent": ([member("../evil")], "../evil"),
    "nested parent": ([member("ok", tarfile.DIRTYPE), member("ok/../../evil")], "ok/../../evil"),
    "link outside": ([member("link", tarfile.SYMTYPE, "../outside")], "link"),
    "absolute link": ([member("link", tarfile.SYMTYPE, "/etc/passwd")], "link"),
    "link, then through it": ([member("d", tarfile.SYMTYPE, ".."), member("d/evil")], "d"),
    "hard link outside": ([member("hard", tarfile.LNKTYPE, "../evil")], "hard"),
    "device": ([member("dev", tarfile.CHRTYPE)], "dev"),
    "fifo": ([member("fifo", tarfile.FIFOTYPE)], "fifo"),
}


@pytest.fixture(params=["data filter", "fallback check"])
def extraction(request, monkeypatch) -> str:
    """Run a test with tarfile's ``data`` filter, and as on a Python without it."""
    if request.param == "fallback check":
        monkeypatch.delattr(sources.tarfile, "data_filter")
    return request.param


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_members_are_refused_and_nothing_lands_outside(tmp_path, extraction, case):
    members, named = UNSAFE[case]
    archive = tar_of(members, tmp_path / "archive.tar")
    dest = tmp_path / "a" / "b" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(sources.UnsafeArchiveError, match=re.escape(repr(named))):
        sources.extract_archive(archive, dest)
    outside = [p for p in tmp_path.rglob("*") if dest not in p.parents and p != dest]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in outside) == [
        "a",
        "a/b",
        "archive.tar",
    ]


def test_absolute_names_stay_inside_the_folder(tmp_path, extraction):
    archive = tar_of([member(str(tmp_path / "evil"))], tmp_path / "archive.tar")
    dest = tmp_path / "dest"
    dest.mkdir()
    if extraction == "fallback check":
        with pytest.raises(sources.UnsafeArchiveError, match="outside"):
            sources.extract_archive(archive, dest)
    else:  # the data filter strips the leading "/"
        sources.extract_archive(archive, dest)
        assert (dest / tmp_path.relative_to("/") / "evil").read_bytes() == b"evil"
    assert not (tmp_path / "evil").exists()


def test_a_plain_archive_extracts_with_both_checks(tmp_path, extraction):
    folders = [member("top", tarfile.DIRTYPE), member("top/sub", tarfile.DIRTYPE)]
    archive = tar_of([*folders, member("top/sub/a.wav")], tmp_path / "archive.tar")
    sources.extract_archive(archive, tmp_path / "dest")
    assert (tmp_path / "dest/top/sub/a.wav").read_bytes() == b"evil"


def test_an_unsafe_download_is_discarded_and_named(monkeypatch, offline, tmp_path, extraction):
    archive = tar_of(
        [member("repo/recordings/0_a_0.wav"), member("../../../evil")], tmp_path / "archive.tar"
    ).read_bytes()
    fake_release(monkeypatch, archive, "0" * 64)
    message = "https://example.org/fsdd.tar.gz: unsafe archive, member '../../../evil'"
    with pytest.raises(sources.UnsafeArchiveError, match=re.escape(message) + ".*discarded"):
        sources.locate("fsdd")
    assert list((offline / "data").iterdir()) == []
    assert [p for p in tmp_path.rglob("*evil*")] == []


def test_a_corrupt_download_is_a_clear_error(monkeypatch, offline):
    fake_release(monkeypatch, b"<html>rate limited</html>", "0" * 64)
    with pytest.raises(OSError, match="not a readable archive"):
        sources.locate("fsdd")

"""Where corpora come from: a local root, ``$PYRO_DVAE_DATA``, or a verified download.

A *data root* is a folder laid out like the project's shared data folder::

    ROOT/fsdd/recordings/*.wav
    ROOT/asterisk_en_allison_16k/audio/**/*.flac
    ROOT/cmu_mocap_expmap/{train,test}/<action>/<action>_<n>.txt
    ROOT/skeletons/{h36m_32,cmu_38}.json
    ROOT/jsb_chorales/jsb-chorales-quarter.json

:func:`locate` looks for ``ROOT/<subdir>`` in this order: the ``root`` argument (the
``data.root`` config key), the environment variable ``PYRO_DVAE_DATA``, the download cache
(``$PYRO_DVAE_CACHE``, default ``~/.cache/pyro_dvae``). Corpora with a public release are
downloaded into a temporary folder of the cache, extracted there with tarfile's ``"data"`` filter
(no absolute paths, no ``..``, no links leading outside, no device files; on a Python without it,
only plain files and folders inside the folder are accepted), verified by a checksum over their
files, and only then moved into place: a failed check leaves nothing in the cache.
Single-file corpora (:data:`FILE_RELEASES`) are checked by the SHA-256 of the file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ENV_DATA = "PYRO_DVAE_DATA"
ENV_CACHE = "PYRO_DVAE_CACHE"


def cache_dir() -> Path:
    """Folder of downloads and feature caches: ``$PYRO_DVAE_CACHE`` or ``~/.cache/pyro_dvae``."""
    return Path(os.environ.get(ENV_CACHE, Path.home() / ".cache" / "pyro_dvae")).expanduser()


@dataclass(frozen=True)
class Release:
    """A public archive whose extracted ``member`` folder becomes ``ROOT/<subdir>/<member_as>``.

    ``digest`` is :func:`tree_digest` of the extracted folder, so the check does not depend on
    how the host compresses the archive.
    """

    url: str
    member: str
    member_as: str
    digest: str


RELEASES: dict[str, Release] = {
    "fsdd": Release(
        url="https://github.com/Jakobovski/free-spoken-digit-dataset/archive/26eb9aa.tar.gz",
        member="recordings",
        member_as="recordings",
        digest="0fbe6612aaa20a80ef4371894a46e060038337a518fe3d4728cb7eee7caa013c",
    ),
}


@dataclass(frozen=True)
class FileRelease:
    """A public file that becomes ``ROOT/<subdir>/<name>``, checked by the SHA-256 of its bytes."""

    url: str
    name: str
    sha256: str


FILE_RELEASES: dict[str, FileRelease] = {
    "jsb_chorales": FileRelease(  # C.-Z. A. Huang's JSON of the Boulanger-Lewandowski split
        url="https://raw.githubusercontent.com/czhuang/JSB-Chorales-dataset/"
        "9a7f733ddb4ed91f48da64ac7f0f621c34aadd4d/jsb-chorales-quarter.json",
        name="jsb-chorales-quarter.json",
        sha256="2db9329f1881a1d3f49703ec556bf1d6f84b4f6c1d702c156536e93cf31e1c91",
    ),
}


class UnsafeArchiveError(OSError):
    """An archive member that would be written outside the extraction folder, or is neither a
    plain file nor a folder; the message names it."""


def tree_digest(folder: Path) -> str:
    """SHA-256 over everything below ``folder``, recursively, in sorted order of the paths relative
    to it: each file's path and the SHA-256 of its bytes; each link's path and its target text
    (links are not followed). Empty folders add nothing; for a flat folder, the paths are the file
    names."""
    h = hashlib.sha256()
    entries = sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix())
    for path in entries:
        if path.is_symlink():
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(b"link:" + os.readlink(path).encode())
        elif path.is_file():
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def check_member(member: tarfile.TarInfo, dest: Path) -> None:
    """The check of Pythons without ``tarfile.data_filter``: ``member`` must be a plain file or a
    folder whose path stays inside ``dest``.

    Raises:
        UnsafeArchiveError: naming the member and what is wrong with it.
    """
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"member {member.name!r} is a link or a special file")
    root = os.path.realpath(dest)
    if os.path.commonpath([root, os.path.realpath(os.path.join(root, member.name))]) != root:
        raise UnsafeArchiveError(f"member {member.name!r} would be written outside {dest}")


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract the tar ``archive`` (any compression) into the folder ``dest``, refusing members
    that would land outside it: tarfile's ``"data"`` filter where this Python has it, otherwise
    :func:`check_member` on every member before anything is written.

    Raises:
        UnsafeArchiveError: an unsafe member (a part of the archive may have been written into
            ``dest``; discard it).
        tarfile.TarError: not a readable archive.
    """
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            try:
                tar.extractall(dest, filter="data")
            except tarfile.FilterError as err:
                raise UnsafeArchiveError(f"member {err}") from err  # {err} starts with the name
        else:
            members = tar.getmembers()
            for member in members:
                check_member(member, dest)
            tar.extractall(dest, members=members)


def locate(subdir: str, root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Return the folder ``<root>/<subdir>``, downloading it into the cache if needed.

    Raises:
        FileNotFoundError: with instructions when no copy exists and none can be fetched.
    """
    if root is not None:
        path = Path(root).expanduser() / subdir
        if not path.is_dir():
            raise FileNotFoundError(
                f"data.root={root!s}: no folder {path}; expected a data root that holds '{subdir}/'"
            )
        return path
    candidates = [Path(os.environ[ENV_DATA]).expanduser()] if os.environ.get(ENV_DATA) else []
    candidates.append(cache_dir() / "data")
    for base in candidates:
        if (base / subdir).is_dir():
            return base / subdir
    if download and subdir in RELEASES:
        return fetch(subdir, cache_dir() / "data")
    if download and subdir in FILE_RELEASES:
        return fetch_file(subdir, cache_dir() / "data")
    looked = ", ".join(str(c / subdir) for c in candidates)
    raise FileNotFoundError(
        f"No local copy of '{subdir}' (looked in {looked}) and it has no public download here. "
        f"Point data.root=DIR or the environment variable {ENV_DATA} at a folder that holds "
        f"'{subdir}/'."
    )


def fetch(subdir: str, base: Path) -> Path:
    """Download ``RELEASES[subdir]`` into ``base/subdir``, verify it, and return that folder.

    Everything happens in a temporary folder below ``base``, removed on any failure; the verified
    folder is moved to ``base/subdir`` last.
    """
    release = RELEASES[subdir]
    target = base / subdir
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        archive = Path(tmp) / "archive.tar.gz"
        download(release.url, archive, subdir, f"{subdir}/")
        extracted = Path(tmp) / "extracted"
        extracted.mkdir()
        try:
            extract_archive(archive, extracted)
        except UnsafeArchiveError as err:
            raise UnsafeArchiveError(
                f"{release.url}: unsafe archive, {err}; the download was discarded"
            ) from err
        except tarfile.TarError as err:
            raise OSError(f"{release.url}: the download is not a readable archive ({err})") from err
        found = [p for p in extracted.glob(f"*/{release.member}") if p.is_dir()]
        if not found:
            raise FileNotFoundError(f"{release.url}: the archive has no '{release.member}' folder")
        digest = tree_digest(found[0])
        if digest != release.digest:
            raise OSError(
                f"{release.url}: checksum mismatch for '{release.member}' "
                f"(got {digest}, expected {release.digest}); the download was discarded"
            )
        staged = Path(tmp) / "staged"
        staged.mkdir()
        shutil.move(str(found[0]), staged / release.member_as)
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target


def fetch_file(subdir: str, base: Path) -> Path:
    """Download ``FILE_RELEASES[subdir]`` into ``base/subdir``, verify its SHA-256, and return
    that folder. As :func:`fetch`: a temporary folder below ``base``, removed on any failure."""
    release = FILE_RELEASES[subdir]
    target = base / subdir
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        staged = Path(tmp) / "staged"
        staged.mkdir()
        path = staged / release.name
        download(release.url, path, subdir, f"{subdir}/{release.name}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != release.sha256:
            raise OSError(
                f"{release.url}: checksum mismatch (got {digest}, expected {release.sha256}); "
                "the download was discarded"
            )
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target


def download(url: str, path: Path, subdir: str, expected: str) -> None:
    """Fetch ``url`` into ``path``; offline or unreachable, a clear error that says where a
    local copy (``expected``, below a data root) would be looked for."""
    try:
        urllib.request.urlretrieve(url, path)
    except OSError as err:
        raise FileNotFoundError(
            f"Could not download '{subdir}' from {url} ({err}). Offline? Point "
            f"data.root=DIR or {ENV_DATA} at a folder that holds '{expected}'."
        ) from err

"""The single-file ``.egopkg`` form of a model package: deterministic tar writing, safe extraction, cache.

An ``.egopkg`` is an uncompressed POSIX tar with one top-level ``<name>/`` folder, ``manifest.json`` first, then
the listed files, with fixed owners, modes and times. Extraction checks every member first and refuses absolute,
``..``, link, device and duplicate members. :mod:`egovlpv2_edge.package` re-exports the public names.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from egovlpv2_edge._package_errors import RECOPY as _RECOPY
from egovlpv2_edge._package_errors import MissingFileError, PackageError, UnsafeArchiveError

MANIFEST_FILE = "manifest.json"
ARCHIVE_SUFFIX = ".egopkg"
CHUNK = 1 << 20
STAMP_FILE = "source.json"


def unsafe_path(name: str) -> bool:
    """True for a path that is empty, absolute (POSIX or Windows) or climbs out with ``..``."""
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    return not parts or name.startswith(("/", "\\")) or "\\" in name or ".." in parts or ":" in parts[0]


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` through a temp file: fsync, rename over it, fsync the folder; nothing half-written is left."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # missing directory, or a platform that cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_tar(root: Path, top: str, files: Sequence[str], mtime: int, dest: Path) -> Path:
    """Write ``root/<files>`` as members ``<top>/<file>`` of a deterministic tar at ``dest``, atomically.

    Args:
        root: Folder the relative ``files`` are read from.
        top: The single top-level folder name of the members.
        files: Relative ``/``-separated paths, in member order.
        mtime: Modification time of every member (seconds since the epoch).
        dest: The archive path.

    Returns:
        ``dest``.
    """
    with atomic_file(dest) as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in files:
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size, info.mtime, info.mode = (root / rel).stat().st_size, mtime, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(root / rel, "rb") as f:
                tar.addfile(info, f)
    return dest


def _check_members(archive: Path, members: list[tarfile.TarInfo]) -> str:
    """Reject unsafe members; returns the single top-level folder name."""
    seen, tops = set(), set()
    fix = "refusing to extract it; re-download/copy the archive from a trusted source"
    for m in members:
        if unsafe_path(m.name):
            raise UnsafeArchiveError(f"archive {str(archive)!r} member {m.name!r} is absolute or has '..'; {fix}")
        if not (m.isreg() or m.isdir()):
            kind = "symlink" if m.issym() else "hard link" if m.islnk() else "special file"
            raise UnsafeArchiveError(f"archive {str(archive)!r} member {m.name!r} is a {kind}; {fix}")
        parts = [p for p in PurePosixPath(m.name).parts if p != "."]
        if len(parts) == 1 and not m.isdir():
            raise PackageError(f"archive {str(archive)!r} has file {m.name!r} outside a package folder; {_RECOPY}")
        key = "/".join(parts)
        if key in seen and not m.isdir():
            raise UnsafeArchiveError(f"archive {str(archive)!r} has member {m.name!r} twice; {fix}")
        seen.add(key)
        tops.add(parts[0])
    if len(tops) != 1:
        raise PackageError(
            f"archive {str(archive)!r} must hold exactly one top-level package folder, found {sorted(tops)}; {_RECOPY}"
        )
    return tops.pop()


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, EOFError) as err:
        raise PackageError(f"{str(archive)!r} is not a readable {ARCHIVE_SUFFIX} archive ({err}); {_RECOPY}") from err


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Safely extract an ``.egopkg`` into ``dest``; returns the package directory inside it.

    Every member is checked before anything is written: absolute paths, ``..``, links, special files and
    duplicates raise :class:`UnsafeArchiveError`.
    """
    archive, dest = Path(archive), Path(dest)
    with _open_tar(archive) as tar:
        try:
            members = tar.getmembers()
            top = _check_members(archive, members)
            for m in members:
                target = dest.joinpath(*[p for p in PurePosixPath(m.name).parts if p != "."])
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(target, "xb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, out, CHUNK)
        except (tarfile.TarError, EOFError) as err:
            raise PackageError(f"archive {str(archive)!r} is truncated or corrupt ({err}); {_RECOPY}") from err
    return dest / top


def archive_manifest_bytes(archive: Path) -> bytes:
    with _open_tar(archive) as tar:
        try:
            members = tar.getmembers()
            top = _check_members(archive, members)
            member = next(
                (m for m in members if m.name in (f"{top}/{MANIFEST_FILE}", f"./{top}/{MANIFEST_FILE}")), None
            )
            if member is None:
                raise MissingFileError(f"archive {str(archive)!r} has no {top}/{MANIFEST_FILE}; {_RECOPY}")
            return tar.extractfile(member).read()  # type: ignore[union-attr]
        except (tarfile.TarError, EOFError) as err:
            raise PackageError(f"archive {str(archive)!r} is truncated or corrupt ({err}); {_RECOPY}") from err


def cached_root(cache: Path, stamp: str) -> Path | None:
    try:
        data = json.loads((cache / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    root = cache / str(data.get("root", ""))
    return root if data.get("manifest_sha256") == stamp and root.parent == cache and root.is_dir() else None


def extract_to_cache(archive: Path, cache: Path, stamp: str) -> Path:
    """Extract into a staging folder beside ``cache``, then swap it in with renames."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        root = extract_archive(archive, staging)
        stamp_data = json.dumps({"manifest_sha256": stamp, "root": root.name, "archive": archive.name})
        (staging / STAMP_FILE).write_text(stamp_data + "\n")
        if cache.exists():
            old = cache.with_name(f".{cache.name}.old-{os.getpid()}")
            os.replace(cache, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(staging, cache)
        except OSError:  # another process put its extraction there first: use it if it is this archive's
            if cached_root(cache, stamp) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache / root.name

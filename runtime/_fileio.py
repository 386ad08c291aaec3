"""Durable file primitives shared by the runtime: fsync of files and directories, atomic replace.

A rename is atomic on POSIX file systems, but it is only durable once the directory that holds the new name
is fsynced too; every helper here does both so callers can rely on "after return, the file survives a crash
or power loss with either its old or its new content".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TMP_SUFFIX = ".tmp"  # suffix of files that are being written; a reopen deletes leftovers


def fsync_dir(path: str | Path) -> None:
    """Flush a directory entry table so that renames, creations and deletions in it are durable.

    Args:
        path: Directory to flush.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # platforms (Windows) that cannot open directories: nothing to flush
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` through a fsynced temp file and ``os.replace``.

    Args:
        path: Destination file.
        data: Full new content.
        sync_dir: Also fsync the parent directory (skip when the caller does it once for many files).
    """
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)


def atomic_save_npy(path: str | Path, array: np.ndarray, *, sync_dir: bool = True) -> int:
    """Save ``array`` as ``.npy`` atomically (temp file + fsync + ``os.replace``).

    Args:
        path: Destination ``.npy`` file.
        array: Array to save; object arrays are refused (no pickles on disk).
        sync_dir: Also fsync the parent directory.

    Returns:
        Size of the written file in bytes.
    """
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
        size = f.tell()
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)
    return size

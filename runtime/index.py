"""On-device clip index: cosine top-k over clip embeddings, persisted crash-safely in one directory.

The design follows NanoDB (dusty-nv/NanoDB): a flat, brute-force index whose directory holds ``config.json``
(schema version, dim, dtype, metric), the per-item metadata and a raw file of fixed-size fp16/fp32 rows that
search memory-maps. Retrieval is a dot product because EgoVLPv2 (arXiv 2307.05463, Sec. 3) run as a dual
encoder (fusion gated off) embeds clips and text into one space. Two changes make it fit a wearable device
that loses power without warning:

* metadata lives in SQLite (WAL) instead of ``metadata.json``, so a batch insert is one transaction;
* the vector file carries a generation number, so retention can compact it with no window of data loss.

On-disk layout::

    <index>/config.json          {"schema_version": 1, "dim": D, "dtype": "float16", "metric": "cosine"}
    <index>/meta.sqlite          clips(id, row, source, start_ts, end_ts, created, thumbnail, extra, ...)
                                 and state(generation, next_id)
    <index>/vectors.<gen>.bin    row r = L2-normalised embedding of the clip whose ``row`` is r (dense 0..n-1)
    <index>/tokens/<id>.npy      cached transformer tokens of the newest ``max_token_clips`` clips
    <index>/index.lock           flock held while a ClipIndex has the directory open

Crash safety rests on one invariant: every file the database references is durable *before* the transaction
that references it commits, and a file is deleted only *after* the transaction that stops referencing it.

* ``add`` writes token files atomically (temp + fsync + ``os.replace``), appends the vector rows at row ``n``
  and fsyncs them, and only then commits the rows. A crash before the commit leaves rows past ``n`` and
  unreferenced token files; ``open`` truncates the rows and deletes the files.
* ``apply_retention`` copies the kept rows to ``vectors.<gen+1>.bin`` (temp + fsync + rename), then one
  transaction deletes the old clips, renumbers the kept rows and sets ``generation = gen + 1``; the old vector
  file and token files are removed after the commit. ``open`` deletes every vector file whose generation is
  not the committed one, so a crash at any step reopens as either the old or the new index.
* ``PRAGMA synchronous=FULL`` (not NORMAL): with NORMAL a WAL commit can roll back on power loss, and the
  steps above delete files right after a commit; a rolled-back commit would then reference a deleted vector
  or token file. FULL costs one fsync per commit, small next to one commit per clip every few seconds.

Thread model: one writer (``add``, ``apply_retention``, serialised by a lock) and any number of ``search``
threads. The writer publishes an immutable snapshot (row count, memory map, row->id/time/source arrays) after
each commit; a search works on the snapshot it read, so it never blocks the writer and never sees a row that
is not committed. Clips a concurrent retention deleted are left out of that search's hits.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from egovlpv2_edge.runtime._fileio import TMP_SUFFIX, atomic_save_npy, atomic_write_bytes, fsync_dir
from egovlpv2_edge.runtime._index_db import connect, read_state, transaction, try_lock_dir
from egovlpv2_edge.runtime._topk import CHUNK_ROWS, candidate_rows, topk

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DTYPES = ("float16", "float32")
METRIC = "cosine"
_CONFIG = "config.json"
_DB = "meta.sqlite"
_TOKENS = "tokens"
_LOCK = "index.lock"
_VECTOR_RE = re.compile(r"^vectors\.(\d+)\.bin(\.tmp)?$")
_SQL_BATCH = 500  # ids per "IN (...)" query, below SQLite's host-parameter limit


class IndexFormatError(ValueError):
    """The directory holds an index this code cannot use (other dim/dtype/schema) or a corrupt one."""


class IndexLockedError(RuntimeError):
    """Another ClipIndex (in this or another process) has the directory open."""


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: int  # clip id returned by ClipIndex.add
    score: float  # cosine similarity in [-1, 1]
    start: float  # clip start, seconds on the source's clock
    end: float  # clip end, seconds on the source's clock
    source: str  # source name given to add
    thumbnail: bytes | None  # JPEG bytes, if stored
    extra: dict[str, Any] | None  # JSON metadata, if stored


@dataclass(frozen=True)
class IndexStats:
    """Size and time span of an index."""

    count: int  # number of clips
    bytes: int  # vector_bytes + token_bytes + thumbnail_bytes (what retention's max_bytes bounds)
    vector_bytes: int
    token_bytes: int
    thumbnail_bytes: int
    token_clips: int  # clips whose tokens are cached
    oldest_ts: float | None  # smallest start_ts (source clock)
    newest_ts: float | None  # largest end_ts (source clock)
    oldest_created: float | None  # wall time of the oldest insert
    newest_created: float | None  # wall time of the newest insert
    generation: int  # vector-file generation (bumped by each compaction)


@dataclass(frozen=True)
class _Snapshot:
    """What a search sees: committed state only. Arrays are shared with the writer, valid up to ``n``."""

    generation: int
    n: int  # committed rows
    vectors: np.ndarray | None  # (n, D) read-only memmap of vectors.<generation>.bin
    search_vectors: np.ndarray | None  # (n, D) float32 rows that searches score (the memmap itself when float32)
    ids: np.ndarray  # (capacity,) int64, row -> clip id
    start: np.ndarray  # (capacity,) float64
    end: np.ndarray  # (capacity,) float64
    source: np.ndarray  # (capacity,) int32 source code
    has_tokens: np.ndarray  # (capacity,) bool, the clip's tokens are cached (cleared in place when dropped)
    source_codes: Mapping[str, int]


@dataclass
class _Batch:
    """Validated input of one add call (B clips)."""

    vectors: np.ndarray  # (B, D) normalised, index dtype
    start: list[float]
    end: list[float]
    source: list[str]
    thumbnail: list[bytes | None]
    extra: list[str | None]  # JSON text
    tokens: list[np.ndarray | None]


class ClipIndex:
    """Flat cosine index of clip embeddings with SQLite metadata; see the module docstring for the design.

    Open with :meth:`ClipIndex.open`; use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: Path, dim: int, dtype: str, *, max_token_clips: int) -> None:
        """Open an existing, validated index directory; use :meth:`ClipIndex.open` instead."""
        self.path = path
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.max_token_clips = max_token_clips
        self._row_bytes = dim * self.dtype.itemsize
        self._write_lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._closed = False
        self._lock_fd = try_lock_dir(path / _LOCK)
        if self._lock_fd is None:
            raise IndexLockedError(f"clip index '{path}' is already open (by this or another process); close it first")
        try:
            self._db = connect(path / _DB)
            self._rdb = connect(path / _DB, query_only=True)
            self._vec_fd = -1
            self._f32: np.ndarray | None = None  # float32 copy of fp16 rows for scoring, grown by doubling
            self._f32_rows, self._f32_gen = 0, -1
            self._recover()
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------ opening and recovery
    @classmethod
    def open(
        cls,
        path: str | Path,
        dim: int,
        *,
        dtype: str = "float16",
        create: bool = True,
        max_token_clips: int = 32,
    ) -> ClipIndex:
        """Open the index in directory ``path``, creating it if needed, and recover from any crash.

        Args:
            path: Index directory.
            dim: Embedding dimension D; must equal the stored one for an existing index.
            dtype: Storage dtype of the vectors, one of ``DTYPES``; must equal the stored one.
            create: Create a missing index; otherwise a missing index raises ``FileNotFoundError``.
            max_token_clips: How many of the newest clips keep their cached tokens (0 keeps none).

        Returns:
            The open index. Ids continue after the highest id ever assigned.

        Raises:
            IndexFormatError: The directory holds an index of another dim/dtype/schema, or a corrupt one.
            IndexLockedError: The index is already open.
        """
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; choose one of {DTYPES}")
        if max_token_clips < 0:
            raise ValueError(f"max_token_clips must be >= 0, got {max_token_clips}")
        path = Path(path)
        config_path = path / _CONFIG
        if not config_path.exists():
            if not create:
                raise FileNotFoundError(f"no clip index at '{path}' (missing {_CONFIG}); pass create=True to make one")
            path.mkdir(parents=True, exist_ok=True)
            config = {"schema_version": SCHEMA_VERSION, "dim": int(dim), "dtype": dtype, "metric": METRIC}
            atomic_write_bytes(config_path, json.dumps(config, indent=2).encode())
            logger.info("created clip index at %s (dim=%d, dtype=%s)", path, dim, dtype)
        _check_config(config_path, int(dim), dtype)
        (path / _TOKENS).mkdir(exist_ok=True)
        return cls(path, int(dim), dtype, max_token_clips=max_token_clips)

    def _recover(self) -> None:
        """Bring files in line with the last committed transaction and load the search snapshot."""
        db = self._db
        generation = read_state(db, "generation")
        n, max_row, max_id = db.execute("SELECT COUNT(*), MAX(row), MAX(id) FROM clips").fetchone()
        if n and max_row != n - 1:
            raise IndexFormatError(f"index '{self.path}' is corrupt: {n} clips but highest row {max_row}")
        self._next_id = max(read_state(db, "next_id"), (max_id + 1) if max_id is not None else 0)
        self._generation = generation
        self._remove_stale_vector_files(generation)
        vec_path = self._vector_path(generation)
        self._vec_fd = os.open(vec_path, os.O_RDWR | os.O_CREAT, 0o644)
        size, want = os.fstat(self._vec_fd).st_size, n * self._row_bytes
        if size < want:
            raise IndexFormatError(
                f"index '{self.path}' is corrupt: {vec_path.name} has {size // self._row_bytes} rows but the "
                f"metadata references {n}; restore from a backup or delete the index"
            )
        if size > want:
            logger.info("dropping %d uncommitted vector bytes from %s", size - want, vec_path.name)
            os.ftruncate(self._vec_fd, want)
            os.fsync(self._vec_fd)
        self._recover_tokens()
        self._load_snapshot(n)

    def _remove_stale_vector_files(self, generation: int) -> None:
        for p in self.path.iterdir():
            m = _VECTOR_RE.match(p.name)
            if m and (m.group(2) or int(m.group(1)) != generation):
                logger.info("removing vector file %s left by an interrupted compaction", p.name)
                p.unlink(missing_ok=True)
        fsync_dir(self.path)

    def _recover_tokens(self) -> None:
        """Delete token files no committed clip references; forget references whose file is missing."""
        tokens_dir = self.path / _TOKENS
        referenced = {r[0] for r in self._db.execute("SELECT id FROM clips WHERE token_bytes > 0")}
        present = set()
        for p in tokens_dir.iterdir():
            stem = p.name[: -len(".npy")] if p.name.endswith(".npy") else None
            if stem is not None and stem.isdigit() and int(stem) in referenced:
                present.add(int(stem))
            else:
                p.unlink(missing_ok=True)
        missing = referenced - present
        if missing:
            logger.warning("%d token files missing from %s; their clips keep no tokens", len(missing), tokens_dir)
            with transaction(self._db):
                self._db.executemany("UPDATE clips SET token_bytes = 0 WHERE id = ?", [(i,) for i in missing])
        if len(present) > self.max_token_clips:
            with transaction(self._db):
                stale = self._drop_old_tokens()
            _unlink_tokens(tokens_dir, stale)

    def _load_snapshot(self, n: int) -> None:
        rows = self._db.execute("SELECT id, start_ts, end_ts, source, token_bytes FROM clips ORDER BY row").fetchall()
        self._source_codes: dict[str, int] = {}
        capacity = max(64, n)
        self._ids = np.zeros(capacity, np.int64)
        self._start = np.zeros(capacity, np.float64)
        self._end = np.zeros(capacity, np.float64)
        self._source = np.zeros(capacity, np.int32)
        self._has_tokens = np.zeros(capacity, bool)
        for r, (clip_id, start, end, source, token_bytes) in enumerate(rows):
            self._ids[r], self._start[r], self._end[r], self._has_tokens[r] = clip_id, start, end, token_bytes > 0
            self._source[r] = self._source_codes.setdefault(source, len(self._source_codes))
        self._publish(n)

    def _publish(self, n: int) -> None:
        """Map the committed rows and make them visible to searches (a single reference assignment)."""
        vectors = None
        if n:
            path = self._vector_path(self._generation)
            vectors = np.memmap(path, dtype=self.dtype, mode="r", shape=(n, self.dim))
        self._snap = _Snapshot(
            self._generation,
            n,
            vectors,
            self._search_rows(vectors, n),
            self._ids,
            self._start,
            self._end,
            self._source,
            self._has_tokens,
            MappingProxyType(dict(self._source_codes)),
        )

    def _search_rows(self, vectors: np.ndarray | None, n: int) -> np.ndarray | None:
        """The float32 rows searches score: the memmap for a float32 index, else an in-memory float32 copy.

        Converting fp16 rows on every search costs ~10x the matmul, so new rows are converted once, when they
        are published (4 * D bytes of RAM per clip). Rows below an older snapshot's ``n`` are never rewritten
        in place: growth allocates a new buffer and a compaction (new generation) starts a new one.
        """
        if vectors is None or self.dtype == np.float32:
            return vectors
        if self._f32_gen != self._generation or n < self._f32_rows:
            self._f32, self._f32_rows, self._f32_gen = None, 0, self._generation
        if self._f32 is None or self._f32.shape[0] < n:
            grown = np.empty((max(1024, 2 * n), self.dim), np.float32)
            if self._f32 is not None:
                grown[: self._f32_rows] = self._f32[: self._f32_rows]
            self._f32 = grown
        for s in range(self._f32_rows, n, CHUNK_ROWS):
            e = min(s + CHUNK_ROWS, n)
            self._f32[s:e] = vectors[s:e]
        self._f32_rows = n
        return self._f32[:n]

    def _vector_path(self, generation: int) -> Path:
        return self.path / f"vectors.{generation}.bin"

    # ------------------------------------------------------------------ writing
    def add(
        self,
        embedding: np.ndarray,
        start: float | Sequence[float],
        end: float | Sequence[float],
        source: str | Sequence[str],
        thumbnail: bytes | np.ndarray | Sequence[bytes | None] | None = None,
        extra: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        tokens: np.ndarray | Sequence[np.ndarray | None] | None = None,
    ) -> list[int]:
        """Insert one clip ``(D,)`` or a batch ``(B, D)`` in one transaction.

        Per-clip arguments take one value for the batch or a sequence of B values.

        Args:
            embedding: Clip embedding(s); L2-normalised here before storing.
            start: Clip start in seconds on the source's clock.
            end: Clip end in seconds (>= start).
            source: Name of the video source.
            thumbnail: JPEG bytes of a preview frame (or the uint8 buffer ``cv2.imencode`` returns).
            extra: JSON-serialisable metadata.
            tokens: Cached transformer tokens, e.g. ``(1 + F*N, C)`` float16 for one clip, or ``(B, ...)`` /
                a sequence of B arrays (None entries allowed) for a batch. Only the newest
                ``max_token_clips`` clips keep them.

        Returns:
            The ids of the inserted clips, in order.
        """
        batch = self._prepare(embedding, start, end, source, thumbnail, extra, tokens)
        with self._write_lock:
            self._check_open()
            count = batch.vectors.shape[0]
            ids = list(range(self._next_id, self._next_id + count))
            n = self._snap.n
            token_bytes: dict[int, int] = {}
            try:
                token_bytes = self._write_tokens(ids, batch.tokens)
                os.pwrite(self._vec_fd, batch.vectors.tobytes(), n * self._row_bytes)
                os.fsync(self._vec_fd)
                stale = self._commit_add(ids, n, batch, token_bytes)
            except BaseException:
                os.ftruncate(self._vec_fd, n * self._row_bytes)
                _unlink_tokens(self.path / _TOKENS, token_bytes)
                raise
            self._next_id += count
            self._append_columns(ids, batch, token_bytes)
            self._has_tokens[np.searchsorted(self._ids[: n + count], stale)] = False  # ids ascend with rows
            self._publish(n + count)
            _unlink_tokens(self.path / _TOKENS, stale)
        return ids

    def _write_tokens(self, ids: list[int], tokens: list[np.ndarray | None]) -> dict[int, int]:
        """Write the token files the newest ``max_token_clips`` clips of this batch keep; return their sizes."""
        written: dict[int, int] = {}
        keep_from = len(ids) - self.max_token_clips
        try:
            for i, (clip_id, tok) in enumerate(zip(ids, tokens, strict=True)):
                if tok is not None and i >= keep_from:
                    path = self.path / _TOKENS / f"{clip_id}.npy"
                    written[clip_id] = atomic_save_npy(path, tok, sync_dir=False)
            if written:
                fsync_dir(self.path / _TOKENS)
        except BaseException:
            _unlink_tokens(self.path / _TOKENS, written)
            raise
        return written

    def _commit_add(self, ids: list[int], n: int, batch: _Batch, token_bytes: dict[int, int]) -> list[int]:
        """Commit the clip rows (and the token cap); return the ids whose token files are now stale."""
        now = time.time()
        rows = [
            (
                clip_id,
                n + i,
                batch.source[i],
                batch.start[i],
                batch.end[i],
                now,
                batch.thumbnail[i],
                len(batch.thumbnail[i] or b""),
                batch.extra[i],
                token_bytes.get(clip_id, 0),
            )
            for i, clip_id in enumerate(ids)
        ]
        with transaction(self._db):
            self._db.executemany("INSERT INTO clips VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("UPDATE state SET value = ? WHERE key = 'next_id'", (ids[-1] + 1,))
            return self._drop_old_tokens()

    def _drop_old_tokens(self) -> list[int]:
        """Inside a transaction: unmark tokens beyond the newest ``max_token_clips``; return those ids."""
        stale = [
            r[0]
            for r in self._db.execute(
                "SELECT id FROM clips WHERE token_bytes > 0 ORDER BY id DESC LIMIT -1 OFFSET ?",
                (self.max_token_clips,),
            )
        ]
        self._db.executemany("UPDATE clips SET token_bytes = 0 WHERE id = ?", [(i,) for i in stale])
        return stale

    def _append_columns(self, ids: list[int], batch: _Batch, token_bytes: Mapping[int, int]) -> None:
        """Write the new rows' search columns past ``n`` (invisible until published), growing if needed."""
        n, count = self._snap.n, len(ids)
        if n + count > self._ids.shape[0]:
            capacity = max(2 * self._ids.shape[0], n + count)
            # New arrays: searches holding the old snapshot keep reading the old ones.
            self._ids, self._start, self._end, self._source, self._has_tokens = (
                np.concatenate([a[:n], np.zeros(capacity - n, a.dtype)])
                for a in (self._ids, self._start, self._end, self._source, self._has_tokens)
            )
        self._ids[n : n + count] = ids
        self._has_tokens[n : n + count] = [clip_id in token_bytes for clip_id in ids]
        self._start[n : n + count] = batch.start
        self._end[n : n + count] = batch.end
        for i, name in enumerate(batch.source):
            self._source[n + i] = self._source_codes.setdefault(name, len(self._source_codes))

    def _prepare(
        self,
        embedding: np.ndarray,
        start: float | Sequence[float],
        end: float | Sequence[float],
        source: str | Sequence[str],
        thumbnail: bytes | np.ndarray | Sequence[bytes | None] | None,
        extra: dict[str, Any] | Sequence[dict[str, Any] | None] | None,
        tokens: np.ndarray | Sequence[np.ndarray | None] | None,
    ) -> _Batch:
        """Validate and normalise add()'s arguments (see add for their meaning)."""
        emb = np.asarray(embedding, dtype=np.float64)
        if emb.ndim not in (1, 2) or emb.shape[-1] != self.dim or emb.size == 0:
            raise ValueError(f"embedding must have shape ({self.dim},) or (B, {self.dim}), got {emb.shape}")
        single = emb.ndim == 1
        emb = emb.reshape(-1, self.dim)  # (B, D)
        count = emb.shape[0]
        norms = np.linalg.norm(emb, axis=1)
        bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
        if bad.size:
            raise ValueError(f"embedding row {int(bad[0])} is zero or not finite; cannot L2-normalise it")
        starts = [float(v) for v in _per_clip(start, count, "start", (int, float, np.number))]
        ends = [float(v) for v in _per_clip(end, count, "end", (int, float, np.number))]
        for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
            if not (math.isfinite(s) and math.isfinite(e) and e >= s):
                raise ValueError(f"clip {i}: need finite start <= end, got start={s}, end={e}")
        sources = [str(v) for v in _per_clip(source, count, "source", (str,))]
        if isinstance(thumbnail, np.ndarray) and thumbnail.dtype == np.uint8:  # cv2.imencode's (N, 1) buffer
            thumbnail = thumbnail.tobytes()
        thumbs = _per_clip(thumbnail, count, "thumbnail", (bytes, bytearray, memoryview))
        thumbs = [None if t is None else t.tobytes() if isinstance(t, np.ndarray) else bytes(t) for t in thumbs]
        extras = [_to_json(v, i) for i, v in enumerate(_per_clip(extra, count, "extra", (dict,)))]
        if tokens is None:
            toks: list[np.ndarray | None] = [None] * count
        elif single and isinstance(tokens, np.ndarray):
            toks = [tokens]
        else:
            toks = [None if t is None else np.asarray(t) for t in _per_clip(tokens, count, "tokens", ())]
        vectors = (emb / norms[:, None]).astype(self.dtype)  # (B, D)
        return _Batch(vectors, starts, ends, sources, thumbs, extras, toks)

    # ------------------------------------------------------------------ retention
    def apply_retention(
        self, max_age_s: float | None = None, max_bytes: int | None = None, now: float | None = None
    ) -> int:
        """Delete the oldest clips and compact the vector file.

        Age is measured on the ``created`` wall time of the insert, not on ``end_ts``: source timestamps are
        relative to each source (file position, capture clock since the first frame) and are not comparable
        with wall time or across sources. "Oldest" for the byte budget means earliest ``created``.

        Args:
            max_age_s: Delete clips inserted more than this many seconds before ``now``.
            max_bytes: Then delete oldest clips until vectors + cached tokens + thumbnails fit in this many
                bytes (SQLite's own pages are not counted).
            now: Reference wall time (``time.time()`` when None).

        Returns:
            The number of clips deleted.
        """
        if max_age_s is not None and not max_age_s >= 0:
            raise ValueError(f"max_age_s must be >= 0 seconds or None, got {max_age_s}")
        if max_bytes is not None and not max_bytes >= 0:
            raise ValueError(f"max_bytes must be >= 0 or None, got {max_bytes}")
        now = time.time() if now is None else float(now)
        with self._write_lock:
            self._check_open()
            victims = self._select_victims(max_age_s, max_bytes, now)
            if victims:
                self._compact(victims)
        return len(victims)

    def _select_victims(self, max_age_s: float | None, max_bytes: int | None, now: float) -> set[int]:
        rows = self._db.execute("SELECT id, created, thumb_bytes + token_bytes FROM clips ORDER BY created, id")
        rows = rows.fetchall()
        victims = set()
        if max_age_s is not None:
            victims = {clip_id for clip_id, created, _ in rows if created < now - max_age_s}
        if max_bytes is not None:
            sizes = {clip_id: self._row_bytes + other for clip_id, _, other in rows}
            total = sum(size for clip_id, size in sizes.items() if clip_id not in victims)
            for clip_id, _, _ in rows:
                if total <= max_bytes:
                    break
                if clip_id not in victims:
                    victims.add(clip_id)
                    total -= sizes[clip_id]
        return victims

    def _compact(self, victims: set[int]) -> None:
        """Rewrite the kept rows as the next generation, commit the switch, then delete the old files."""
        snap = self._snap
        keep = np.flatnonzero(~np.isin(snap.ids[: snap.n], np.fromiter(victims, np.int64)))  # kept old rows
        old_gen, new_gen = self._generation, self._generation + 1
        new_path = self._vector_path(new_gen)
        tmp_path = new_path.with_name(new_path.name + TMP_SUFFIX)
        try:
            with open(tmp_path, "wb") as f:
                for s in range(0, keep.size, CHUNK_ROWS):
                    f.write(np.ascontiguousarray(snap.vectors[keep[s : s + CHUNK_ROWS]]).tobytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path, new_path)
            fsync_dir(self.path)
            renumber = [(new, int(snap.ids[old])) for new, old in enumerate(keep) if new != old]
            with transaction(self._db):
                self._db.executemany("DELETE FROM clips WHERE id = ?", [(i,) for i in victims])
                self._db.executemany("UPDATE clips SET row = ? WHERE id = ?", renumber)  # ascending: no clash
                self._db.execute("UPDATE state SET value = ? WHERE key = 'generation'", (new_gen,))
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            new_path.unlink(missing_ok=True)
            raise
        new_fd = os.open(new_path, os.O_RDWR)
        os.close(self._vec_fd)
        self._vec_fd, self._generation = new_fd, new_gen
        self._ids, self._start, self._end, self._source, self._has_tokens = (
            np.concatenate([a[keep], np.zeros(max(64, keep.size) - keep.size, a.dtype)])
            for a in (self._ids, self._start, self._end, self._source, self._has_tokens)
        )
        self._publish(int(keep.size))
        self._vector_path(old_gen).unlink(missing_ok=True)
        _unlink_tokens(self.path / _TOKENS, sorted(victims))
        fsync_dir(self.path)
        self._db.execute("PRAGMA incremental_vacuum")  # give freed thumbnail pages back to the file system
        logger.info("retention deleted %d clips; %d left (generation %d)", len(victims), keep.size, new_gen)

    # ------------------------------------------------------------------ reading
    def search(
        self,
        query: np.ndarray,
        k: int = 5,
        since: float | None = None,
        until: float | None = None,
        source: str | None = None,
        tokens_only: bool = False,
    ) -> list[list[Hit]]:
        """Cosine top-k over the committed clips, optionally restricted in time, source and cached tokens.

        A clip matches the time filter when it overlaps ``[since, until]`` (``end_ts >= since`` and
        ``start_ts <= until``), on the source's clock. Safe to call from any thread while another adds.

        Args:
            query: One query ``(D,)`` or a batch ``(Q, D)``; normalised here.
            k: Hits per query (fewer when fewer clips match).
            since: Keep clips ending at or after this time.
            until: Keep clips starting at or before this time.
            source: Keep clips of this source only.
            tokens_only: Keep clips whose tokens are cached (candidates for the fused layers).

        Returns:
            One list of hits per query, best first (each empty when nothing matches or the index is empty).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = np.asarray(query, dtype=np.float32)
        if q.ndim not in (1, 2) or q.shape[-1] != self.dim:
            raise ValueError(f"query must have shape ({self.dim},) or (Q, {self.dim}), got {q.shape}")
        q = q.reshape(-1, self.dim)  # (Q, D)
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise ValueError("query rows must be finite and non-zero")
        q = q / norms
        self._check_open()
        snap = self._snap
        rows = candidate_rows(snap, since, until, source, tokens_only)
        if snap.n == 0 or (rows is not None and rows.size == 0):
            return [[] for _ in range(q.shape[0])]
        top_rows, top_scores = topk(snap.search_vectors, rows, q, int(k))  # (Q, k'), (Q, k')
        meta = self._fetch(np.unique(snap.ids[top_rows]).tolist())
        results = []
        for qi in range(q.shape[0]):
            hits = []
            for row, score in zip(top_rows[qi], top_scores[qi], strict=True):
                m = meta.get(int(snap.ids[row]))
                if m is not None:  # None: deleted by a retention that ran after this snapshot
                    hits.append(Hit(m[0], float(score), m[2], m[3], m[1], m[4], json.loads(m[5]) if m[5] else None))
            results.append(hits)
        return results

    def _fetch(self, ids: list[int]) -> dict[int, tuple]:
        out = {}
        with self._read_lock:
            self._check_open()
            for s in range(0, len(ids), _SQL_BATCH):
                part = ids[s : s + _SQL_BATCH]
                sql = "SELECT id, source, start_ts, end_ts, thumbnail, extra FROM clips WHERE id IN ({})"
                for r in self._rdb.execute(sql.format(",".join("?" * len(part))), part):
                    out[r[0]] = r
        return out

    def get_vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """The stored (normalised) embeddings of the given clips as float32 ``(D,)`` arrays.

        Args:
            ids: Clip ids.

        Returns:
            ``{id: vector}`` for the ids that are committed (deleted or unknown ids are left out).
        """
        self._check_open()
        snap = self._snap
        if snap.n == 0 or snap.search_vectors is None:
            return {}
        rows = np.flatnonzero(np.isin(snap.ids[: snap.n], np.asarray([int(i) for i in ids], np.int64)))
        return {int(snap.ids[r]): np.array(snap.search_vectors[r], np.float32) for r in rows}

    def get_tokens(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Load the cached tokens of the given clips.

        Args:
            ids: Clip ids.

        Returns:
            ``{id: tokens}`` for the ids whose tokens are still cached (older clips are left out).
        """
        self._check_open()
        out: dict[int, np.ndarray] = {}
        for clip_id in ids:
            try:
                out[int(clip_id)] = np.load(self.path / _TOKENS / f"{int(clip_id)}.npy", allow_pickle=False)
            except FileNotFoundError:
                continue
        return out

    def stats(self) -> IndexStats:
        """Counts, sizes and time span of the committed clips."""
        with self._read_lock:
            self._check_open()
            row = self._rdb.execute(
                "SELECT COUNT(*), COALESCE(SUM(token_bytes), 0), COALESCE(SUM(thumb_bytes), 0), "
                "COALESCE(SUM(token_bytes > 0), 0), MIN(start_ts), MAX(end_ts), MIN(created), MAX(created) "
                "FROM clips"
            ).fetchone()
            generation = read_state(self._rdb, "generation")
        count, token_bytes, thumb_bytes, token_clips, oldest_ts, newest_ts, oldest_created, newest_created = row
        vector_bytes = count * self._row_bytes
        return IndexStats(
            count=count,
            bytes=vector_bytes + token_bytes + thumb_bytes,
            vector_bytes=vector_bytes,
            token_bytes=token_bytes,
            thumbnail_bytes=thumb_bytes,
            token_clips=token_clips,
            oldest_ts=oldest_ts,
            newest_ts=newest_ts,
            oldest_created=oldest_created,
            newest_created=newest_created,
            generation=generation,
        )

    def __len__(self) -> int:
        return self._snap.n

    def __contains__(self, clip_id: object) -> bool:
        if not isinstance(clip_id, (int, np.integer)):
            return False
        with self._read_lock:
            self._check_open()
            return self._rdb.execute("SELECT 1 FROM clips WHERE id = ?", (int(clip_id),)).fetchone() is not None

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Close the database, the vector file and the directory lock (idempotent)."""
        with self._write_lock, self._read_lock:
            if self._closed:
                return
            self._closed = True
            self._release()

    def _release(self) -> None:
        for name in ("_db", "_rdb"):
            conn = getattr(self, name, None)
            if conn is not None:
                conn.close()
        if getattr(self, "_vec_fd", -1) >= 0:
            os.close(self._vec_fd)
            self._vec_fd = -1
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"clip index '{self.path}' is closed; open it again with ClipIndex.open")

    def __enter__(self) -> ClipIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ClipIndex('{self.path}', dim={self.dim}, dtype={self.dtype.name}, clips={len(self)})"


# ---------------------------------------------------------------------- helpers
def _check_config(config_path: Path, dim: int, dtype: str) -> None:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"cannot read index config '{config_path}': {e}") from e
    version = config.get("schema_version")
    if version != SCHEMA_VERSION:
        raise IndexFormatError(
            f"index '{config_path.parent}' has schema version {version!r}; this code reads version "
            f"{SCHEMA_VERSION} only (upgrade egovlpv2-edge or rebuild the index)"
        )
    if config.get("dim") != dim or config.get("dtype") != dtype:
        raise IndexFormatError(
            f"index '{config_path.parent}' stores dim={config.get('dim')}, dtype={config.get('dtype')!r} but "
            f"dim={dim}, dtype={dtype!r} was requested; open it with the stored values or use another directory"
        )
    if config.get("metric") != METRIC:
        raise IndexFormatError(f"index metric {config.get('metric')!r} is not supported; only {METRIC!r}")


def _unlink_tokens(tokens_dir: Path, ids: Sequence[int] | Mapping[int, int]) -> None:
    for clip_id in ids:
        (tokens_dir / f"{clip_id}.npy").unlink(missing_ok=True)


def _per_clip(value: Any, count: int, name: str, scalar_types: tuple[type, ...]) -> list[Any]:
    """Broadcast one value to ``count`` clips or check a sequence has one value per clip."""
    if value is None or isinstance(value, scalar_types) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries for {count} embeddings; pass one per clip or one value")
    return values


def _to_json(extra: dict[str, Any] | None, i: int) -> str | None:
    if extra is None:
        return None
    if not isinstance(extra, dict):
        raise TypeError(f"extra of clip {i} must be a dict or None, got {type(extra).__name__}")
    try:
        return json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"extra of clip {i} is not JSON-serialisable: {e}") from e

"""SQLite side of the clip index: schema, connections (WAL, synchronous=FULL), transactions, directory lock.

See ``egovlpv2_edge.runtime.index`` for why the index commits this way.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

try:  # advisory lock so two processes never write one index; Jetson (Linux) always has fcntl
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms
    fcntl = None

SCHEMA = """
CREATE TABLE IF NOT EXISTS clips (
    id INTEGER PRIMARY KEY,          -- stable id, never reused (state.next_id)
    row INTEGER NOT NULL UNIQUE,     -- row in vectors.<generation>.bin
    source TEXT NOT NULL,
    start_ts REAL NOT NULL,          -- seconds on the source's clock
    end_ts REAL NOT NULL,
    created REAL NOT NULL,           -- wall time (time.time()) of the insert
    thumbnail BLOB,                  -- JPEG bytes or NULL
    thumb_bytes INTEGER NOT NULL DEFAULT 0,
    extra TEXT,                      -- JSON or NULL
    token_bytes INTEGER NOT NULL DEFAULT 0  -- size of tokens/<id>.npy; 0 = no cached tokens
);
CREATE INDEX IF NOT EXISTS clips_created ON clips (created, id);
CREATE INDEX IF NOT EXISTS clips_tokens ON clips (id) WHERE token_bytes > 0;
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO state (key, value) VALUES ('generation', 0), ('next_id', 0);
"""


def connect(db_path: Path, *, query_only: bool = False) -> sqlite3.Connection:
    """Open SQLite in WAL mode, synchronous=FULL (see ``runtime.index``), explicit transactions, schema created."""
    conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False, timeout=30.0)
    if query_only:
        conn.execute("PRAGMA query_only = ON")
        return conn
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new, empty database
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise RuntimeError(f"SQLite refused WAL mode for '{db_path}' (got {mode!r}); use a local file system")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\nCOMMIT;")
    return conn


class transaction:  # noqa: N801 - used like a function: ``with transaction(db):``
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        try:
            if exc_type is None:
                self.conn.execute("COMMIT")
        finally:
            if self.conn.in_transaction:  # an exception in the block, or a failed COMMIT
                self.conn.execute("ROLLBACK")


def read_state(conn: sqlite3.Connection, key: str) -> int:
    """Integer ``value`` of ``key`` in the state table (generation, next_id)."""
    return int(conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()[0])


def try_lock_dir(lock_path: Path) -> int | None:
    """Take an exclusive flock on ``lock_path``; return its descriptor (close it to unlock), None if held."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
    return fd

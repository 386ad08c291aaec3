"""ClipIndex survives SIGKILL at random moments and at chosen points inside writes and compactions.

A child process (``_index_crash_child.py``) streams adds and retention into one index and prints each
committed id; the test kills it, reopens the index and checks that every committed clip is there and
searchable with its own content, and that no stray or torn file is left. Rounds accumulate on one index.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from egovlpv2_edge.runtime.index import ClipIndex

_CHILD_PATH = Path(__file__).with_name("_index_crash_child.py")
_spec = importlib.util.spec_from_file_location("_index_crash_child", _CHILD_PATH)
child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(child)

# Kill points (None: a parent-side SIGKILL after a random delay) before and after each kind of durable step:
# token-file rename ("npy"), vector append (pwrite), fsyncs, and inside a compaction ("vectors"): before/after
# renaming the new vector file, and around unlinking the old generation after the commit.
ROUNDS = [
    None,
    "fsync:7:after",
    "replace:1:before:vectors",
    "pwrite:3:before",
    None,
    "pwrite:4:after",
    "replace:1:after:vectors",
    "fsync:23:before",
    None,
    "unlink:1:before:vectors",
    "replace:2:before:npy",
    "unlink:1:after:vectors",
    "replace:2:after:npy",
    None,
]


@dataclass
class _Expected:
    """What the printed events promise about the index."""

    keys: dict[int, int] = field(default_factory=dict)  # committed id -> content key
    max_id: int = -1
    retention_in_flight: bool = False


def _run_child(index_dir: Path, seed: int, kill_point: str | None, delay: float) -> list[str]:
    cmd = [sys.executable, str(_CHILD_PATH), str(index_dir), str(seed)] + ([kill_point] if kill_point else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        ready = proc.stdout.readline()
        assert ready == "READY\n", f"child did not start: {ready!r} {proc.stderr.read()}"
        if kill_point is None:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"child exited with {proc.returncode}: {err}"
    return out.split("\n")[:-1]  # the text after the last newline may be torn by the kill


def _apply_events(expected: _Expected, lines: list[str]) -> None:
    for line in lines:
        kind, *fields = line.split()
        if kind == "A":
            clip_id, key = int(fields[0]), int(fields[1])
            assert clip_id > expected.max_id, f"id {clip_id} reused (max so far {expected.max_id})"
            expected.keys[clip_id], expected.max_id = key, clip_id
        elif kind == "R":
            expected.retention_in_flight = True
        elif kind == "D":
            for clip_id in map(int, fields):
                del expected.keys[clip_id]
            expected.retention_in_flight = False


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _check_index(index_dir: Path, expected: _Expected) -> None:
    with ClipIndex.open(index_dir, child.DIM, max_token_clips=child.MAX_TOKEN_CLIPS) as ix:
        n = len(ix)
        probe = np.random.default_rng(n).normal(size=child.DIM)
        present = {h.id: h for h in ix.search(probe, k=n)[0]} if n else {}
        assert len(present) == n
        for h in present.values():  # every row's vector, thumbnail and metadata belong together
            emb, thumb, _ = child.clip_content(h.extra["key"])
            assert h.thumbnail == thumb
            assert abs(h.score - _unit(emb) @ _unit(probe)) < 2e-3, h
        missing = set(expected.keys) - set(present)
        if missing:  # only a retention cut short may have removed committed clips, and only the oldest
            assert expected.retention_in_flight, f"committed clips lost: {sorted(missing)}"
            assert max(missing) < min(set(expected.keys) & set(present), default=max(missing) + 1)
        unannounced = set(present) - set(expected.keys)  # committed just before the kill, not yet printed
        assert all(i > expected.max_id for i in unannounced) and len(unannounced) <= 3, unannounced
        kept = sorted(set(expected.keys) & set(present))
        if kept:
            queries = np.stack([child.clip_content(expected.keys[i])[0] for i in kept])
            tops = [row[0] for row in ix.search(queries, k=1)]
            assert [t.id for t in tops] == kept and min(t.score for t in tops) > 0.99
            assert all(present[i].extra["key"] == expected.keys[i] for i in kept)
        tokens = ix.get_tokens(list(present))
        assert len(tokens) <= child.MAX_TOKEN_CLIPS
        for clip_id, tok in tokens.items():
            np.testing.assert_array_equal(tok, child.clip_content(present[clip_id].extra["key"])[2])
        vector_files = sorted(p.name for p in index_dir.glob("vectors.*"))
        assert vector_files == [f"vectors.{ix.stats().generation}.bin"]
        assert (index_dir / vector_files[0]).stat().st_size == n * child.DIM * 2
        assert sorted(p.name for p in (index_dir / "tokens").iterdir()) == sorted(f"{i}.npy" for i in tokens)
    expected.keys = {i: h.extra["key"] for i, h in present.items()}
    expected.max_id = max([expected.max_id, *present])
    expected.retention_in_flight = False


def test_sigkill_never_loses_committed_clips(tmp_path: Path) -> None:
    index_dir = tmp_path / "ix"
    rng = np.random.default_rng(1234)
    expected = _Expected()
    killed_in_retention = 0
    for seed, kill_point in enumerate(ROUNDS):
        lines = _run_child(index_dir, seed, kill_point, delay=float(rng.uniform(0.05, 0.5)))
        _apply_events(expected, lines)
        killed_in_retention += expected.retention_in_flight
        if kill_point and kill_point.endswith(":vectors"):
            assert expected.retention_in_flight, f"{kill_point} should have fired inside a compaction"
        _check_index(index_dir, expected)
    assert expected.max_id > 50 and killed_in_retention >= 3

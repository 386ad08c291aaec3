"""ClipIndex: search correctness against brute force, filters, persistence, tokens, retention, threads."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from egovlpv2_edge.runtime.index import ClipIndex, IndexFormatError, IndexLockedError

DIM = 32


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference_topk(stored: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[list, list]:
    """Brute force over the vectors as stored (after dtype rounding)."""
    scores = stored.astype(np.float32) @ _unit(q).astype(np.float32).T  # (N, Q)
    out_ids, out_scores = [], []
    for qi in range(q.shape[0]):
        order = np.argsort(-scores[:, qi], kind="stable")[:k]
        out_ids.append(ids[order].tolist())
        out_scores.append(scores[order, qi])
    return out_ids, out_scores


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_search_matches_brute_force(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, DIM))
    with ClipIndex.open(tmp_path / "ix", DIM, dtype=dtype) as ix:
        ids = []
        for s in range(0, 300, 50):  # batched adds
            ids += ix.add(emb[s : s + 50], np.arange(s, s + 50.0), np.arange(s, s + 50.0) + 1, "cam")
        assert ids == list(range(300)) and len(ix) == 300
        q = rng.normal(size=(4, DIM))
        hits = ix.search(q, k=7)
    stored = _unit(emb).astype(dtype)
    ref_ids, ref_scores = _reference_topk(stored, np.arange(300), q, 7)
    assert [[h.id for h in row] for row in hits] == ref_ids
    for row, ref in zip(hits, ref_scores, strict=True):
        np.testing.assert_allclose([h.score for h in row], ref, atol=1e-5)
        assert all(h.start == h.id and h.end == h.id + 1 and h.source == "cam" for h in row)


def test_fp16_search_copy_grows_and_keeps_old_snapshots(tmp_path: Path) -> None:
    """fp16 rows are scored from a float32 copy that grows by reallocation: a search that started on an older
    snapshot still sees exactly its rows, and every new row is scored."""
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(2600, DIM))
    q = rng.normal(size=(2, DIM))
    with ClipIndex.open(tmp_path / "ix", DIM, dtype="float16") as ix:
        ix.add(emb[:700], np.arange(700.0), np.arange(700.0) + 1, "cam")
        old = ix._snap
        for s in range(700, 2600, 950):  # past the first buffer's 1,400 rows, then past the next one's
            ix.add(emb[s : s + 950], np.arange(s, s + 950.0), np.arange(s, s + 950.0) + 1, "cam")
        assert old.search_vectors.shape[0] == 700
        np.testing.assert_array_equal(old.search_vectors, _unit(emb[:700]).astype(np.float16).astype(np.float32))
        hits = ix.search(q, k=5)
    ref_ids, _ = _reference_topk(_unit(emb).astype(np.float16), np.arange(2600), q, 5)
    assert [[h.id for h in row] for row in hits] == ref_ids


def test_single_query_and_self_match(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(20, DIM))
    with ClipIndex.open(tmp_path / "ix", DIM) as ix:
        ix.add(emb, 0.0, 1.0, "cam", thumbnail=b"\xff\xd8jpeg", extra={"k": 1})
        (hits,) = ix.search(emb[5] * 3.0, k=3)  # query scale must not matter
        _, jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
        (clip_id,) = ix.add(emb[0], 5.0, 6.0, "cam", thumbnail=jpeg)  # imencode's (N, 1) uint8 buffer
        (hit,) = ix.search(emb[0], k=1, since=5.0)[0]
    assert hits[0].id == 5 and hits[0].score == pytest.approx(1.0, abs=2e-3)
    assert hits[0].thumbnail == b"\xff\xd8jpeg" and hits[0].extra == {"k": 1}
    assert hits[0].score >= hits[1].score >= hits[2].score
    assert hit.id == clip_id and hit.thumbnail == jpeg.tobytes() and hit.thumbnail[:2] == b"\xff\xd8"


def test_time_and_source_filters(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n = 60
    emb = rng.normal(size=(n, DIM))
    start = np.arange(n) * 2.0
    end = start + 2.0
    sources = ["left" if i % 3 else "right" for i in range(n)]
    with ClipIndex.open(tmp_path / "ix", DIM) as ix:
        ix.add(emb, start, end, sources)
        q = rng.normal(size=(2, DIM))
        stored = _unit(emb).astype(np.float16)
        cases = [
            (dict(since=50.0), end >= 50.0),
            (dict(until=30.0), start <= 30.0),
            (dict(since=20.0, until=40.0), (end >= 20.0) & (start <= 40.0)),
            (dict(source="right"), np.array(sources) == "right"),
            (dict(since=10.0, source="left"), (end >= 10.0) & (np.array(sources) == "left")),
        ]
        for kwargs, mask in cases:
            hits = ix.search(q, k=5, **kwargs)
            ref_ids, _ = _reference_topk(stored[mask], np.flatnonzero(mask), q, 5)
            assert [[h.id for h in row] for row in hits] == ref_ids, kwargs
        assert ix.search(q, k=5, source="nope") == [[], []]
        assert ix.search(q, k=5, since=1e9) == [[], []]
        assert len(ix.search(q[0], k=100, until=3.0)[0]) == 2  # fewer matches than k


def test_batch_arguments_broadcast_and_validate(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with ClipIndex.open(tmp_path / "ix", DIM) as ix:
        ids = ix.add(rng.normal(size=(3, DIM)), [0, 1, 2], [1, 2, 3], "cam", extra=[{"a": 1}, None, {"a": 3}])
        assert ids == [0, 1, 2]
        with pytest.raises(ValueError, match="start has 2 entries for 3 embeddings"):
            ix.add(rng.normal(size=(3, DIM)), [0, 1], 1.0, "cam")
        with pytest.raises(ValueError, match=r"shape \(32,\) or \(B, 32\)"):
            ix.add(rng.normal(size=(16,)), 0, 1, "cam")
        with pytest.raises(ValueError, match="zero or not finite"):
            ix.add(np.zeros(DIM), 0, 1, "cam")
        with pytest.raises(ValueError, match="start <= end"):
            ix.add(rng.normal(size=DIM), 5, 1, "cam")
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            ix.add(rng.normal(size=DIM), 0, 1, "cam", extra={"x": object()})
        assert len(ix) == 3 and ix.add(rng.normal(size=DIM), 0, 1, "cam") == [3]  # failed adds left no trace


def test_query_validation_and_empty_index(tmp_path: Path) -> None:
    with ClipIndex.open(tmp_path / "ix", DIM) as ix:
        assert ix.search(np.ones(DIM), k=3) == [[]]
        assert ix.search(np.ones((2, DIM)), k=3) == [[], []]
        with pytest.raises(ValueError, match="k must be a positive int, got 0"):
            ix.search(np.ones(DIM), k=0)
        with pytest.raises(ValueError, match=r"query must have shape \(32,\) or \(Q, 32\), got \(31,\)"):
            ix.search(np.ones(DIM - 1))
        assert ix.stats().count == 0 and ix.stats().oldest_ts is None


def test_reopen_persists_and_ids_continue(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(10, DIM))
    with ClipIndex.open(tmp_path / "ix", DIM) as ix:
        ix.add(emb[:6], 0, 1, "cam")
    with ClipIndex.open(tmp_path / "ix", DIM, create=False) as ix:
        assert len(ix) == 6
        assert ix.add(emb[6:], 0, 1, "cam") == [6, 7, 8, 9]
        assert [h.id for h in ix.search(emb[2], k=1)[0]] == [2]
    with ClipIndex.open(tmp_path / "ix", DIM) as ix:
        assert [h.id for h in ix.search(emb[8], k=1)[0]] == [8] and 9 in ix and 10 not in ix


def test_open_errors(tmp_path: Path) -> None:
    with ClipIndex.open(tmp_path / "ix", DIM) as ix:
        with pytest.raises(IndexLockedError, match="already open"):
            ClipIndex.open(tmp_path / "ix", DIM)
        ix.add(np.ones(DIM), 0, 1, "cam")
    with pytest.raises(IndexFormatError, match=r"stores dim=32, dtype='float16' but dim=64, dtype='float16'"):
        ClipIndex.open(tmp_path / "ix", 64)
    with pytest.raises(IndexFormatError, match=r"dtype='float16' but dim=32, dtype='float32'"):
        ClipIndex.open(tmp_path / "ix", DIM, dtype="float32")
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        ClipIndex.open(tmp_path / "ix", DIM, dtype="int8")
    with pytest.raises(FileNotFoundError, match="create=True"):
        ClipIndex.open(tmp_path / "missing", DIM, create=False)
    config = json.loads((tmp_path / "ix" / "config.json").read_text())
    (tmp_path / "ix" / "config.json").write_text(json.dumps({**config, "schema_version": 99}))
    with pytest.raises(IndexFormatError, match="schema version 99"):
        ClipIndex.open(tmp_path / "ix", DIM)


def test_tokens_keep_only_newest(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)

    def tok(i: int) -> np.ndarray:
        return np.full((5, 4), i, np.float16)  # (1 + F*N, C)

    with ClipIndex.open(tmp_path / "ix", DIM, max_token_clips=3) as ix:
        for i in range(4):
            ix.add(rng.normal(size=DIM), i, i + 1, "cam", tokens=tok(i))
        ix.add(rng.normal(size=(3, DIM)), 0, 1, "cam", tokens=np.stack([tok(4), tok(5), tok(6)]))
        ix.add(rng.normal(size=DIM), 0, 1, "cam")  # no tokens: does not evict
        got = ix.get_tokens(range(8))
        assert sorted(got) == [4, 5, 6]
        for i, t in got.items():
            np.testing.assert_array_equal(t, tok(i))
        assert sorted(p.name for p in (tmp_path / "ix" / "tokens").iterdir()) == ["4.npy", "5.npy", "6.npy"]
        assert ix.stats().token_clips == 3
    with ClipIndex.open(tmp_path / "ix", DIM, max_token_clips=1) as ix:  # lower cap applies on open
        assert sorted(ix.get_tokens(range(8))) == [6]


def test_retention_by_age_compacts(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    emb = rng.normal(size=(40, DIM))
    with ClipIndex.open(tmp_path / "ix", DIM) as ix:
        ix.add(emb[:25], np.arange(25.0), np.arange(25.0) + 1, "cam", tokens=np.zeros((25, 2, 2)))
        time.sleep(0.01)
        cutoff = time.time()
        time.sleep(0.01)
        ix.add(emb[25:], np.arange(25.0, 40), np.arange(26.0, 41), "cam", thumbnail=b"t")
        assert ix.apply_retention(max_age_s=3600.0) == 0  # nothing is that old
        assert ix.apply_retention(max_age_s=0.0, now=cutoff) == 25
        assert len(ix) == 15 and ix.stats().generation == 1
        assert sorted(p.name for p in (tmp_path / "ix").glob("vectors.*")) == ["vectors.1.bin"]
        assert ix.get_tokens(range(40)) == {}
        q = rng.normal(size=(3, DIM))
        ref_ids, _ = _reference_topk(_unit(emb[25:]).astype(np.float16), np.arange(25, 40), q, 4)
        assert [[h.id for h in row] for row in ix.search(q, k=4)] == ref_ids
        assert ix.add(emb[0], 0, 1, "cam") == [40]
    with ClipIndex.open(tmp_path / "ix", DIM) as ix:
        assert len(ix) == 16 and [h.id for h in ix.search(emb[30], k=1)[0]] == [30]
        assert [h.id for h in ix.search(emb[0], k=1)[0]] == [40]


def test_retention_by_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    emb = rng.normal(size=(30, DIM))
    row_bytes = DIM * 2
    with ClipIndex.open(tmp_path / "ix", DIM) as ix:
        ix.add(emb, np.arange(30.0), np.arange(30.0) + 1, "cam", thumbnail=b"x" * 100)
        per_clip = row_bytes + 100
        assert ix.stats().bytes == 30 * per_clip
        deleted = ix.apply_retention(max_bytes=10 * per_clip + 5)
        assert deleted == 20 and ix.stats().bytes == 10 * per_clip <= 10 * per_clip + 5
        assert (tmp_path / "ix" / "vectors.1.bin").stat().st_size == 10 * row_bytes
        assert 19 not in ix and 20 in ix  # the oldest went first
        q = rng.normal(size=(2, DIM))
        ref_ids, _ = _reference_topk(_unit(emb[20:]).astype(np.float16), np.arange(20, 30), q, 3)
        assert [[h.id for h in row] for row in ix.search(q, k=3)] == ref_ids
        assert ix.stats().oldest_ts == 20.0 and ix.stats().newest_ts == 30.0
        assert ix.apply_retention(max_bytes=0) == 10 and len(ix) == 0 and ix.search(q, k=1) == [[], []]
        with pytest.raises(ValueError, match="max_bytes must be >= 0"):
            ix.apply_retention(max_bytes=-1)


def test_recovery_drops_uncommitted_files(tmp_path: Path) -> None:
    """What a crash between the file writes and the commit leaves behind is cleaned on open."""
    rng = np.random.default_rng(8)
    emb = rng.normal(size=(3, DIM))
    with ClipIndex.open(tmp_path / "ix", DIM) as ix:
        ix.add(emb, 0, 1, "cam")
    root = tmp_path / "ix"
    with open(root / "vectors.0.bin", "ab") as f:
        f.write(b"\x01" * (DIM * 2 + 7))  # one uncommitted row plus a torn one
    (root / "tokens" / "3.npy").write_bytes(b"partial")
    (root / "vectors.1.bin.tmp").write_bytes(b"x")
    (root / "vectors.1.bin").write_bytes(b"x")
    with ClipIndex.open(root, DIM) as ix:
        assert len(ix) == 3 and (root / "vectors.0.bin").stat().st_size == 3 * DIM * 2
        assert not (root / "tokens" / "3.npy").exists() and not list(root.glob("vectors.1.*"))
        assert [h.id for h in ix.search(emb[1], k=1)[0]] == [1]
        assert ix.add(emb[0], 0, 1, "cam") == [3] and ix.get_tokens([3]) == {}


def test_concurrent_search_while_writing(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    emb = rng.normal(size=(400, DIM))
    stored = {i: _unit(e).astype(np.float16).astype(np.float64) for i, e in enumerate(emb)}
    errors: list[BaseException] = []
    done = threading.Event()

    def reader(seed: int) -> None:
        r = np.random.default_rng(seed)
        try:
            while not done.is_set():
                q = r.normal(size=(2, DIM))
                for qi, row in enumerate(ix.search(q, k=5, since=float(r.integers(0, 200)))):
                    scores = [h.score for h in row]
                    assert scores == sorted(scores, reverse=True)
                    for h in row:  # the row -> id mapping stays right through appends and compactions
                        assert abs(h.score - stored[h.id] @ _unit(q[qi])) < 2e-3, (h.id, h.score)
                        assert h.start == float(h.id)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)

    with ClipIndex.open(tmp_path / "ix", DIM) as ix:
        ix.add(emb[:10], np.arange(10.0), np.arange(10.0) + 1, "cam")
        readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
        for t in readers:
            t.start()
        try:
            for s in range(10, 400, 3):
                e = min(s + 3, 400)
                ix.add(emb[s:e], np.arange(s, e, dtype=float), np.arange(s, e, dtype=float) + 1, "cam")
                if s % 60 == 1:
                    ix.apply_retention(max_bytes=100 * DIM * 2)
        finally:
            done.set()
            for t in readers:
                t.join()
        assert not errors, errors[0]
        assert len(ix) <= 400 and 399 in ix

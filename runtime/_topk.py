"""Exact cosine top-k of the clip index in numpy: time/source filters over row columns, blockwise scoring."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

CHUNK_ROWS = 16384  # rows scored per matmul block: bounds the float32 copy of an fp16 block


class RowColumns(Protocol):
    """Per-row search columns of an index snapshot, valid up to ``n``."""

    n: int
    start: np.ndarray  # (>= n,) clip start per row
    end: np.ndarray  # (>= n,) clip end per row
    source: np.ndarray  # (>= n,) source code per row
    has_tokens: np.ndarray  # (>= n,) bool, tokens cached
    source_codes: Mapping[str, int]  # source name -> code


def candidate_rows(
    cols: RowColumns, since: float | None, until: float | None, source: str | None, tokens_only: bool = False
) -> np.ndarray | None:
    """Rows ``< n`` whose clip overlaps ``[since, until]``, comes from ``source`` and (optionally) has tokens.

    Args:
        cols: The row columns.
        since: Keep rows with ``end >= since``.
        until: Keep rows with ``start <= until``.
        source: Keep rows of this source.
        tokens_only: Keep rows whose tokens are cached.

    Returns:
        Ascending row numbers, or None when no filter is set (every row).
    """
    if since is None and until is None and source is None and not tokens_only:
        return None
    n = cols.n
    mask = np.ones(n, dtype=bool)
    if since is not None:
        mask &= cols.end[:n] >= since
    if until is not None:
        mask &= cols.start[:n] <= until
    if tokens_only:
        mask &= cols.has_tokens[:n]
    if source is not None:
        code = cols.source_codes.get(source)
        if code is None:
            return np.empty(0, np.int64)
        mask &= cols.source[:n] == code
    return np.flatnonzero(mask)


def topk(vectors: np.ndarray, rows: np.ndarray | None, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``q @ vectors[rows].T``, scored in blocks so an fp16 index is never copied whole.

    Args:
        vectors: (N, D) stored unit vectors (memmap).
        rows: Candidate rows, or None for all N.
        q: (Q, D) float32 unit queries.
        k: Hits per query.

    Returns:
        Rows and scores, each (Q, min(k, candidates)), best first; ties go to the older row.
    """
    Q = q.shape[0]
    m = vectors.shape[0] if rows is None else rows.size
    best_rows = np.empty((Q, 0), np.int64)
    best_scores = np.empty((Q, 0), np.float32)
    for s in range(0, m, CHUNK_ROWS):
        e = min(s + CHUNK_ROWS, m)
        block_rows = np.arange(s, e) if rows is None else rows[s:e]  # (b,)
        block = vectors[s:e] if rows is None else vectors[block_rows]  # (b, D)
        scores = q @ np.asarray(block, dtype=np.float32).T  # (Q, b)
        cat_scores = np.concatenate([best_scores, scores], axis=1)  # (Q, k + b)
        cat_rows = np.concatenate([best_rows, np.broadcast_to(block_rows, scores.shape)], axis=1)
        if cat_scores.shape[1] > k:
            part = np.argpartition(-cat_scores, k - 1, axis=1)[:, :k]  # (Q, k)
            cat_scores = np.take_along_axis(cat_scores, part, axis=1)
            cat_rows = np.take_along_axis(cat_rows, part, axis=1)
        best_scores, best_rows = cat_scores, cat_rows
    order = np.lexsort((best_rows, -best_scores), axis=-1)  # score desc, then older row first
    scores = np.clip(np.take_along_axis(best_scores, order, axis=1), -1.0, 1.0)  # fp16 rows are unit only to ~1e-3
    return np.take_along_axis(best_rows, order, axis=1), scores

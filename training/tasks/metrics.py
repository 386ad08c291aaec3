"""Task metrics in numpy: EK-100 MIR relevancy, mAP and nDCG; class-wise mAP; span IoU and R@k at IoU; QA accuracy.

Conventions follow the benchmarks' own evaluation code (reference §3):

* **EK-100 MIR** relevancy between a caption and a clip is the mean of the IoU of their verb-class sets and the
  IoU of their noun-class sets. mAP counts an item as relevant only when its relevancy is exactly 1; nDCG uses
  the relevancy as the gain with a ``log2(rank + 1)`` discount (rank from 1), truncated for each query at the
  number of items with non-zero relevancy, and is divided by the DCG of the ideal ordering.
* **Charades-Ego** mAP is the mean over classes (with at least one positive) of the average precision of
  ranking all clips by that class's score.
* **Ego4D NLQ** R@k at IoU m is the share of queries for which one of the top-k predicted windows has temporal
  IoU >= m with the ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "average_precision",
    "class_map",
    "mir_map",
    "mir_ndcg",
    "percent",
    "qa_accuracy",
    "qa_outcomes",
    "recall_at_iou",
    "recall_hits",
    "relevancy_matrix",
    "span_iou",
]


def _iou_sets(a: set[int], b: set[int]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def relevancy_matrix(
    row_verbs: Sequence[Sequence[int]],
    row_nouns: Sequence[Sequence[int]],
    col_verbs: Sequence[Sequence[int]] | None = None,
    col_nouns: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """EK-100 MIR relevancy ``(R, C)``: mean of verb-set IoU and noun-set IoU; columns default to the rows."""
    col_verbs = row_verbs if col_verbs is None else col_verbs
    col_nouns = row_nouns if col_nouns is None else col_nouns
    rv, rn = [set(v) for v in row_verbs], [set(n) for n in row_nouns]
    cv, cn = [set(v) for v in col_verbs], [set(n) for n in col_nouns]
    out = np.zeros((len(rv), len(cv)), dtype=np.float64)
    for i in range(len(rv)):
        for j in range(len(cv)):
            out[i, j] = 0.5 * (_iou_sets(rv[i], cv[j]) + _iou_sets(rn[i], cn[j]))
    return out


def _check_pair(sim: np.ndarray, rel: np.ndarray) -> None:
    if sim.ndim != 2 or sim.shape != rel.shape:
        raise ValueError(f"similarity {sim.shape} and relevancy {rel.shape} must be 2-D and of the same shape")


def mir_map(sim: np.ndarray, rel: np.ndarray) -> float:
    """Mean over rows of the average precision, relevant = relevancy exactly 1 (rows without any are skipped).

    Args:
        sim: Similarity ``(Q, N)``, one row per query.
        rel: Relevancy ``(Q, N)`` in [0, 1].
    """
    sim, rel = np.asarray(sim, dtype=np.float64), np.asarray(rel, dtype=np.float64)
    _check_pair(sim, rel)
    order = np.argsort(-sim, axis=1, kind="stable")
    hits = (np.take_along_axis(rel, order, axis=1) == 1).astype(np.float64)  # (Q, N) ranked
    n_rel = hits.sum(1)
    keep = n_rel > 0
    if not keep.any():
        raise ValueError("no query has an item of relevancy 1; mAP is undefined")
    precision = np.cumsum(hits, axis=1) / np.arange(1, sim.shape[1] + 1)
    ap = (precision * hits).sum(1)[keep] / n_rel[keep]
    return float(ap.mean())


def _dcg(scores: np.ndarray, rel: np.ndarray) -> np.ndarray:
    order = np.argsort(-scores, axis=1, kind="stable")
    gains = np.take_along_axis(rel, order, axis=1)  # (Q, N) ranked gains
    k = (rel > 0).sum(1, keepdims=True)  # only the first k retrievals count, k = number of relevant items
    mask = np.arange(rel.shape[1])[None, :] < k
    return (gains * mask / np.log2(np.arange(rel.shape[1]) + 2)).sum(1)


def mir_ndcg(sim: np.ndarray, rel: np.ndarray) -> float:
    """Mean nDCG over rows with any non-zero relevancy (gain = relevancy, cut at the number of relevant items)."""
    sim, rel = np.asarray(sim, dtype=np.float64), np.asarray(rel, dtype=np.float64)
    _check_pair(sim, rel)
    ideal = _dcg(rel, rel)
    keep = ideal > 0
    if not keep.any():
        raise ValueError("every relevancy is 0; nDCG is undefined")
    return float((_dcg(sim, rel)[keep] / ideal[keep]).mean())


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Non-interpolated AP of ranking items by ``scores`` (descending) against binary ``labels``.

    Raises:
        ValueError: Without any positive label.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if not labels.any():
        raise ValueError("no positive label; average precision is undefined")
    hits = labels[np.argsort(-scores, kind="stable")].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def class_map(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes (columns) with at least one positive of the AP over items (rows): ``(N, C)`` each."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be 2-D (items, classes) and equal")
    cols = [c for c in range(labels.shape[1]) if labels[:, c].any()]
    if not cols:
        raise ValueError("no class has a positive item; mAP is undefined")
    return float(np.mean([average_precision(scores[:, c], labels[:, c]) for c in cols]))


def span_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Temporal IoU of windows ``pred (..., 2)`` with ``gt (..., 2)`` (broadcast); zero-length union gives 0."""
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    inter = np.clip(np.minimum(pred[..., 1], gt[..., 1]) - np.maximum(pred[..., 0], gt[..., 0]), 0, None)
    union = np.maximum(pred[..., 1], gt[..., 1]) - np.minimum(pred[..., 0], gt[..., 0])
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def recall_at_iou(
    preds: Sequence[np.ndarray], gts: np.ndarray, ks: Sequence[int] = (1, 5), ious: Sequence[float] = (0.3, 0.5)
) -> dict[str, float]:
    """Ego4D NLQ recall: percent of queries with a top-k window of IoU >= m, for each k and m.

    Args:
        preds: Per query, its ranked windows ``(K_i, 2)`` in seconds (best first).
        gts: Ground-truth windows ``(Q, 2)``.
        ks: Cut-offs.
        ious: IoU thresholds.

    Returns:
        ``{"R@1 IoU=0.3": ..., ...}`` in percent.
    """
    return percent(recall_hits(preds, gts, ks, ious))


def percent(hits: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-item right/wrong arrays (:func:`recall_hits`, :func:`qa_outcomes`) to percent right (0 for none)."""
    return {name: 100.0 * float(hit.mean()) if hit.size else 0.0 for name, hit in hits.items()}


def recall_hits(
    preds: Sequence[np.ndarray], gts: np.ndarray, ks: Sequence[int] = (1, 5), ious: Sequence[float] = (0.3, 0.5)
) -> dict[str, np.ndarray]:
    """Per query, whether a top-k window reaches IoU >= m (what :func:`recall_at_iou` averages), for paired tests.

    Returns:
        ``{"R@1 IoU=0.3": bool array (Q,), ...}``.
    """
    gts = np.asarray(gts, dtype=np.float64).reshape(-1, 2)
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} queries")
    out = {}
    for m in ious:
        for k in ks:
            out[f"R@{k} IoU={m}"] = np.asarray([bool((span_iou(np.asarray(p)[:k].reshape(-1, 2), g) >= m).any())
                                                for p, g in zip(preds, gts, strict=True)], dtype=bool)  # fmt: skip
    return out


def qa_outcomes(
    pred: Sequence[int], answer: Sequence[int], types: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Per-question right/wrong overall (``"all"``) and per question type when ``types`` is given."""
    pred, answer = np.asarray(pred), np.asarray(answer)
    if pred.shape != answer.shape:
        raise ValueError(f"{pred.shape} predictions for {answer.shape} answers")
    if not len(pred):
        raise ValueError("no predictions; accuracy is undefined")
    right = pred == answer
    out = {"all": right}
    if types is not None:
        t = np.asarray(types)
        out |= {name: right[t == name] for name in sorted(set(t.tolist()))}
    return out


def qa_accuracy(pred: Sequence[int], answer: Sequence[int], types: Sequence[str] | None = None) -> dict[str, float]:
    """Percent correct overall (``"all"``) and per question type when ``types`` is given."""
    return percent(qa_outcomes(pred, answer, types))

"""Task metrics against hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest

from egovlpv2_edge.training.tasks.metrics import (
    average_precision,
    class_map,
    mir_map,
    mir_ndcg,
    qa_accuracy,
    recall_at_iou,
    recall_hits,
    relevancy_matrix,
    span_iou,
)


def test_relevancy_is_mean_of_verb_and_noun_iou() -> None:
    # clip 0: verb {1}, nouns {5, 7}; clip 1: verb {1}, nouns {5}; clip 2: verb {2}, nouns {8}
    rel = relevancy_matrix([[1], [1], [2]], [[5, 7], [5], [8]])
    # (0, 1): verb IoU 1, noun IoU 1/2 -> 0.75; (0, 2): 0; diagonal 1; symmetric
    assert rel[0, 1] == pytest.approx(0.75) and rel[1, 0] == pytest.approx(0.75)
    assert rel[0, 2] == 0 and np.allclose(np.diag(rel), 1.0)


def test_mir_map_by_hand() -> None:
    sim = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.9]])
    rel = np.array([[1.0, 0.5, 1.0], [0.0, 1.0, 0.0]])
    # row 0: ranking 0 (rel 1), 1 (0.5, not relevant for mAP), 2 (rel 1) -> AP = (1/1 + 2/3) / 2 = 5/6
    # row 1: ranking 2, 1 (rel 1), 0 -> AP = 1/2
    assert mir_map(sim, rel) == pytest.approx((5 / 6 + 1 / 2) / 2)


def test_mir_ndcg_by_hand() -> None:
    sim = np.array([[0.1, 0.9, 0.5]])
    rel = np.array([[1.0, 0.5, 0.0]])
    # two relevant items, so only the first 2 retrievals count: ranked gains 0.5, 0.0
    dcg = 0.5 / np.log2(2) + 0.0 / np.log2(3)
    idcg = 1.0 / np.log2(2) + 0.5 / np.log2(3)
    assert mir_ndcg(sim, rel) == pytest.approx(dcg / idcg)
    assert mir_ndcg(rel, rel) == pytest.approx(1.0)


def test_average_precision_and_class_map_by_hand() -> None:
    # ranking by score: item 2 (pos), 0 (neg), 1 (pos) -> AP = (1/1 + 2/3) / 2
    assert average_precision(np.array([0.5, 0.2, 0.9]), np.array([0, 1, 1])) == pytest.approx(5 / 6)
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.1, 0.2]])
    labels = np.array([[1, 0], [0, 1], [0, 0]], dtype=bool)
    # class 0: positive ranked first -> 1; class 1: item 1 ranked first (0.7 > 0.2 > 0.1) -> 1
    assert class_map(scores, labels) == pytest.approx(1.0)
    labels2 = np.array([[0, 0], [0, 1], [1, 0]], dtype=bool)
    # class 0: the positive (item 2) is ranked 3rd -> 1/3; class 1 -> 1; classes without positives are skipped
    assert class_map(scores, labels2) == pytest.approx((1 / 3 + 1) / 2)
    with pytest.raises(ValueError, match="no positive"):
        average_precision(np.array([0.1]), np.array([0]))


def test_span_iou_and_recall_at_iou_by_hand() -> None:
    assert span_iou(np.array([0.0, 4.0]), np.array([2.0, 6.0])) == pytest.approx(2 / 6)
    assert span_iou(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0
    preds = [np.array([[0.0, 4.0], [2.0, 6.0]]), np.array([[10.0, 12.0], [0.0, 1.0]])]
    gts = np.array([[2.0, 6.0], [11.0, 13.0]])
    r = recall_at_iou(preds, gts, ks=(1, 5), ious=(0.3, 0.5))
    # query 0: top-1 IoU 1/3 (>= 0.3, < 0.5), top-2 has IoU 1; query 1: top-1 IoU 1/3
    assert r["R@1 IoU=0.3"] == 100.0 and r["R@1 IoU=0.5"] == 0.0
    assert r["R@5 IoU=0.3"] == 100.0 and r["R@5 IoU=0.5"] == 50.0
    hits = recall_hits(preds, gts, ks=(1, 5), ious=(0.3, 0.5))  # the per-query outcomes behind them
    assert hits["R@5 IoU=0.5"].tolist() == [True, False] and hits["R@1 IoU=0.5"].tolist() == [False, False]
    with pytest.raises(ValueError, match="2 predictions for 1 queries"):
        recall_hits(preds, gts[:1])


def test_qa_accuracy_by_hand() -> None:
    acc = qa_accuracy([1, 2, 3, 3], [1, 0, 3, 4], ["order", "order", "count", "verb"])
    assert acc == {"all": 50.0, "count": 100.0, "order": 50.0, "verb": 0.0}
    with pytest.raises(ValueError):
        qa_accuracy([1], [1, 2])

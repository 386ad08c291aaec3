"""Evaluation metrics against hand-worked examples, and the EgoMCQ loop on a tiny dataset."""

from __future__ import annotations

import csv

import pytest
import torch

from egovlpv2_edge.training.evaluate import _reorder, _shuffle_frames, evaluate_egomcq, paired_drop, retrieval_ranks


def test_retrieval_ranks_by_hand() -> None:
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.4, 0.6], [0.3, 0.3, 0.3]])
    # row 0: own clip best -> 0; row 1: 0.6 and 0.5 above 0.4 -> 2; row 2: ties count against -> 2
    assert retrieval_ranks(sim).tolist() == [0, 2, 2]
    ranks = retrieval_ranks(sim)
    assert float((ranks < 1).float().mean()) == pytest.approx(1 / 3)


def test_shuffled_frames_are_a_real_permutation() -> None:
    video = torch.arange(4).float().view(1, 4, 1, 1, 1).expand(5, 4, 3, 2, 2)
    out = _shuffle_frames(video, torch.Generator().manual_seed(0))
    assert sorted(out[0, :, 0, 0, 0].tolist()) == [0, 1, 2, 3]
    assert out[0, :, 0, 0, 0].tolist() != [0, 1, 2, 3]
    assert torch.equal(out[0], out[4])  # every candidate gets the same permutation


def test_frame_controls_reorder_as_named() -> None:
    video = torch.arange(4).float().view(1, 4, 1, 1, 1).expand(5, 4, 3, 2, 2)
    gen = torch.Generator().manual_seed(0)
    assert _reorder(video, "reversed", gen)[0, :, 0, 0, 0].tolist() == [3, 2, 1, 0]
    assert torch.equal(_reorder(video, "in_order", gen), video)
    with pytest.raises(ValueError, match="unknown frame control.*valid: shuffled, reversed"):
        evaluate_egomcq(None, None, "nowhere", controls=["backwards"])


def test_paired_drop_by_hand() -> None:
    before = [1, 1, 1, 0, 1, 0, 1, 1]
    after = [1, 0, 0, 0, 1, 1, 0, 1]
    # differences 0 1 1 0 0 -1 1 0: mean 2/8 = 25 points; sample sd sqrt((4*(0.75^2 ... ) -> computed below
    d = [0, 1, 1, 0, 0, -1, 1, 0]
    mean = sum(d) / 8
    sd = (sum((x - mean) ** 2 for x in d) / 7) ** 0.5
    drop, half = paired_drop(before, after)
    assert drop == pytest.approx(25.0)
    assert half == pytest.approx(100 * 1.96 * sd / 8**0.5)
    assert paired_drop([1, 0, 1], [1, 0, 1]) == (0.0, 0.0)  # identical outcomes: no drop, no spread
    assert paired_drop([], []) == (0.0, 0.0)


def test_reverse_choice_needs_the_reverse_verb_on_the_same_object(tmp_path) -> None:
    from egovlpv2_edge.training.data.egoclip import ClipRecord, has_reverse_choice
    from egovlpv2_edge.training.data.taxonomy import reverse_verbs, write_taxonomy

    write_taxonomy(tmp_path)
    reverse = reverse_verbs(tmp_path)
    with (tmp_path / "verbs.csv").open(newline="") as fh:
        ids = {row["key"]: int(row["id"]) for row in csv.DictReader(fh)}
    assert reverse[ids["pick_up"]]["key"] == "put_down" and reverse[ids["open"]]["key"] == "close"
    assert ids["stir"] not in reverse and reverse_verbs(tmp_path / "none") == {}

    def clip(verb: str, noun: int) -> ClipRecord:
        return ClipRecord(
            0, "v", 60.0, "narration_pass_1", 0, 1.0, 0.5, 1.5, f"#C C {verb} {noun}", (ids[verb],), (noun,)
        )  # tuples, as read_egomcq gives them

    query = ClipRecord(0, "v", 60.0, "narration_pass_1", 0, 1.0, 0.5, 1.5, "#C C", [ids["pick_up"]], [3, 7])  # lists
    assert has_reverse_choice(query, [clip("stir", 3), clip("put_down", 3)], reverse)
    assert not has_reverse_choice(query, [clip("put_down", 4), clip("close", 3)], reverse)  # other object / verb
    assert not has_reverse_choice(clip("stir", 3), [clip("stir", 3)], reverse)  # no reverse at all

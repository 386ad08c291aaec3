"""The synthetic generator: determinism, splits, held-out pairs, EgoMCQ, action facts, motion."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from egovlpv2_edge.training.data.egoclip import MCQ_INTER, MCQ_INTRA, read_egoclip, read_egomcq
from egovlpv2_edge.training.data.synth import SynthConfig, generate_dataset, render_clip
from egovlpv2_edge.training.data.taxonomy import NOUNS, noun_by_key, verb_by_key
from egovlpv2_edge.training.data.video import ChunkedVideoStore

from .conftest import HOLDOUT, TINY, micro


def _all_frames(root: Path) -> list[np.ndarray]:
    store = ChunkedVideoStore(root / "videos", chunk_seconds=5)
    out = []
    for rec in {r.video_uid: r for r in read_egoclip(root / "egoclip.csv")}.values():
        out.append(store.read_frames(rec.video_uid, np.arange(0, rec.video_dur - 0.1, 0.1)))
    return out


def test_same_seed_same_files_and_frames(tmp_path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_dataset(a, micro(seed=5))
    generate_dataset(b, micro(seed=5))
    generate_dataset(c, micro(seed=6))
    for name in ("egoclip.csv", "egomcq.json", "actions.jsonl", "verbs.csv", "nouns.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    fa, fb = _all_frames(a), _all_frames(b)
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb, strict=True))
    assert (a / "egoclip.csv").read_bytes() != (c / "egoclip.csv").read_bytes()
    fc = _all_frames(c)
    assert not np.array_equal(fa[0][:10], fc[0][:10])


def test_counts_and_layout(tiny) -> None:
    meta = json.loads((tiny / "meta.json").read_text())
    recs = read_egoclip(tiny / "egoclip.csv")
    assert meta["counts"]["clips"] == len(recs) and meta["generator_version"]
    assert meta["fps"] == TINY.fps and meta["size"] == TINY.size and meta["chunk_seconds"] == TINY.chunk_seconds
    per_video = Counter(r.video_uid for r in recs)
    assert len(per_video) == TINY.videos
    assert all(TINY.min_actions <= n <= TINY.max_actions for n in per_video.values())
    for uid in per_video:
        assert (tiny / "videos" / uid / "0.mp4").is_file()
    for r in recs:
        assert 1.5 <= r.clip_end - r.clip_start <= 4.0 + 1e-6
        assert r.clip_start <= r.narration_time <= r.clip_end <= r.video_dur
        assert r.clip_text.startswith("#C C ") and r.tag_verb and r.tag_noun


def test_clips_spanning_two_chunks_occur(tiny) -> None:
    recs = read_egoclip(tiny / "egoclip.csv")
    assert any(int(r.clip_start // TINY.chunk_seconds) != int(r.clip_end // TINY.chunk_seconds) for r in recs)


def test_scene_negatives_exist(tiny) -> None:
    segments = Counter(r.segment_id for r in read_egoclip(tiny / "egoclip.csv"))
    assert max(segments.values()) >= 5  # many actions share a video's 60-s bucket


def test_splits_partition_clips_and_hold_out_pairs(tiny) -> None:
    meta = json.loads((tiny / "meta.json").read_text())
    splits = meta["splits"]
    recs = {r.clip_idx: r for r in read_egoclip(tiny / "egoclip.csv")}
    assigned = [i for s in splits.values() for i in s["clip_idx"]]
    assert sorted(assigned) == sorted(recs)  # every clip in exactly one split
    videos = [set(splits[s]["video_uids"]) for s in ("train", "val", "test")]
    assert all(videos) and not (videos[0] & videos[1] or videos[0] & videos[2] or videos[1] & videos[2])
    held = {(verb_by_key(p.split(":")[0]).id, noun_by_key(p.split(":")[1]).id) for p in HOLDOUT}

    def pair(i: int) -> tuple[int, int]:
        return recs[i].tag_verb[0], recs[i].tag_noun[0]

    assert not any(pair(i) in held for s in ("train", "val", "test") for i in splits[s]["clip_idx"])
    comp = splits["test_compositional"]["clip_idx"]
    assert comp and all(pair(i) in held for i in comp)


def test_egomcq_entries_are_valid(tiny) -> None:
    entries = read_egomcq(tiny / "egomcq.json")
    meta = json.loads((tiny / "meta.json").read_text())
    eval_videos = set(meta["splits"]["val"]["video_uids"]) | set(meta["splits"]["test"]["video_uids"])
    assert {e.types for e in entries} == {MCQ_INTER, MCQ_INTRA}
    for e in entries:
        assert e.query.video_uid in eval_videos
        assert e.choices[e.answer].clip_text == e.query.clip_text
        assert sum(c.clip_text == e.query.clip_text for c in e.choices) == 1
        uids = [c.video_uid for c in e.choices]
        if e.types == MCQ_INTRA:
            assert set(uids) == {e.query.video_uid}
        else:
            assert len(set(uids)) == 5


def test_actions_jsonl_matches_egoclip(tiny) -> None:
    recs = read_egoclip(tiny / "egoclip.csv")
    actions = [json.loads(ln) for ln in (tiny / "actions.jsonl").read_text().splitlines()]
    assert len(actions) == len(recs)
    for a, r in zip(actions, recs, strict=True):
        assert (a["clip_idx"], a["video_uid"], a["narration"], a["start"]) == (r.clip_idx, r.video_uid,
                                                                              r.clip_text, r.clip_start)  # fmt: skip
        assert a["colour"] == noun_by_key(a["noun"]).colour and 3 <= a["n_objects"] <= 5
        assert a["noun"] in a["objects"] and len(a["position"]["start"]) == 2
    by_video: dict[str, list[int]] = {}
    for a in actions:
        by_video.setdefault(a["video_uid"], []).append(a["index"])
    assert all(ix == list(range(len(ix))) for ix in by_video.values())


def test_picked_up_objects_are_put_down_next(tiny) -> None:
    actions = [json.loads(ln) for ln in (tiny / "actions.jsonl").read_text().splitlines()]
    for a, b in zip(actions, actions[1:], strict=False):
        if a["verb"] == "pick_up" and a["video_uid"] == b["video_uid"]:
            assert b["verb"] in ("put_down", "drop") and b["noun"] == a["noun"]


def _reversal_gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean |reversed(a) - b| and mean |reversed(a) - a| over frames."""
    ra = a[::-1].astype(np.float32)
    return float(np.abs(ra - b).mean()), float(np.abs(ra - a.astype(np.float32)).mean())


@pytest.mark.parametrize("pair", [("pick_up", "put_down", "blue_cup"), ("open", "close", "green_box"),
                                  ("push", "pull", "yellow_ball")])  # fmt: skip
def test_order_pairs_are_time_reversals(pair) -> None:
    first, second, noun = pair
    a = render_clip(first, noun, seed=2, size=64, still=True)
    b = render_clip(second, noun, seed=2, size=64, still=True)
    to_other, to_self = _reversal_gap(a, b)
    assert to_other < 0.5 * to_self, (to_other, to_self)  # reversed "pick up" looks like "put down", not itself


def test_epic_narration_style_changes_only_the_texts(tmp_path) -> None:
    from egovlpv2_edge.training.data.taxonomy import VERBS

    ego, epic = tmp_path / "ego", tmp_path / "epic"
    generate_dataset(ego, micro(seed=5))
    generate_dataset(epic, replace(micro(seed=5), narration_style="epic"))
    a, b = read_egoclip(ego / "egoclip.csv"), read_egoclip(epic / "egoclip.csv")
    assert [(r.video_uid, r.clip_start, r.tag_verb, r.tag_noun) for r in a] == [
        (r.video_uid, r.clip_start, r.tag_verb, r.tag_noun) for r in b
    ]
    nouns, verbs = {n.id: n.name for n in NOUNS}, {v.id: v for v in VERBS}
    for r in b:
        verb = verbs[r.tag_verb[0]]
        assert not r.clip_text.startswith("#C") and " the " + nouns[r.tag_noun[0]] not in r.clip_text
        assert r.clip_text.split(" ")[0] == verb.key.split("_")[0] or verb.key in ("rotate_cw", "rotate_ccw")
        assert nouns[r.tag_noun[0]] in r.clip_text
    by_key = {verbs[r.tag_verb[0]].key: r.clip_text for r in b}
    if "pick_up" in by_key:
        assert by_key["pick_up"].startswith("pick up ")
    assert json.loads((epic / "meta.json").read_text())["config"]["narration_style"] == "epic"
    with pytest.raises(ValueError, match="narration_style='yt'; valid: ego4d, epic"):
        SynthConfig(narration_style="yt").validate()


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="'open:red_ball': open cannot act on red_ball"):
        SynthConfig(holdout_pairs=("open:red_ball",)).validate()
    with pytest.raises(ValueError, match="must look like 'verb:noun'"):
        SynthConfig(holdout_pairs=("open-green_box",)).validate()
    with pytest.raises(ValueError, match="whole number of frames"):
        SynthConfig(fps=3, chunk_seconds=0.5).validate()
    with pytest.raises(ValueError, match="videos=0"):
        SynthConfig(videos=0).validate()


def _undone(plans) -> tuple[int, int]:
    """(actions with a reverse verb followed by that reverse on the same object, actions with a reverse verb)."""
    undone = total = 0
    for plan in plans:
        for a, b in zip(plan.actions, plan.actions[1:], strict=False):
            if a.verb.reverse and a.scene == b.scene:
                total += 1
                undone += b.verb.key == a.verb.reverse and b.obj == a.obj
    return undone, total


def test_undo_rate_puts_an_action_and_its_reverse_next_to_each_other() -> None:
    from egovlpv2_edge.training.data._plan import plan_video

    def plans(rate: float) -> list:
        return [plan_video(np.random.default_rng([3, k]), 40, (1.5, 4.0), set(), undo_rate=rate) for k in range(8)]

    never, default = plans(0.0), [plan_video(np.random.default_rng([3, k]), 40, (1.5, 4.0), set()) for k in range(8)]
    assert [[(a.verb.key, a.obj, a.start) for a in p.actions] for p in never] == [
        [(a.verb.key, a.obj, a.start) for a in p.actions] for p in default
    ]  # the option off draws nothing: the same videos as before it existed
    off, always = _undone(never), _undone(plans(1.0))
    assert always[0] / always[1] > 0.9 > 0.5 > off[0] / off[1], (always, off)  # where possible (room, state), undone
    with pytest.raises(ValueError, match=r"undo_rate=1.5 must be in \[0, 1\]"):
        SynthConfig(undo_rate=1.5).validate()

"""EgoClip / EgoMCQ torch datasets and the scene-negative collate."""

from __future__ import annotations

import json

import pytest
import torch

from egovlpv2_edge.training.data.dataset import EgoClipDataset, EgoMCQDataset, collate
from egovlpv2_edge.training.data.taxonomy import NOUNS, VERBS

from .conftest import TINY


def _ds(tiny, **kw) -> EgoClipDataset:
    args = dict(num_frames=3, size=32, split="train", mode="train", scene_negatives=True, seed=1)
    return EgoClipDataset(tiny / "egoclip.csv", tiny / "videos", **{**args, **kw})


def test_item_fields_and_shapes(tiny) -> None:
    ds = _ds(tiny)
    item = ds[0]
    assert item["video"].shape == (3, 3, 32, 32) and item["video"].dtype == torch.float32
    assert item["verb"].shape == (len(VERBS),) and item["noun"].shape == (len(NOUNS),)
    assert item["verb"].sum() == 1 and item["noun"].sum() >= 1
    assert isinstance(item["text"], str) and item["text"].startswith("#C C ")
    rec = ds.records[0]
    assert item["segment_id"] == f"{rec.video_uid}_{int(rec.narration_time // 60)}"


def test_scene_negative_comes_from_the_same_segment(tiny) -> None:
    ds = _ds(tiny)
    for i in range(0, len(ds), 5):
        item = ds[i]
        assert item["neg_segment_id"] == item["segment_id"] and item["neg_video_uid"] == item["video_uid"]
        if len({ds.records[j].clip_text for j in ds.segments[item["segment_id"]]}) > 1:
            assert item["neg_text"] != item["text"]


def test_collate_puts_negatives_after_positives(tiny) -> None:
    ds = _ds(tiny)
    batch = collate([ds[i] for i in range(4)])
    assert batch["video"].shape == (8, 3, 3, 32, 32)
    assert batch["verb"].shape == (8, len(VERBS)) and batch["noun"].shape == (8, len(NOUNS))
    assert len(batch["text"]) == 8 and batch["is_negative"].tolist() == [False] * 4 + [True] * 4
    assert batch["segment_id"][:4] == batch["segment_id"][4:]
    plain = collate([_ds(tiny, scene_negatives=False)[i] for i in range(4)])
    assert plain["video"].shape == (4, 3, 3, 32, 32) and not plain["is_negative"].any()


def test_items_reproducible_per_seed_and_epoch(tiny) -> None:
    a, b = _ds(tiny), _ds(tiny)
    assert torch.equal(a[3]["video"], b[3]["video"])
    b.set_epoch(1)
    assert not torch.equal(a[3]["video"], b[3]["video"])


def test_splits_filter_rows(tiny) -> None:
    meta = json.loads((tiny / "meta.json").read_text())
    for split in ("train", "val", "test", "test_compositional"):
        ds = _ds(tiny, split=split, mode="eval", scene_negatives=False)
        assert sorted(r.clip_idx for r in ds.records) == sorted(meta["splits"][split]["clip_idx"])
    assert len(_ds(tiny, split=None)) == meta["counts"]["clips"]
    with pytest.raises(ValueError, match="split='dev' not found; splits in meta.json: \\['test'"):
        _ds(tiny, split="dev")


def test_eval_mode_is_deterministic(tiny) -> None:
    a = _ds(tiny, mode="eval", seed=1)[2]["video"]
    b = _ds(tiny, mode="eval", seed=2)[2]["video"]
    assert torch.equal(a, b)


def test_skip_bad_rows_in_dataset(tiny, tmp_path, caplog) -> None:
    lines = (tiny / "egoclip.csv").read_text().splitlines()
    lines[3] = lines[3].replace("\t[", "\tbroken[", 1)
    (tmp_path / "egoclip.csv").write_text("\n".join(lines) + "\n")
    ds = EgoClipDataset(tmp_path / "egoclip.csv", tiny / "videos", num_frames=2, size=32, split=None,
                        skip_bad=True, chunk_seconds=TINY.chunk_seconds)  # fmt: skip
    assert ds.skipped == 1 and len(ds) == len(lines) - 2
    assert any("line 4" in r.getMessage() for r in caplog.records)


def test_bad_video_chunks_raise_before_training_or_are_skipped_and_counted(tiny, tmp_path, caplog) -> None:
    import shutil

    import numpy as np

    from egovlpv2_edge.training.data.egoclip import read_egoclip
    from egovlpv2_edge.training.data.video import VideoReadError

    videos = tmp_path / "videos"
    shutil.copytree(tiny / "videos", videos)
    recs = list(read_egoclip(tiny / "egoclip.csv"))
    uids = sorted({r.video_uid for r in recs})
    (videos / uids[0] / "1.mp4").unlink()  # a missing chunk (the second 10 s of the first video)
    (videos / uids[1] / "0.mp4").write_bytes(np.random.default_rng(0).bytes(4000))  # a corrupt one
    args = dict(num_frames=2, size=32, split=None, chunk_seconds=TINY.chunk_seconds)
    with pytest.raises(VideoReadError, match=r"1\.mp4 does not exist.*skip_bad=true"):
        EgoClipDataset(tiny / "egoclip.csv", videos, **args)
    (videos / uids[0] / "1.mp4").write_bytes((tiny / "videos" / uids[0] / "1.mp4").read_bytes())
    with pytest.raises(VideoReadError, match=r"0\.mp4 cannot be decoded.*skip_bad=true"):
        EgoClipDataset(tiny / "egoclip.csv", videos, **args)
    (videos / uids[0] / "1.mp4").unlink()

    def needs(rec, uid, k) -> bool:  # the clip's window overlaps chunk k of uid
        end = min(rec.clip_end, rec.video_dur)
        return rec.video_uid == uid and rec.clip_start < 10 * (k + 1) and end > 10 * k

    bad = [r for r in recs if needs(r, uids[0], 1) or needs(r, uids[1], 0)]
    assert bad and any(r.video_uid == uids[0] for r in bad) and any(r.video_uid == uids[1] for r in bad)
    with caplog.at_level("WARNING", logger="egovlpv2_edge.training.data.dataset"):
        ds = EgoClipDataset(tiny / "egoclip.csv", videos, skip_bad=True, scene_negatives=True, **args)
    assert ds.skipped_clips == ds.skipped == len(bad) and len(ds) == len(recs) - len(bad)
    assert {r.clip_idx for r in ds.records}.isdisjoint(r.clip_idx for r in bad)
    warned = [r.getMessage() for r in caplog.records]
    assert sum("skipping the clips that need a bad chunk" in m for m in warned) == 2  # once per chunk
    assert any(f"skipped {len(bad)} clip(s) of {len(recs)}: 2 video chunk(s)" in m for m in warned)
    kept = {r.clip_idx for r in ds.records}
    for i in range(len(ds)):  # every clip left reads, and its scene negative is one of them
        item = ds[i]
        assert item["video"].shape == item["neg_video"].shape == (2, 3, 32, 32) and item["neg_clip_idx"] in kept


def test_egomcq_dataset(tiny) -> None:
    ds = EgoMCQDataset(tiny / "egomcq.json", tiny / "videos", num_frames=2, size=32)
    item = ds[0]
    assert item["video"].shape == (5, 2, 3, 32, 32) and item["video"].dtype == torch.float32
    assert item["choice_texts"][item["answer"]] == item["text"] and item["types"] in (1, 2)

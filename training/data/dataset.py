"""PyTorch datasets for EgoClip pre-training (with scene-aware negatives) and EgoMCQ evaluation.

``EgoClipDataset`` returns one clip per item: ``video`` (F, 3, H, W) float, the raw ``text`` (tokenised
elsewhere), multi-hot ``verb``/``noun`` vectors for EgoNCE and the ``segment_id`` bucket. With
``scene_negatives`` each item also carries one clip drawn uniformly from the same segment (same video, same
60-s bucket) under ``neg_*`` keys, and ``collate`` puts those after the positives so a batch of B becomes 2B,
as the reference trainer does (reference §2, scene-aware negatives). ``EgoMCQDataset`` returns a query text and
its five candidate clips with the eval transform (reference §3, EgoMCQ).
"""

from __future__ import annotations

import csv as csvlib
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from egovlpv2_edge.training.data.egoclip import ClipRecord, read_egoclip, read_egomcq
from egovlpv2_edge.training.data.taxonomy import multi_hot
from egovlpv2_edge.training.data.video import (
    ChunkedVideoStore,
    VideoReadError,
    eval_transform,
    sample_times,
    train_transform,
)

__all__ = ["EgoClipDataset", "EgoMCQDataset", "collate"]

logger = logging.getLogger(__name__)


def _load_meta(meta: str | Path | None, beside: Path) -> dict:
    path = Path(meta) if meta is not None else beside.parent / "meta.json"
    if not path.is_file():
        if meta is not None:
            raise FileNotFoundError(f"meta file {path} does not exist; pass meta=None to use defaults")
        return {}
    return json.loads(path.read_text())


def _taxonomy_size(beside: Path, name: str, records: list[ClipRecord], attr: str) -> int:
    path = beside.parent / name
    if path.is_file():
        with path.open(newline="") as fh:
            return sum(1 for _ in csvlib.DictReader(fh))
    return 1 + max((t for r in records for t in getattr(r, attr)), default=0)


def _verbs_with(beside: Path, column: str) -> set[int]:
    """Verb ids whose ``column`` in verbs.csv is set (empty when the file or the column is missing)."""
    path = beside.parent / "verbs.csv"
    if not path.is_file():
        return set()
    with path.open(newline="") as fh:
        return {int(row["id"]) for row in csvlib.DictReader(fh) if row.get(column)}


class _ClipReader:
    """Shared clip loading: sample times, decode, transform."""

    def __init__(self, video_root: str | Path, num_frames: int, size: int, meta: dict, chunk_seconds: float | None,
                 fps: float | None) -> None:  # fmt: skip
        chunk = chunk_seconds if chunk_seconds is not None else float(meta.get("chunk_seconds", 600.0))
        self.store = ChunkedVideoStore(video_root, chunk_seconds=chunk, fps=fps if fps is not None else meta.get("fps"))
        self.num_frames, self.size = num_frames, size

    def load(self, rec: ClipRecord, mode: str, rng: np.random.Generator, hflip: bool = True) -> torch.Tensor:
        times = sample_times(rec.clip_start, rec.clip_end, self.num_frames, mode, rng)  # type: ignore[arg-type]
        frames = self.store.read_frames(rec.video_uid, times)  # (F, H, W, 3) uint8
        x = train_transform(frames, self.size, rng, hflip) if mode == "train" else eval_transform(frames, self.size)
        return torch.from_numpy(x)  # (F, 3, size, size)


class EgoClipDataset(Dataset):
    """EgoClip clips for pre-training.

    Args:
        csv: ``egoclip.csv`` (tab-separated); ``meta.json``, ``verbs.csv`` and ``nouns.csv`` are looked up beside it.
        video_root: Chunked video store root (``<video_root>/<video_uid>/<k>.mp4``).
        num_frames: Frames per clip F.
        size: Output frame side.
        split: One of the splits in ``meta.json`` (train, val, test, test_compositional), or None for all rows.
        mode: ``"train"`` (random frame per bin, random crop and flip) or ``"eval"`` (bin midpoints, centre crop).
        scene_negatives: Also return a clip from the same 60-s segment under ``neg_*`` keys.
        seed: Seed for sampling; items are reproducible per (seed, epoch, index).
        skip_bad: Skip malformed csv rows, and clips whose video chunks are missing or corrupt, with a warning
            each (a bad chunk once) and a count, instead of raising. Chunks are checked when the dataset is made.
        meta: Path of ``meta.json`` if it is not beside the csv.
        chunk_seconds: Chunk length; from ``meta.json`` (else 600) when None.
        fps: Frame rate; from ``meta.json`` (else from the files) when None.
    """

    def __init__(self, csv: str | Path, video_root: str | Path, num_frames: int = 4, size: int = 224,
                 split: str | None = None, mode: Literal["train", "eval"] = "train", scene_negatives: bool = False,
                 seed: int = 0, skip_bad: bool = False, meta: str | Path | None = None,
                 chunk_seconds: float | None = None, fps: float | None = None) -> None:  # fmt: skip
        if mode not in ("train", "eval"):
            raise ValueError(f"mode={mode!r} is not one of 'train', 'eval'")
        csv_path = Path(csv)
        table = read_egoclip(csv_path, skip_bad=skip_bad)
        self.skipped = table.skipped
        info = _load_meta(meta, csv_path)
        records = list(table)
        if split is not None:
            splits = info.get("splits", {})
            if split not in splits:
                raise ValueError(f"split={split!r} not found; splits in meta.json: {sorted(splits) or 'none'}")
            keep = set(splits[split]["clip_idx"])
            records = [r for r in records if r.clip_idx in keep]
        self.reader = _ClipReader(video_root, num_frames, size, info, chunk_seconds, fps)
        self.records = self._readable(records, skip_bad)
        self.mode, self.scene_negatives, self.seed, self.epoch = mode, scene_negatives, seed, 0
        self.n_verbs = _taxonomy_size(csv_path, "verbs.csv", table.records, "tag_verb")
        self.n_nouns = _taxonomy_size(csv_path, "nouns.csv", table.records, "tag_noun")
        self.no_flip = _verbs_with(csv_path, "mirror")  # a horizontal flip changes their meaning (left/right)
        self.directional = sorted(_verbs_with(csv_path, "reverse"))  # played backwards they become another verb
        self.segments: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(self.records):
            self.segments[r.segment_id].append(i)

    def _readable(self, records: list[ClipRecord], skip_bad: bool) -> list[ClipRecord]:
        """The records whose video chunks exist and open, checked before any training step.

        A missing or undecodable chunk raises :class:`VideoReadError` (naming it and the fix); with ``skip_bad``
        each such chunk is logged once as a warning, the clips that need it are left out, and their count is
        added to ``self.skipped`` (``self.skipped_clips`` alone) and logged.
        """
        store = self.reader.store
        bad: set[str] = set()  # one message per bad chunk
        keep: list[ClipRecord] = []
        for rec in records:
            try:
                store.check_chunks(rec.video_uid, rec.clip_start, min(rec.clip_end, rec.video_dur))
            except VideoReadError as exc:
                if not skip_bad:
                    fix = "to pre-train without the clips whose chunks are bad, set skip_bad=true"
                    raise VideoReadError(f"{exc} (needed by clip {rec.clip_idx}); {fix}") from exc
                if str(exc) not in bad:
                    bad.add(str(exc))
                    logger.warning("skipping the clips that need a bad chunk: %s", exc)
                continue
            keep.append(rec)
        self.skipped_clips = len(records) - len(keep)
        self.skipped += self.skipped_clips
        if self.skipped_clips:
            logger.warning("skipped %d clip(s) of %d: %d video chunk(s) missing or corrupt", self.skipped_clips,
                           len(records), len(bad))  # fmt: skip
        return keep

    def set_epoch(self, epoch: int) -> None:
        """Change the sampling randomness (frame times, crops, negatives) for a new epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def _clip(self, rec: ClipRecord, rng: np.random.Generator, prefix: str = "") -> dict[str, Any]:
        hflip = not (set(rec.tag_verb) & self.no_flip)
        return {
            f"{prefix}video": self.reader.load(rec, self.mode, rng, hflip),
            f"{prefix}text": rec.clip_text,
            f"{prefix}verb": torch.from_numpy(multi_hot(rec.tag_verb, self.n_verbs)),
            f"{prefix}noun": torch.from_numpy(multi_hot(rec.tag_noun, self.n_nouns)),
            f"{prefix}video_uid": rec.video_uid,
            f"{prefix}segment_id": rec.segment_id,
            f"{prefix}clip_idx": rec.clip_idx,
        }

    def negative_index(self, index: int, rng: np.random.Generator) -> int:
        """A uniformly drawn other clip of the same segment (one with a different text when there is one)."""
        rec = self.records[index]
        same = [j for j in self.segments[rec.segment_id] if j != index]
        other_text = [j for j in same if self.records[j].clip_text != rec.clip_text]
        pool = other_text or same or [index]
        return pool[int(rng.integers(len(pool)))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        item = self._clip(self.records[index], rng)
        if self.scene_negatives:
            item.update(self._clip(self.records[self.negative_index(index, rng)], rng, prefix="neg_"))
        return item


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch; scene negatives (``neg_*``) are appended after the positives, so B items give 2B clips.

    Returns:
        ``video`` (B', F, 3, H, W), ``verb``/``noun`` (B', V)/(B', N), lists ``text``, ``video_uid``,
        ``segment_id``, ``clip_idx`` and a bool ``is_negative`` (B',), where B' = 2B with negatives, else B.
    """
    if not batch:
        raise ValueError("collate got an empty batch")
    parts = [""] + (["neg_"] if all("neg_video" in b for b in batch) else [])
    out: dict[str, Any] = {}
    for key in ("video", "verb", "noun"):
        out[key] = torch.cat([torch.stack([b[p + key] for b in batch]) for p in parts])
    for key in ("text", "video_uid", "segment_id", "clip_idx"):
        out[key] = [b[p + key] for p in parts for b in batch]
    out["is_negative"] = torch.tensor([p == "neg_" for p in parts for _ in batch])
    return out


class EgoMCQDataset(Dataset):
    """EgoMCQ questions: the query text and its five candidate clips (eval sampling and transform).

    Args:
        json_path: ``egomcq.json``; ``meta.json`` is looked up beside it.
        video_root: Chunked video store root.
        num_frames: Frames per clip F.
        size: Output frame side.
        meta: Path of ``meta.json`` if it is not beside the json.
        chunk_seconds: Chunk length; from ``meta.json`` (else 600) when None.
        fps: Frame rate; from ``meta.json`` (else from the files) when None.
    """

    def __init__(self, json_path: str | Path, video_root: str | Path, num_frames: int = 4, size: int = 224,
                 meta: str | Path | None = None, chunk_seconds: float | None = None,
                 fps: float | None = None) -> None:  # fmt: skip
        path = Path(json_path)
        self.entries = read_egomcq(path)
        self.reader = _ClipReader(video_root, num_frames, size, _load_meta(meta, path), chunk_seconds, fps)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        rng = np.random.default_rng(index)  # unused by eval sampling; keeps the reader's signature
        videos = torch.stack([self.reader.load(c, "eval", rng) for c in e.choices])  # (5, F, 3, H, W)
        return {"text": e.query.clip_text, "video": videos, "answer": e.answer, "types": e.types,
                "choice_texts": [c.clip_text for c in e.choices]}  # fmt: skip

"""Natural-language queries (Ego4D NLQ, reference §3 EgoNLQ and §4): the official annotation format, a loader
and the synthetic NLQ split.

The official file (``nlq_{train,val}.json``, version 1) nests ``videos -> clips -> annotations ->
language_queries``. A clip is a window ``[video_start_sec, video_end_sec]`` of its video; each query has a
response window in clip time (``clip_start_sec``, ``clip_end_sec``) and in video time. :func:`read_nlq` flattens
it into :class:`NLQClip` objects (queries in clip time). The synthetic generator writes the same format (one
clip per video, queries such as "when did I pick up the red cup?" about a verb-object pair that happens once
in the video), so one loader serves both.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from egovlpv2_edge.training.data.taxonomy import base_phrase, noun_by_key

__all__ = ["NLQClip", "NLQFormatError", "NLQQuery", "build_nlq", "read_nlq", "window_starts"]

logger = logging.getLogger(__name__)
NLQ_TEMPLATE = "Objects: When did I X the Y?"
END_TOLERANCE_S = 1.0  # a response window may end this far past its clip (clamped to the clip)


class NLQFormatError(ValueError):
    """A malformed NLQ annotation file (the message names the file, the place and the problem)."""


@dataclass(frozen=True)
class NLQQuery:
    """One language query with its response window in clip time (seconds from the clip start)."""

    query: str
    start: float
    end: float
    annotation_uid: str
    template: str = ""


@dataclass(frozen=True)
class NLQClip:
    """One clip of a video and its queries.

    Attributes:
        video_uid: The video.
        clip_uid: The clip.
        video_start: Clip start in video time (seconds); frames are read at ``video_start + t``.
        duration: Clip length in seconds.
        queries: The clip's queries, response windows in clip time.
        split: The file's split field for the video, or ``""``.
    """

    video_uid: str
    clip_uid: str
    video_start: float
    duration: float
    queries: tuple[NLQQuery, ...]
    split: str = ""


def _clip(raw: dict, video_uid: str, split: str, where: str, skip_bad: bool) -> tuple[NLQClip, int]:
    for key in ("clip_uid", "video_start_sec", "video_end_sec", "annotations"):
        if key not in raw:
            raise ValueError(f"{where}: missing {key!r}")
    start, end = float(raw["video_start_sec"]), float(raw["video_end_sec"])
    if not end > start:
        raise ValueError(f"{where}: empty clip [{start}, {end}]")
    duration = float(raw.get("clip_end_sec", end - start)) - float(raw.get("clip_start_sec", 0.0))
    queries, skipped = [], 0
    for a_i, ann in enumerate(raw["annotations"]):
        for q_i, q in enumerate(ann.get("language_queries", [])):
            spot = f"{where} annotation {a_i} query {q_i}"
            try:
                text = q.get("query")
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"{spot}: no query text")
                qs, qe = float(q["clip_start_sec"]), float(q["clip_end_sec"])
                # the real files hold zero-length windows and ends a few frames past the clip: keep them, clamped
                if not (0 <= qs <= qe and qs <= duration and qe <= duration + END_TOLERANCE_S):
                    raise ValueError(f"{spot}: window [{qs}, {qe}] outside the clip [0, {duration:.3f}]")
            except (ValueError, KeyError, TypeError) as err:
                if not skip_bad:
                    raise ValueError(str(err)) from None
                logger.debug("skipping NLQ query: %s", err)
                skipped += 1
                continue
            queries.append(NLQQuery(text.strip(), qs, min(qe, duration), str(ann.get("annotation_uid", "")),
                                    str(q.get("template", ""))))  # fmt: skip
    return NLQClip(video_uid, str(raw["clip_uid"]), start, duration, tuple(queries), split), skipped


def read_nlq(path: str | Path, skip_bad: bool = True) -> list[NLQClip]:
    """Read an official Ego4D NLQ annotation file (or a synthetic one in the same format).

    Args:
        path: ``nlq_*.json``.
        skip_bad: Skip queries without text or with a window outside the clip (each logged), as the real
            files have a few; False raises on the first.

    Returns:
        The clips in file order (clips without any valid query are kept, with no queries).

    Raises:
        FileNotFoundError: If the file does not exist.
        NLQFormatError: On a structural problem, naming the file and the video/clip.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NLQ file {path} does not exist; generate one with 'egovlp data synth' or pass "
                                "the official nlq_val.json")  # fmt: skip
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise NLQFormatError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
        raise NLQFormatError(f"{path}: top level must be an object with a 'videos' list (Ego4D NLQ v1 format)")
    clips, skipped = [], 0
    for v_i, video in enumerate(data["videos"]):
        try:
            uid = video["video_uid"]
            for c_i, raw in enumerate(video["clips"]):
                clip, n = _clip(raw, uid, str(video.get("split", "")), f"video {v_i} ({uid}) clip {c_i}", skip_bad)
                clips.append(clip)
                skipped += n
        except (ValueError, KeyError, TypeError) as err:
            raise NLQFormatError(f"{path}: {err}") from None
    if skipped:
        logger.warning("%s: skipped %d quer(ies) without text or outside their clip", path, skipped)
    return clips


def window_starts(duration: float, window_s: float) -> np.ndarray:
    """Start times of consecutive ``window_s`` windows covering ``[0, duration]`` (the last may run past it)."""
    if window_s <= 0:
        raise ValueError(f"window_s={window_s} must be > 0")
    return np.arange(max(1, int(np.ceil(duration / window_s - 1e-9)))) * window_s


def _uid(rng: np.random.Generator) -> str:
    bits = rng.integers(0, 2**63, size=2, dtype=np.int64)
    return str(uuid.UUID(int=(int(bits[0]) << 64 | int(bits[1])) & ((1 << 128) - 1), version=4))


def _query(a: dict, fps: float, rng: np.random.Generator) -> dict[str, Any]:
    name = noun_by_key(a["noun"]).name
    text = f"when did I {base_phrase(a['verb'], 'the ' + name)}?"
    start, end = round(float(a["start"]), 3), round(float(a["end"]), 3)
    verb = base_phrase(a["verb"], "").split(" ")[0]
    return {"clip_start_sec": start, "clip_end_sec": end, "video_start_sec": start, "video_end_sec": end,
            "video_start_frame": int(start * fps), "video_end_frame": int(end * fps), "template": NLQ_TEMPLATE,
            "query": text, "slot_x": name, "verb_x": verb,
            "raw_tags": [NLQ_TEMPLATE, text, name, verb]}  # fmt: skip


def build_nlq(videos: Sequence[Sequence[dict]], durations: dict[str, float], video_split: dict[str, str],
              fps: float, seed: int, max_queries: int = 8) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Synthetic NLQ files, one per split, in the official format.

    Each video is one clip covering it; its queries ask for verb-object pairs that happen exactly once in the
    video (so the answer window is unique), at most ``max_queries`` per video, in time order.

    Args:
        videos: Per video, its action facts in order (rows of ``actions.jsonl``).
        durations: ``video_uid -> duration`` in seconds.
        video_split: ``video_uid -> split``.
        fps: Frame rate for the frame fields.
        seed: Seed of the uids and of which queries are kept.
        max_queries: Cap per video.

    Returns:
        ``split -> file contents`` for every split that has videos.
    """
    rng = np.random.default_rng([seed, 7002])
    out: dict[str, dict[str, Any]] = {}
    for actions in videos:
        if not actions or actions[0]["video_uid"] not in video_split:
            continue
        uid = actions[0]["video_uid"]
        dur = float(durations[uid])
        pairs = Counter((a["verb"], a["noun"]) for a in actions)
        unique = [a for a in actions if pairs[(a["verb"], a["noun"])] == 1]
        keep = sorted(rng.permutation(len(unique))[:max_queries].tolist())
        clip_uid = _uid(rng)
        clip = {"clip_uid": clip_uid, "video_start_sec": 0.0, "video_end_sec": dur, "video_start_frame": 0,
                "video_end_frame": int(dur * fps), "clip_start_sec": 0, "clip_end_sec": dur, "clip_start_frame": 0,
                "clip_end_frame": int(dur * fps), "source_clip_uid": clip_uid,
                "annotations": [{"language_queries": [_query(unique[i], fps, rng) for i in keep],
                                 "annotation_uid": _uid(rng)}]}  # fmt: skip
        split = video_split[uid]
        doc = out.setdefault(split, {"version": "1", "date": "synthetic", "description": f"NLQ Annotations ({split})",
                                     "manifest": "", "videos": []})  # fmt: skip
        doc["videos"].append({"video_uid": uid, "clips": [clip], "split": split})
    return out

"""Deterministic generator of a synthetic egocentric dataset in the EgoClip / EgoMCQ formats.

Real Ego4D cannot be downloaded here, so this draws first-person footage with OpenCV: a textured counter seen
from above-ish, a right hand and forearm (skin tone and sleeve vary per video) acting on one of three to five
objects, head motion and per-video lighting. Each video strings 20-60 narrated actions of 1.5-4 s together, so
the scene-aware negatives of EgoVLPv2 (same video, same 60-s bucket; reference §2) exist. Output layout::

    <out>/videos/<video_uid>/<k>.mp4   chunked store (reference §4; chunk length is a parameter)
    <out>/egoclip.csv                  EgoClip rows, tab-separated (reference §4)
    <out>/egomcq.json                  EgoMCQ from val + test videos, inter (1) and intra (2)
    <out>/verbs.csv, nouns.csv         the taxonomy
    <out>/actions.jsonl                per-action facts for later QA / NLQ splits
    <out>/qa.json                      QA over windows of 2-3 consecutive actions (``data/qa.py``)
    <out>/nlq_{train,val,test}.json    natural-language queries, Ego4D NLQ format (``data/nlq.py``)
    <out>/meta.json                    config, splits (video uids + clip_idx), counts, generator version

Everything is a function of ``SynthConfig.seed``: the same seed gives identical files and frames.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from egovlpv2_edge.training.data._mcq import build_egomcq
from egovlpv2_edge.training.data._plan import PlannedAction, VideoPlan, make_scene, next_state, plan_video
from egovlpv2_edge.training.data._render import make_look, read_watermark, render_frames
from egovlpv2_edge.training.data.egoclip import ClipRecord, read_egoclip, write_egoclip, write_egomcq
from egovlpv2_edge.training.data.taxonomy import (
    ORDER_PAIRS,
    base_phrase,
    compatible,
    noun_by_key,
    verb_by_key,
    write_taxonomy,
)

__all__ = [
    "GENERATOR_VERSION",
    "SynthConfig",
    "SynthSummary",
    "generate_dataset",
    "narration",
    "parse_holdout",
    "read_watermark",
    "render_clip",
    "write_task_files",
]

logger = logging.getLogger(__name__)
GENERATOR_VERSION = "1.0"


NARRATION_STYLES = ("ego4d", "epic")


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Every field is recorded in ``meta.json``."""

    videos: int = 40  # number of videos
    seed: int = 0  # everything (uids, scenes, actions, pixels, splits) follows from it
    fps: float = 10.0  # frames per second of the stored videos
    size: int = 128  # frame height = width in pixels
    chunk_seconds: float = 600.0  # length of one stored chunk (reference: 600 s)
    min_actions: int = 20  # actions per video, drawn uniformly in [min, max]
    max_actions: int = 60
    min_action_s: float = 1.5  # action length in seconds, drawn uniformly in [min, max]
    max_action_s: float = 4.0
    holdout_pairs: tuple[str, ...] = ()  # "verb:noun" pairs moved from train into test_compositional
    holdout_rate: float = 0.1  # chance an action is a held-out pair when one is possible (keeps that split filled)
    # chance an action whose verb has a reverse is undone by the next one (push, then pull back): intra-video
    # EgoMCQ questions then often pit an action against its reverse, which only the order of the frames tells apart
    undo_rate: float = 0.0
    val_fraction: float = 0.1  # share of videos in val / test (at least one each when there are >= 3 videos)
    test_fraction: float = 0.1
    watermark: bool = False  # write the frame index into the top-left corner (for reader tests)
    head_motion: bool = True
    # "ego4d": "#C C picks up the red cup"; "epic": EPIC-KITCHENS style, "pick up red cup" (a fine-tuning set in
    # another narration domain than the pre-training one, as EPIC-KITCHENS-100 is to Ego4D)
    narration_style: str = "ego4d"
    workers: int = 1  # processes rendering videos in parallel; 0 = one per CPU core

    def validate(self) -> None:
        """Check ranges and held-out pairs.

        Raises:
            ValueError: Naming the bad field, its value and what is allowed.
        """
        checks = [
            (self.videos >= 1, f"videos={self.videos} must be >= 1"),
            (self.fps > 0, f"fps={self.fps} must be > 0"),
            (16 <= self.size <= 1024 and self.size % 2 == 0, f"size={self.size} must be an even number in [16, 1024]"),
            (1 <= self.min_actions <= self.max_actions, f"actions range [{self.min_actions}, {self.max_actions}] "
             "must satisfy 1 <= min <= max"),
            (0.5 <= self.min_action_s <= self.max_action_s, f"action length range [{self.min_action_s}, "
             f"{self.max_action_s}] s must satisfy 0.5 <= min <= max"),
            (0 <= self.val_fraction + self.test_fraction < 1, "val_fraction + test_fraction must be in [0, 1)"),
            (self.workers >= 0, f"workers={self.workers} must be >= 0 (0 = one per core)"),
            (0 <= self.holdout_rate <= 1, f"holdout_rate={self.holdout_rate} must be in [0, 1]"),
            (0 <= self.undo_rate <= 1, f"undo_rate={self.undo_rate} must be in [0, 1]"),
            (self.narration_style in NARRATION_STYLES,
             f"narration_style={self.narration_style!r}; valid: {', '.join(NARRATION_STYLES)}"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        per_chunk = self.chunk_seconds * self.fps
        if self.chunk_seconds <= 0 or abs(per_chunk - round(per_chunk)) > 1e-6:
            raise ValueError(f"chunk_seconds={self.chunk_seconds} x fps={self.fps} must be a positive whole number "
                             "of frames; choose e.g. chunk_seconds=600 or 20")  # fmt: skip
        parse_holdout(self.holdout_pairs)


def parse_holdout(pairs: tuple[str, ...] | list[str]) -> set[tuple[str, str]]:
    """Parse ``"verb:noun"`` strings into (verb key, noun key) pairs.

    Raises:
        ValueError: On a malformed pair, an unknown verb or noun, or a pair the verb cannot act on.
    """
    out = set()
    for p in pairs:
        if p.count(":") != 1:
            raise ValueError(f"held-out pair {p!r} must look like 'verb:noun', e.g. 'open:green_box'")
        v, n = (s.strip() for s in p.split(":"))
        verb, noun = verb_by_key(v), noun_by_key(n)
        if not compatible(verb, noun):
            raise ValueError(f"held-out pair {p!r}: {v} cannot act on {n} (it needs {verb.requires!r} objects)")
        out.add((v, n))
    return out


@dataclass
class SynthSummary:
    """What ``generate_dataset`` wrote."""

    out_dir: Path
    videos: int
    clips: int
    duration_s: float
    frames: int
    seconds: float  # wall time
    bytes: int  # size of everything under out_dir
    splits: dict[str, int] = field(default_factory=dict)  # clips per split
    mcq: dict[str, int] = field(default_factory=dict)  # entries per type


def _video_uid(seed: int, index: int) -> str:
    bits = np.random.default_rng([seed, index, 7]).integers(0, 2**63, size=2, dtype=np.int64)
    return str(uuid.UUID(int=(int(bits[0]) << 64 | int(bits[1])) & ((1 << 128) - 1), version=4))


def _action_json(uid: str, plan: VideoPlan, a: PlannedAction, text: str) -> dict:
    return {
        "video_uid": uid, "index": a.index, "start": a.start, "end": a.end, "verb": a.verb.key, "noun": a.noun.key,
        "narration": text, "colour": a.noun.colour, "shape": a.noun.shape, "texture": a.noun.texture,
        "position": {"start": [round(a.a.x, 3), round(a.a.y, 3)], "end": [round(a.b.x, 3), round(a.b.y, 3)]},
        "held_after": a.b.h > 0.5, "lid_after": a.b.lid, "fold_after": a.b.fold, "flipped_after": a.b.flipped,
        "cuts_after": a.b.cuts, "scene": a.scene, "n_objects": a.n_objects,
        "objects": [n.key for n in plan.scenes[a.scene].nouns],
    }  # fmt: skip


def narration(a: PlannedAction, style: str = "ego4d") -> str:
    """The action's narration: Ego4D style, e.g. ``"#C C picks up the red cup"``, or EPIC-KITCHENS style (base
    form, no subject, no article, the verb's usual wording), e.g. ``"pick up red cup"``."""
    if style == "epic":
        return base_phrase(a.verb.key, a.noun.name)
    return "#C C " + a.verb.templates[a.template].format(n=a.noun.name)


def _write_chunks(frames: Iterable[np.ndarray], root: Path, uid: str, cfg: SynthConfig) -> int:
    per_chunk = int(round(cfg.chunk_seconds * cfg.fps))
    folder = root / "videos" / uid
    folder.mkdir(parents=True, exist_ok=True)
    writer, n = None, 0
    for n, frame in enumerate(frames):
        if n % per_chunk == 0:
            if writer is not None:
                writer.release()
            path = folder / f"{n // per_chunk}.mp4"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), cfg.fps, (cfg.size, cfg.size))
            if not writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write {path} with the mp4v codec; check the opencv build")
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    if writer is not None:
        writer.release()
    return n + 1


def _make_video(job: tuple[SynthConfig, int, str]) -> dict:
    """Plan, render and store one video; returns its uid, duration, frame count and action facts."""
    cfg, index, root = job
    cv2.setNumThreads(1)
    rng = np.random.default_rng([cfg.seed, index])
    uid = _video_uid(cfg.seed, index)
    n_actions = int(rng.integers(cfg.min_actions, cfg.max_actions + 1))
    held = parse_holdout(cfg.holdout_pairs)
    plan = plan_video(rng, n_actions, (cfg.min_action_s, cfg.max_action_s), held, cfg.holdout_rate, cfg.undo_rate)
    look = make_look(rng, cfg.size, plan.duration, cfg.head_motion)
    frames = _write_chunks(render_frames(plan, look, cfg.size, cfg.fps, cfg.watermark), Path(root), uid, cfg)
    actions = []
    for a in plan.actions:
        text = narration(a, cfg.narration_style)
        tools = [noun_by_key(a.verb.tool).id] if a.verb.tool else []
        actions.append({**_action_json(uid, plan, a, text), "tag_verb": [a.verb.id], "tag_noun": [a.noun.id, *tools]})
    return {"uid": uid, "index": index, "duration": plan.duration, "frames": frames, "actions": actions}


def _records(videos: list[dict]) -> list[ClipRecord]:
    out = []
    for v in videos:
        for a in v["actions"]:
            out.append(ClipRecord(
                clip_idx=len(out), video_uid=v["uid"], video_dur=v["duration"], narration_source="narration_pass_1",
                narration_ind=a["index"], narration_time=round((a["start"] + a["end"]) / 2, 3),
                clip_start=a["start"], clip_end=a["end"], clip_text=a["narration"],
                tag_verb=tuple(a["tag_verb"]), tag_noun=tuple(a["tag_noun"]),
            ))  # fmt: skip
    return out


def _splits(cfg: SynthConfig, videos: list[dict], records: list[ClipRecord]) -> dict[str, dict[str, list]]:
    """Split videos into train/val/test; clips of held-out pairs go to test_compositional whatever their video."""
    uids = [v["uid"] for v in videos]
    order = np.random.default_rng([cfg.seed, 999]).permutation(len(uids))
    n = len(uids)
    n_val = max(1, round(cfg.val_fraction * n)) if n >= 3 and cfg.val_fraction > 0 else 0
    n_test = max(1, round(cfg.test_fraction * n)) if n >= 3 and cfg.test_fraction > 0 else 0
    by_name = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    video_split = {uids[i]: name for name, idx in by_name.items() for i in idx}
    held = parse_holdout(cfg.holdout_pairs)
    pair_of = {(v["uid"], a["index"]): (a["verb"], a["noun"]) for v in videos for a in v["actions"]}
    out: dict[str, dict[str, list]] = {s: {"video_uids": [], "clip_idx": []} for s in
                                       ("train", "val", "test", "test_compositional")}  # fmt: skip
    for uid in uids:
        out[video_split[uid]]["video_uids"].append(uid)
    for r in records:
        name = "test_compositional" if pair_of[(r.video_uid, r.narration_ind)] in held else video_split[r.video_uid]
        out[name]["clip_idx"].append(r.clip_idx)
    comp = out["test_compositional"]
    comp["video_uids"] = sorted({records[i].video_uid for i in comp["clip_idx"]})
    return out


def _render_all(cfg: SynthConfig, root: Path, progress: Callable[[int], None] | None) -> list[dict]:
    jobs = [(cfg, i, str(root)) for i in range(cfg.videos)]
    workers = cfg.workers or os.cpu_count() or 1
    if workers == 1 or cfg.videos == 1:
        videos = []
        for job in jobs:
            videos.append(_make_video(job))
            if progress:
                progress(1)
        return videos
    # spawned, not forked: a fork of a process whose torch/OpenMP threads hold a lock can hang the child
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, cfg.videos), mp_context=spawn) as pool:
        videos = []
        for v in pool.map(_make_video, jobs):
            videos.append(v)
            if progress:
                progress(1)
    return videos


def generate_dataset(out_dir: str | Path, config: SynthConfig | None = None,
                     progress: Callable[[int], None] | None = None) -> SynthSummary:  # fmt: skip
    """Render ``config.videos`` videos into ``out_dir`` and write every annotation file.

    Args:
        out_dir: Output folder (created; existing files of the same names are overwritten).
        config: What to generate; defaults to ``SynthConfig()``.
        progress: Called with 1 after each finished video (e.g. ``tqdm.update``).

    Returns:
        Counts, duration, size on disk and wall time.

    Raises:
        ValueError: If the config is invalid (see ``SynthConfig.validate``).
    """
    cfg = config or SynthConfig()
    cfg.validate()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    videos = _render_all(cfg, root, progress)
    records = _records(videos)
    write_egoclip(root / "egoclip.csv", records)
    write_taxonomy(root)
    actions = [a for v in videos for a in v["actions"]]  # one-to-one with the EgoClip rows, same order
    with (root / "actions.jsonl").open("w") as fh:
        fh.writelines(json.dumps({**a, "clip_idx": r.clip_idx}) + "\n" for a, r in zip(actions, records, strict=True))
    splits = _splits(cfg, videos, records)
    eval_uids = set(splits["val"]["video_uids"]) | set(splits["test"]["video_uids"])
    eval_clips = set(splits["val"]["clip_idx"]) | set(splits["test"]["clip_idx"])
    mcq = build_egomcq(records, [r for r in records if r.clip_idx in eval_clips and r.video_uid in eval_uids],
                       np.random.default_rng([cfg.seed, 555]))  # fmt: skip
    write_egomcq(root / "egomcq.json", mcq)
    mcq_counts = {"inter": sum(e.types == 1 for e in mcq), "intra": sum(e.types == 2 for e in mcq)}
    counts = {"videos": len(videos), "clips": len(records), "actions": len(records), "mcq": len(mcq), **{
        f"mcq_{k}": v for k, v in mcq_counts.items()}, "frames": sum(v["frames"] for v in videos),
        "duration_s": round(sum(v["duration"] for v in videos), 3)}  # fmt: skip
    meta = {"generator_version": GENERATOR_VERSION, "seed": cfg.seed, "fps": cfg.fps, "size": cfg.size,
            "chunk_seconds": cfg.chunk_seconds, "holdout_pairs": list(cfg.holdout_pairs), "counts": counts,
            "splits": splits, "config": asdict(cfg), "mcq_from": ["val", "test"]}  # fmt: skip
    (root / "meta.json").write_text(json.dumps(meta, indent=1))
    write_task_files(root)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    summary = SynthSummary(out_dir=root, videos=len(videos), clips=len(records), duration_s=counts["duration_s"],
                           frames=counts["frames"], seconds=time.perf_counter() - t0, bytes=size,
                           splits={k: len(v["clip_idx"]) for k, v in splits.items()}, mcq=mcq_counts)  # fmt: skip
    logger.info("wrote %d videos, %d clips to %s in %.1f s", summary.videos, summary.clips, root, summary.seconds)
    return summary


def render_clip(verb: str, noun: str, seed: int = 0, size: int = 128, fps: float = 10.0, duration: float = 3.0,
                still: bool = False) -> np.ndarray:  # fmt: skip
    """Render one action on its own, as (T, S, S, 3) uint8 RGB frames (for tests and figures).

    The same seed gives the same counter, objects and camera for every verb; the second verb of an order pair
    (e.g. ``put_down``) starts where its partner ends, so its clip is the partner's clip played backwards.
    ``still=True`` removes head motion, lighting changes and sensor noise, so clips compare pixel by pixel.

    Raises:
        ValueError: On an unknown verb or noun, or a verb that cannot act on the noun.
    """
    v, n = verb_by_key(verb), noun_by_key(noun)
    parse_holdout([f"{verb}:{noun}"])
    backwards = v.key in {second for _, second in ORDER_PAIRS} or v.key == "drop"
    base = verb_by_key("pick_up" if v.key == "drop" else v.reverse) if backwards else v
    rng = np.random.default_rng([seed, 4242])
    scene = make_scene(0, rng)
    scene.nouns[0] = n
    lid = 1.0 if base.key in ("pour", "stir") and "openable" in n.props else 0.0
    scene.init[0] = replace(scene.init[0], lid=lid, fold=0.0)
    for _ in range(50):
        b = next_state(base, 0, scene.nouns, scene.init, rng)
        if b is not None:
            break
    else:
        raise ValueError(f"could not place a {verb} of the {noun} on the counter; try another seed")
    a = scene.init[0]
    if v.key == "drop":
        a, b = b, replace(a, x=b.x, y=0.55)
    elif backwards:
        a, b = b, a
    act = PlannedAction(0, 0, 0, v, n, 0.0, duration, a, b, 0, len(scene.nouns))
    scene.init[0] = a
    plan = VideoPlan(scenes=[scene], actions=[act], duration=duration)
    look = make_look(np.random.default_rng([seed, 4243]), size, duration, head_motion=not still, steady=still)
    return np.stack(list(render_frames(plan, look, size, fps)))


def write_task_files(root: str | Path) -> dict[str, int]:
    """Derive the QA and NLQ splits of a generated dataset from ``actions.jsonl`` and ``meta.json``.

    Nothing is rendered: questions and queries are windows of the existing videos, so this also upgrades a
    dataset generated before these splits existed. Deterministic in the dataset's seed; the other files are
    untouched.

    Args:
        root: Dataset folder.

    Returns:
        Counts: ``qa_<split>`` questions and ``nlq_<split>`` queries.

    Raises:
        FileNotFoundError: If ``actions.jsonl`` or ``meta.json`` is missing.
    """
    from egovlpv2_edge.training.data.nlq import build_nlq
    from egovlpv2_edge.training.data.qa import build_qa, write_qa

    root = Path(root)
    for name in ("actions.jsonl", "meta.json"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} does not exist; generate the dataset with 'egovlp data synth'")
    meta = json.loads((root / "meta.json").read_text())
    by_video: dict[str, list[dict]] = {}
    for line in (root / "actions.jsonl").read_text().splitlines():
        if line.strip():
            a = json.loads(line)
            by_video.setdefault(a["video_uid"], []).append(a)
    videos = list(by_video.values())
    split_of = {uid: name for name in ("train", "val", "test") for uid in meta["splits"][name]["video_uids"]}
    durations = {r.video_uid: r.video_dur for r in read_egoclip(root / "egoclip.csv")}
    seed = int(meta["seed"])
    items = build_qa(videos, split_of, seed)
    write_qa(root / "qa.json", items)
    counts = {f"qa_{s}": sum(q.split == s for q in items) for s in ("train", "val", "test")}
    for split, doc in build_nlq(videos, durations, split_of, float(meta["fps"]), seed).items():
        (root / f"nlq_{split}.json").write_text(json.dumps(doc, indent=1))
        n = sum(len(a["language_queries"]) for v in doc["videos"] for c in v["clips"] for a in c["annotations"])
        counts[f"nlq_{split}"] = n
    return counts

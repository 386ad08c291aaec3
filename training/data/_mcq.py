"""Builds EgoMCQ questions from generated clips (private; reference §4, EgoMCQ).

Each query clip gets one question of one of two kinds. Inter-video (types 1): the query's own clip plus four
clips from four other videos. Intra-video (types 2): the query's clip plus four clips of the same video, taken
among the temporally nearest ones, which share the counter, objects and lighting, hence the harder task.
Distractors never carry the query's text or its (verb, noun) pair, so exactly one choice is right.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from egovlpv2_edge.training.data.egoclip import MCQ_INTER, MCQ_INTRA, ClipRecord, MCQEntry


def _differs(a: ClipRecord, b: ClipRecord) -> bool:
    return a.clip_text != b.clip_text and (a.tag_verb, a.tag_noun[:1]) != (b.tag_verb, b.tag_noun[:1])


def _inter(q: ClipRecord, by_video: dict[str, list[ClipRecord]], rng: np.random.Generator) -> list[ClipRecord] | None:
    others = [u for u in sorted(by_video) if u != q.video_uid]
    if len(others) < 4:
        return None
    out = []
    for u in (others[i] for i in rng.permutation(len(others))):
        cands = [c for c in by_video[u] if _differs(q, c)]
        if cands:
            out.append(cands[int(rng.integers(len(cands)))])
        if len(out) == 4:
            return out
    return None


def _intra(q: ClipRecord, by_video: dict[str, list[ClipRecord]], rng: np.random.Generator) -> list[ClipRecord] | None:
    cands = sorted((c for c in by_video[q.video_uid] if _differs(q, c)), key=lambda c: abs(c.clip_start - q.clip_start))
    texts: dict[str, ClipRecord] = {}
    for c in cands[:12]:
        texts.setdefault(c.clip_text, c)  # one clip per distinct text, so the choices are distinguishable
    pool = list(texts.values())
    if len(pool) < 4:
        return None
    return [pool[i] for i in sorted(rng.choice(len(pool), size=4, replace=False))]


def build_egomcq(
    records: Sequence[ClipRecord], queries: Sequence[ClipRecord], rng: np.random.Generator
) -> list[MCQEntry]:
    """One question per query clip, inter or intra with equal odds (falling back to the other kind if needed).

    Args:
        records: All clips (distractors are drawn from these).
        queries: The clips to ask about (val and test clips).
        rng: Source of randomness.

    Returns:
        The questions, in query order.
    """
    by_video: dict[str, list[ClipRecord]] = defaultdict(list)
    for r in records:
        by_video[r.video_uid].append(r)
    out = []
    for q in queries:
        kinds = [MCQ_INTER, MCQ_INTRA] if rng.random() < 0.5 else [MCQ_INTRA, MCQ_INTER]
        for kind in kinds:
            distract = (_inter if kind == MCQ_INTER else _intra)(q, by_video, rng)
            if distract is not None:
                answer = int(rng.integers(5))
                choices = [*distract[:answer], q, *distract[answer:]]
                out.append(MCQEntry(query=q, choices=tuple(choices), answer=answer, types=kind))
                break
    return out

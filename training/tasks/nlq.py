"""Natural-language grounding (EgoNLQ style, reference §3): per-window features of a long video and a span head.

As in the reference the backbone is frozen: a clip is cut into consecutive windows of ``window_s`` seconds
(F frames each); the lower layers run once per window (:func:`window_tokens`, which also gives each window's
dual-mode embedding, hence its similarity to a query). With fused features (the reference's input), for each
query the top layers run fused with the query over every window (:func:`query_features`), giving one
fusion-normed video CLS per window ``(N, Dv)``; like VSLNet, the head may also read the query's dual-mode token
states. A :class:`~egovlpv2_edge.training.tasks.heads.SpanHead` over the windows (their positions, their
similarity to the query and whichever of those it was built to read) predicts start and end windows
(cross-entropy on both, VSLNet style); :func:`decode_spans` turns the logits into ranked windows in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from egovlpv2_edge.model import EgoVLPv2
from egovlpv2_edge.preprocess import eval_transform
from egovlpv2_edge.tokenizer import Tokenizer
from egovlpv2_edge.training.data.nlq import NLQClip, window_starts
from egovlpv2_edge.training.data.video import ChunkedVideoStore, sample_times
from egovlpv2_edge.training.distributed import all_gather_indexed
from egovlpv2_edge.training.tasks.metrics import span_iou

__all__ = ["QueryFeatures", "decode_spans", "extract_features", "query_features", "query_lower", "query_text",
           "span_loss", "span_targets", "window_tokens"]  # fmt: skip


@dataclass
class QueryFeatures:
    """One query's per-window features and its ground truth (clip time, seconds)."""

    features: torch.Tensor  # (N, Dv)
    gt: tuple[float, float]
    duration: float
    query: str
    clip_uid: str
    text: torch.Tensor | None = None  # the query's dual-mode token states (L, Dt)
    text_mask: torch.Tensor | None = None  # (L,) True = real token
    sim: torch.Tensor | None = None  # dual-mode cosine of the query to each window (N,)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def window_tokens(model: EgoVLPv2, store: ChunkedVideoStore, clip: NLQClip, window_s: float,
                  batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Tokens entering the fused layers for every window of ``clip`` ``(N, T, Dv)`` (fusion stream) and each
    window's normalised dual-mode embedding ``(N, E)``."""
    v = model.cfg.video
    starts = window_starts(clip.duration, window_s)
    last = clip.video_start + max(clip.duration - 1e-3, 0.0)
    out, emb = [], []
    for i in range(0, len(starts), batch):
        clips = []
        for s in starts[i : i + batch]:
            times = np.minimum(sample_times(s, s + window_s, v.num_frames, "eval") + clip.video_start, last)
            clips.append(eval_transform(store.read_frames(clip.video_uid, times), v.img_size))
        frames = torch.from_numpy(np.stack(clips)).to(_device(model))  # (b, F, 3, H, W)
        tokens = model.video_lower(frames, "fusion")
        out.append(tokens)
        if model.fusion_cls_token is None:  # the fusion stream shares the dual CLS: its lower tokens are the dual ones
            emb.append(model.video_upper(tokens, normalize=True, motion=model.video_motion(frames)))
        else:
            emb.append(model.encode_video(frames, normalize=True))
    return torch.cat(out), torch.cat(emb)


@torch.no_grad()
def query_lower(model: EgoVLPv2, tokenizer: Tokenizer, query: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The query's hidden states entering the first fused text layer ``(1, L, Dt)`` and its mask ``(1, L)``."""
    tok = tokenizer.encode([query], max_length=model.cfg.text.max_length)
    ids = torch.from_numpy(tok.input_ids).to(_device(model))
    mask = torch.from_numpy(tok.attention_mask).to(_device(model))
    return model.text_lower(ids, mask), mask


@torch.no_grad()
def query_text(model: EgoVLPv2, text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The query's dual-mode token states ``(L, Dt)`` and normalised embedding ``(E,)`` from :func:`query_lower`."""
    states = model.text_upper_tokens(text, mask)  # (1, L, Dt)
    return states[0], model.text_embedding(states, mask, normalize=True)[0]


@torch.no_grad()
def query_features(model: EgoVLPv2, tokens: torch.Tensor, text: torch.Tensor, mask: torch.Tensor,
                   batch: int = 64) -> torch.Tensor:  # fmt: skip
    """Fuse one query (:func:`query_lower`) with every window's tokens ``(N, T, Dv)``: fusion-normed video CLS per
    window ``(N, Dv)``."""
    out = []
    for i in range(0, len(tokens), batch):
        v = tokens[i : i + batch]
        n = v.shape[0]
        fused_v, _ = model.fuse_upper(v, text.expand(n, -1, -1), mask.expand(n, -1))
        out.append(model.fusion_norm(fused_v)[:, 0])
    return torch.cat(out)


def extract_features(model: EgoVLPv2, tokenizer: Tokenizer, store: ChunkedVideoStore, clips: Sequence[NLQClip],
                     window_s: float, max_queries: int = 0, progress: bool = True,
                     shard: tuple[int, int] = (0, 1), fused: bool = True) -> list[QueryFeatures]:  # fmt: skip
    """Frozen-backbone features of every query of ``clips`` (at most ``max_queries`` in all when > 0).

    With ``fused=False`` the fused pass (the top layers once per query and window, most of the cost) is skipped
    and ``features`` is empty ``(N, 0)``: for a span head that reads only the similarity, positions and query.

    With ``shard=(rank, world)`` inside a process group, each process computes the queries of every
    ``world``-th video and all of them end up with the whole list, in the same order as one process.
    """
    from egovlpv2_edge.progress import progress as progress_bar

    rank, world = shard
    model.eval()
    todo = [(c, q) for c in clips for q in c.queries]
    if max_queries > 0:
        todo = todo[:max_queries]
    order = {uid: k for k, uid in enumerate(dict.fromkeys(c.clip_uid for c, _ in todo))}
    mine = [(i, c, q) for i, (c, q) in enumerate(todo) if order[c.clip_uid] % world == rank]
    out, cached = [], None
    for i, clip, q in progress_bar(mine, desc="NLQ features", disable=not progress, leave=False):
        if cached is None or cached[0] != clip.clip_uid:
            cached = (clip.clip_uid, *window_tokens(model, store, clip, window_s))
        text, mask = query_lower(model, tokenizer, q.query)
        feats = query_features(model, cached[1], text, mask) if fused else cached[1].new_zeros(len(cached[1]), 0)
        states, emb = query_text(model, text, mask)
        sim = cached[2] @ emb  # (N,)
        out.append((i, QueryFeatures(feats.cpu(), (q.start, q.end), clip.duration, q.query, clip.clip_uid,
                                     states.cpu(), mask[0].bool().cpu(), sim.cpu())))  # fmt: skip
    return all_gather_indexed(out, world)


def span_targets(gt: tuple[float, float], n: int, window_s: float) -> tuple[int, int]:
    """Start and end window indices covering the ground-truth window (clamped to ``[0, n - 1]``)."""
    s = min(n - 1, max(0, int(gt[0] // window_s)))
    e = min(n - 1, max(s, int(np.ceil(gt[1] / window_s - 1e-9)) - 1))
    return s, e


def span_loss(start: torch.Tensor, end: torch.Tensor, s: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the start and end logits ``(B, N)`` against window indices ``(B,)``."""
    return F.cross_entropy(start, s) + F.cross_entropy(end, e)


def decode_spans(start: torch.Tensor, end: torch.Tensor, window_s: float, duration: float, k: int = 5,
                 max_windows: int = 0, nms: float = 0.5) -> np.ndarray:  # fmt: skip
    """Ranked windows ``(<=k, 2)`` in seconds from one query's logits ``(N,)``.

    A span (i, j), i <= j, scores ``p_start[i] * p_end[j]``; spans longer than ``max_windows`` (0 = any) are
    dropped; a span overlapping a better one with IoU > ``nms`` is skipped, so the top k are distinct.
    """
    ps, pe = torch.softmax(start.float(), -1), torch.softmax(end.float(), -1)
    score = torch.triu(ps[:, None] * pe[None, :])  # (N, N)
    if max_windows > 0:
        score = torch.tril(score, diagonal=max_windows - 1)
    order = torch.argsort(score.flatten(), descending=True).tolist()
    n = score.shape[0]
    picked: list[list[float]] = []
    for flat in order:
        i, j = divmod(flat, n)
        if j < i or score[i, j] <= 0:
            continue
        span = [i * window_s, min((j + 1) * window_s, duration)]
        if picked and (span_iou(np.asarray(picked), np.asarray(span)) > nms).any():
            continue
        picked.append(span)
        if len(picked) == k:
            break
    return np.asarray(picked, dtype=np.float64).reshape(-1, 2)


def fixed_window_baseline(duration: float, length: float, k: int = 5) -> np.ndarray:
    """The fixed-window baseline: ``k`` windows of ``length`` seconds centred at evenly spaced points.

    The first is centred on the clip (R@1 gets the middle), the rest at ``(i + 0.5) / k`` of the clip.
    """
    centres = [duration / 2] + [(i + 0.5) * duration / k for i in range(k)]
    out = []
    for c in centres:
        s = float(np.clip(c - length / 2, 0.0, max(duration - length, 0.0)))
        span = [s, min(s + length, duration)]
        if span not in out:
            out.append(span)
    return np.asarray(out[:k], dtype=np.float64)

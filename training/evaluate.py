"""Zero-shot evaluation of a pre-trained model: EgoMCQ and text-to-video retrieval (reference Sec. 3).

EgoMCQ scores each of the five candidate clips three ways: **dual** (cosine of the unfused embeddings),
**fusion** (``softmax(VTM)[match]``, gates on) and their sum, the **ensemble** the paper reports; accuracy is
split into inter-video (type 1) and intra-video (type 2) questions. Retrieval ranks every clip of a split for
every narration (R@1/5/10; a hit is the narration's own clip). The **order-pair** test asks whether the model
uses time: for each clip whose verb has a reverse in the taxonomy (pick up / put down, open / close, ...), the
text with the clip's verb must beat the same text with the reverse verb, once with the frames in order and once
played backwards. A model that reads the motion's direction is above 50% in order and below 50% reversed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from egovlpv2_edge.model import EgoVLPv2
from egovlpv2_edge.tokenizer import Tokenizer
from egovlpv2_edge.training.data.dataset import EgoClipDataset, EgoMCQDataset
from egovlpv2_edge.training.data.egoclip import has_reverse_choice
from egovlpv2_edge.training.data.taxonomy import read_nouns, read_verbs, reverse_narrations, reverse_verbs

log = logging.getLogger(__name__)

SCORINGS = ("dual", "fusion", "ensemble")


FRAME_CONTROLS = {"shuffled": "shuffled", "reversed": "reversed (played backwards)"}  # name -> how the frames are


@dataclass(frozen=True)
class FrameControl:
    """The same EgoMCQ questions with each clip's frames reordered: accuracy (percent) per scoring and question
    type, and the paired drop (in order minus reordered) with its 95% half-width, in points."""

    accuracy: dict[str, dict[str, float]]  # scoring -> kind (:data:`MCQ_KINDS`)
    drop: dict[str, dict[str, tuple[float, float]]]  # scoring -> kind -> (drop, 95% half-width)


@dataclass(frozen=True)
class MCQResult:
    """EgoMCQ accuracy (percent) per scoring and question type, with the question counts.

    ``controls`` holds the temporal-order controls that were run (``shuffled``: each clip's frames in a random
    other order; ``reversed``: played backwards), scored on the same questions.
    """

    accuracy: dict[str, dict[str, float]]  # scoring -> kind (:data:`MCQ_KINDS`)
    counts: dict[str, int]  # kind -> questions
    controls: dict[str, FrameControl] = field(default_factory=dict)


# question kinds: "intra_reverse" is the subset of intra questions whose choices include a clip of the answer's
# reverse action (verbs.csv's ``reverse``) on the same object, the ones only the order of the frames decides
MCQ_KINDS = ("inter", "intra", "intra_reverse")


def paired_drop(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """Mean drop ``before - after`` of per-question 0/1 outcomes, in points, and its 95% half-width.

    The same questions are scored both ways, so the interval comes from the per-question differences
    (normal approximation, ``1.96 * sd / sqrt(n)``): a drop is significant when it exceeds the half-width.
    """
    d = np.asarray(before, dtype=np.float64) - np.asarray(after, dtype=np.float64)
    if d.size == 0:
        return 0.0, 0.0
    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else 0.0
    return 100.0 * float(d.mean()), 100.0 * float(half)


def _reorder(video: torch.Tensor, control: str, generator: torch.Generator) -> torch.Tensor:
    """``video`` as a frame-order control presents it (``in_order`` leaves it as it is)."""
    if control == "shuffled":
        return _shuffle_frames(video, generator)
    return video.flip(-4) if control == "reversed" else video


def _shuffle_frames(video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Permute the frame axis of ``(..., F, 3, H, W)`` clips (a control: a model that uses time should suffer)."""
    F_ = video.shape[-4]
    perm = torch.randperm(F_, generator=generator)
    while F_ > 1 and torch.equal(perm, torch.arange(F_)):
        perm = torch.randperm(F_, generator=generator)
    return video.index_select(-4, perm)


@torch.no_grad()
def mcq_scores(model: EgoVLPv2, tokenizer: Tokenizer, text: str, videos: torch.Tensor) -> dict[str, np.ndarray]:
    """Scores of the candidate clips ``(K, F, 3, H, W)`` for one query, per scoring."""
    tok = tokenizer.encode([text] * len(videos), max_length=model.cfg.text.max_length)
    ids, mask = torch.from_numpy(tok.input_ids), torch.from_numpy(tok.attention_mask)
    t = model.encode_text(ids[:1], mask[:1], normalize=True)
    v = model.encode_video(videos, normalize=True)
    dual = (v @ t.T).squeeze(1)
    vtm = model.forward_fusion(videos, ids, mask).vtm_logits
    fusion = torch.softmax(vtm, dim=-1)[:, 1]
    return {"dual": dual.numpy(), "fusion": fusion.numpy(), "ensemble": (dual + fusion).numpy()}


def evaluate_egomcq(
    model: EgoVLPv2,
    tokenizer: Tokenizer,
    data: str | Path,
    *,
    controls: Sequence[str] = (),
    limit: int | None = None,
    seed: int = 0,
) -> MCQResult:
    """EgoMCQ accuracy of ``model`` on ``<data>/egomcq.json``.

    Args:
        model: The model (put in eval mode here).
        tokenizer: Its tokenizer.
        data: Dataset root (``egomcq.json``, ``videos/``, ``meta.json``).
        controls: Temporal-order controls (:data:`FRAME_CONTROLS`): also score every question with each clip's
            frames shuffled and/or reversed, and report the paired drop.
        limit: Evaluate only the first ``limit`` questions.
        seed: Seed of the frame shuffles.

    Raises:
        ValueError: For an unknown control.
    """
    from egovlpv2_edge.progress import progress

    bad = [c for c in controls if c not in FRAME_CONTROLS]
    if bad:
        raise ValueError(f"unknown frame control(s) {bad}; valid: {', '.join(FRAME_CONTROLS)}")
    model.eval()
    root = Path(data)
    v = model.cfg.video
    ds = EgoMCQDataset(root / "egomcq.json", root / "videos", v.num_frames, v.img_size)
    n = len(ds) if limit is None else min(limit, len(ds))
    reverse = reverse_verbs(root)
    gen = torch.Generator().manual_seed(seed)
    orders = ("in_order", *dict.fromkeys(controls))
    correct: dict[str, dict[str, list[bool]]] = {o: {s: [] for s in SCORINGS} for o in orders}
    kinds: list[str] = []
    against_reverse: list[bool] = []
    subset = torch.utils.data.Subset(ds, range(n))
    loader = DataLoader(subset, batch_size=None, num_workers=1, prefetch_factor=4)  # decode while the model runs
    for k, item in enumerate(progress(loader, total=n, desc="EgoMCQ", leave=False)):
        kinds.append("inter" if item["types"] == 1 else "intra")
        entry = ds.entries[k]
        against_reverse.append(kinds[-1] == "intra" and has_reverse_choice(entry.query, entry.choices, reverse))
        for order in orders:
            videos = _reorder(item["video"], order, gen)
            for scoring, scores in mcq_scores(model, tokenizer, item["text"], videos).items():
                correct[order][scoring].append(bool(np.argmax(scores) == item["answer"]))
    kind_arr = np.array(kinds)
    masks = {"inter": kind_arr == "inter", "intra": kind_arr == "intra",
             "intra_reverse": np.array(against_reverse, dtype=bool)}  # fmt: skip
    counts = {k: int(m.sum()) for k, m in masks.items()}

    def outcomes(order: str, scoring: str, kind: str) -> np.ndarray:
        return np.array(correct[order][scoring], dtype=bool)[masks[kind]]

    def accuracy(order: str) -> dict[str, dict[str, float]]:
        return {s: {k: 100.0 * float(outcomes(order, s, k).mean()) if counts[k] else 0.0 for k in counts}
                for s in SCORINGS}  # fmt: skip

    def control(order: str) -> FrameControl:
        drop = {s: {k: paired_drop(outcomes("in_order", s, k), outcomes(order, s, k)) for k in counts}
                for s in SCORINGS}  # fmt: skip
        return FrameControl(accuracy(order), drop)

    return MCQResult(accuracy("in_order"), counts, {o: control(o) for o in orders[1:]})


@torch.no_grad()
def evaluate_retrieval(
    model: EgoVLPv2, tokenizer: Tokenizer, data: str | Path, split: str = "test", batch_size: int = 16
) -> dict[str, float]:
    """Text-to-video R@1/5/10 (percent) over the clips of ``split``, dual mode."""
    model.eval()
    root = Path(data)
    v = model.cfg.video
    ds = EgoClipDataset(root / "egoclip.csv", root / "videos", v.num_frames, v.img_size, split=split, mode="eval")
    videos, texts = [], []
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=_collate_eval)
    for frames, text in loader:
        videos.append(model.encode_video(frames, normalize=True))
        texts += text
    V = torch.cat(videos)
    tok = tokenizer.encode(texts, max_length=model.cfg.text.max_length)
    T = model.encode_text(torch.from_numpy(tok.input_ids), torch.from_numpy(tok.attention_mask), normalize=True)
    ranks = retrieval_ranks(T @ V.T)
    return {f"R@{k}": 100.0 * float((ranks < k).float().mean()) for k in (1, 5, 10)}


@dataclass(frozen=True)
class OrderResult:
    """Order-pair accuracy (percent): the clip's verb beats its reverse, frames in order and reversed."""

    clips: int  # clips of the split whose verb has a reverse
    in_order: float
    reversed: float
    drop: tuple[float, float] = (0.0, 0.0)  # in order minus reversed, points, and its paired 95% half-width


@torch.no_grad()
def evaluate_order_pairs(
    model: EgoVLPv2, tokenizer: Tokenizer, data: str | Path, split: str = "test", batch_size: int = 16
) -> OrderResult:
    """Dual-mode order-pair test over the clips of ``split`` (texts from the dataset's verb and noun tables).

    Raises:
        ValueError: If no clip of the split has a verb with a reverse.
    """
    model.eval()
    root = Path(data)
    verbs, nouns = read_verbs(root / "verbs.csv"), read_nouns(root / "nouns.csv")
    reverse = reverse_verbs(root)
    reverse_text = reverse_narrations(root)  # (verb, noun) -> the narration with the reverse verb
    v = model.cfg.video
    ds = EgoClipDataset(root / "egoclip.csv", root / "videos", v.num_frames, v.img_size, split=split, mode="eval")
    keep = [i for i, r in enumerate(ds.records) if len(r.tag_verb) == 1 and r.tag_verb[0] in reverse]
    if not keep:
        raise ValueError(f"no clip of split {split!r} has a verb with a reverse in {root / 'verbs.csv'}")
    wins: dict[str, list[bool]] = {"in_order": [], "reversed": []}
    subset = torch.utils.data.Subset(ds, keep)
    loader = DataLoader(subset, batch_size=batch_size, collate_fn=lambda b: b)
    for batch in loader:
        right, wrong = [], []
        for item in batch:
            verb, noun = int(item["verb"].argmax()), int(item["noun"].argmax())
            right.append("#C C " + verbs[verb]["text"].format(n=nouns[noun]["name"]))
            wrong.append(reverse_text[(verb, noun)])
        tok = tokenizer.encode(right + wrong, max_length=model.cfg.text.max_length)
        t = model.encode_text(torch.from_numpy(tok.input_ids), torch.from_numpy(tok.attention_mask), normalize=True)
        t_right, t_wrong = t[: len(batch)], t[len(batch) :]
        frames = torch.stack([item["video"] for item in batch])
        for name, clips in (("in_order", frames), ("reversed", frames.flip(1))):
            emb = model.encode_video(clips, normalize=True)
            wins[name] += ((emb * t_right).sum(-1) > (emb * t_wrong).sum(-1)).tolist()
    right, backwards = np.array(wins["in_order"]), np.array(wins["reversed"])
    return OrderResult(len(keep), 100.0 * right.mean(), 100.0 * backwards.mean(), paired_drop(right, backwards))


def retrieval_ranks(sim: torch.Tensor) -> torch.Tensor:
    """0-based rank of the diagonal item in each row of ``sim`` ``(N, N)`` (ties count against it)."""
    diag = sim.diagonal().unsqueeze(1)
    return (sim > diag).sum(dim=1) + (sim == diag).sum(dim=1) - 1


def _collate_eval(batch: list[dict]) -> tuple[torch.Tensor, list[str]]:
    return torch.stack([b["video"] for b in batch]), [b["text"] for b in batch]

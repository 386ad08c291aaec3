"""Video question answering data (EgoTaskQA style, reference §3): the synthetic QA split, its file and dataset.

A question refers to a *window* of two or three consecutive actions of a synthetic video (the clip is that
window; frames are sampled across it), so one action's appearance is not enough to answer it: the question
names one action by another property (its verb, its object, its neighbour in time) and asks for the rest.
Five question types, answers from one closed vocabulary:

- ``object``: "what did C pick up?" (the window has several objects; the verb picks the action);
- ``verb``: "what did C do to the red cup?" (several verbs; the object picks the action);
- ``colour``: "what colour is the thing C opens?";
- ``count``: "how many different objects did C handle?";
- ``order``: "what did C do right after C opens the green box?" or "which object did C handle before C
  closes the green box?", asked only in three-action windows whose other two actions differ in what is asked,
  so that leaving out the named action does not give the answer (the shuffled-frames control targets these).

Every question also carries five choices of the answer's kind (hard distractors from the window first) for
multiple-choice answering by VTM score. File layout (``qa.json``)::

    {"version": 1, "answer_set": [...], "types": [...],
     "items": [{"qid", "video_uid", "start", "end", "actions", "type", "question", "answer", "answer_kind",
                "choices", "answer_choice", "split"}, ...]}
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from egovlpv2_edge.training.data.taxonomy import NOUNS, VERBS, base_phrase, noun_by_key, verb_by_key

__all__ = [
    "ANSWER_KINDS",
    "QUESTION_TYPES",
    "QADataset",
    "QAFormatError",
    "QAItem",
    "QASet",
    "answer_vocabulary",
    "base_phrase",
    "build_qa",
    "read_qa",
    "verb_answer",
    "write_qa",
]

QUESTION_TYPES = ("object", "verb", "colour", "count", "order")
ANSWER_KINDS = ("noun", "verb", "colour", "count")
COUNT_WORDS = ("zero", "one", "two", "three", "four")
QA_VERSION = 1
_SPECIAL_VERB_ANSWERS = {"rotate_cw": "turn clockwise", "rotate_ccw": "turn anticlockwise"}


class QAFormatError(ValueError):
    """A malformed ``qa.json`` (the message names the file, the item and the problem)."""


@dataclass(frozen=True)
class QAItem:
    """One question about a window ``[start, end]`` of a video.

    Attributes:
        qid: Unique id.
        video_uid: Video the window comes from.
        start: Window start in seconds (start of its first action).
        end: Window end in seconds (end of its last action).
        actions: Action indices (within the video) the window spans.
        type: One of :data:`QUESTION_TYPES`.
        question: The question text.
        answer: The answer, a word of the answer set.
        answer_kind: One of :data:`ANSWER_KINDS` (which family the choices come from).
        choices: Candidate answers for multiple choice (empty when the question has none).
        answer_choice: Index of ``answer`` in ``choices`` (-1 without choices).
        split: ``train``, ``val`` or ``test`` (the video's split).
    """

    qid: str
    video_uid: str
    start: float
    end: float
    actions: tuple[int, ...]
    type: str
    question: str
    answer: str
    answer_kind: str
    choices: tuple[str, ...]
    answer_choice: int
    split: str

    def to_json(self) -> dict[str, Any]:
        """The ``qa.json`` item layout."""
        d = asdict(self)
        d["actions"], d["choices"] = list(self.actions), list(self.choices)
        return d


@dataclass(frozen=True)
class QASet:
    """A read ``qa.json``: the closed answer vocabulary and the items."""

    answer_set: tuple[str, ...]
    items: tuple[QAItem, ...]

    def split(self, name: str) -> list[QAItem]:
        """Items of one split."""
        return [q for q in self.items if q.split == name]


def verb_answer(verb_key: str) -> str:
    """The answer word(s) for a verb, e.g. ``"pick up"``, ``"turn clockwise"``."""
    return _SPECIAL_VERB_ANSWERS.get(verb_key, verb_key.replace("_", " "))


def _third_phrase(verb_key: str, obj: str) -> str:
    return " ".join(verb_by_key(verb_key).templates[0].replace("the {n}", obj).split())


def answer_vocabulary() -> tuple[str, ...]:
    """The closed answer set: verbs, scene-object names, colours and counts (sorted, duplicates merged)."""
    words = {verb_answer(v.key) for v in VERBS}
    words |= {n.name for n in NOUNS if not n.is_tool}
    words |= {n.colour for n in NOUNS if not n.is_tool}
    words |= set(COUNT_WORDS[1:])
    return tuple(sorted(words))


def _family(kind: str) -> list[str]:
    if kind == "verb":
        return [verb_answer(v.key) for v in VERBS]
    if kind == "noun":
        return [n.name for n in NOUNS if not n.is_tool]
    if kind == "colour":
        return sorted({n.colour for n in NOUNS if not n.is_tool})
    return list(COUNT_WORDS[1:])


def _candidates(window: Sequence[dict]) -> dict[str, list[tuple[str, str, str, list[str]]]]:
    """Answerable questions of one window by type: (question, answer, answer kind, hard distractors)."""
    verbs = Counter(a["verb"] for a in window)
    nouns = Counter(a["noun"] for a in window)
    pairs = Counter((a["verb"], a["noun"]) for a in window)
    names = [noun_by_key(a["noun"]).name for a in window]
    verb_words = [verb_answer(a["verb"]) for a in window]
    colours = [a["colour"] for a in window]
    out: dict[str, list[tuple[str, str, str, list[str]]]] = {t: [] for t in QUESTION_TYPES}
    for a, name in zip(window, names, strict=True):
        if verbs[a["verb"]] == 1 and len(nouns) > 1:
            out["object"].append((f"what did C {base_phrase(a['verb'], '')}?", name, "noun", names))
        if nouns[a["noun"]] == 1 and len(verbs) > 1:
            out["verb"].append((f"what did C do to the {name}?", verb_answer(a["verb"]), "verb", verb_words))
        if verbs[a["verb"]] == 1 and len(set(colours)) > 1:
            q = f"what colour is the thing C {_third_phrase(a['verb'], '')}?"
            out["colour"].append((q, a["colour"], "colour", colours))
    count = COUNT_WORDS[len(nouns)]
    out["count"].append(("how many different objects did C handle?", count, "count", []))
    for k, (a, b) in enumerate(zip(window, window[1:], strict=False)):
        a_name, b_name = noun_by_key(a["noun"]).name, noun_by_key(b["noun"]).name
        # only where the window's other actions offer more than one candidate: the answer cannot be found by
        # leaving out the named action (a two-action window never qualifies), only by the actions' order
        after = {x["verb"] for j, x in enumerate(window) if j != k}
        before = {x["noun"] for j, x in enumerate(window) if j != k + 1}
        if pairs[(a["verb"], a["noun"])] == 1 and a["verb"] != b["verb"] and len(after) > 1:
            q = f"what did C do right after C {_third_phrase(a['verb'], 'the ' + a_name)}?"
            out["order"].append((q, verb_answer(b["verb"]), "verb", verb_words))
        if pairs[(b["verb"], b["noun"])] == 1 and a["noun"] != b["noun"] and len(before) > 1:
            q = f"which object did C handle before C {_third_phrase(b['verb'], 'the ' + b_name)}?"
            out["order"].append((q, a_name, "noun", names))
    return out


def _choices(answer: str, kind: str, hard: Sequence[str], rng: np.random.Generator, n: int = 5) -> tuple[list, int]:
    """``n`` choices of the answer's kind: the window's other values first, then random ones; shuffled."""
    pool = [w for w in dict.fromkeys(hard) if w != answer]
    rest = [w for w in _family(kind) if w != answer and w not in pool]
    rng.shuffle(rest)
    picked = [answer, *(pool + rest)[: n - 1]]
    order = rng.permutation(len(picked))
    choices = [picked[i] for i in order]
    return choices, choices.index(answer)


def build_qa(videos: Sequence[Sequence[dict]], video_split: dict[str, str], seed: int,
             every_train_question: bool = True) -> list[QAItem]:  # fmt: skip
    """Questions over windows of 2-3 consecutive actions.

    Each window gets one question of the answerable type asked least so far (so the types are balanced in every
    split); a window of a training video also gets every other question it can answer (``every_train_question``):
    several labels per clip, where one per clip leaves a head to memorise the few thousand training clips.

    Args:
        videos: Per video, its action facts in order (the rows of ``actions.jsonl``).
        video_split: ``video_uid -> split``; videos without a split are skipped.
        seed: Seed of the window lengths, question choice and choice order.
        every_train_question: Ask a training window every question it can answer, not one.

    Returns:
        The items, in video order then window order (a window's balanced question first).
    """
    rng = np.random.default_rng([seed, 7001])
    items: list[QAItem] = []
    asked = Counter({t: 0 for t in QUESTION_TYPES})
    for actions in videos:
        if not actions or actions[0]["video_uid"] not in video_split:
            continue
        split = video_split[actions[0]["video_uid"]]
        for i in range(len(actions) - 1):
            length = int(rng.integers(2, 4))
            window = actions[i : i + length]
            if len(window) < 2:
                continue
            cands = _candidates(window)
            # the answerable type asked least so far (ties drawn): "count" is answerable in every window and
            # "order" in few, so a uniform draw would ask mostly counts and too few order questions to measure
            types = [t for t in QUESTION_TYPES if cands[t]]
            fewest = min(asked[t] for t in types)
            types = [t for t in types if asked[t] == fewest]
            qtype = types[int(rng.integers(len(types)))]
            asked[qtype] += 1
            chosen = [(qtype, cands[qtype][int(rng.integers(len(cands[qtype])))])]
            if split == "train" and every_train_question:
                chosen += [(t, c) for t in QUESTION_TYPES for c in cands[t]]
            seen: set[str] = set()
            for qt, (question, answer, kind, hard) in chosen:
                if question in seen:
                    continue
                seen.add(question)
                choices, index = _choices(answer, kind, hard, rng)
                items.append(QAItem(
                    qid=f"qa_{len(items):06d}", video_uid=window[0]["video_uid"], start=float(window[0]["start"]),
                    end=float(window[-1]["end"]), actions=tuple(int(a["index"]) for a in window), type=qt,
                    question=question, answer=answer, answer_kind=kind, choices=tuple(choices),
                    answer_choice=index, split=split,
                ))  # fmt: skip
    return items


def write_qa(path: str | Path, items: Sequence[QAItem], answer_set: Sequence[str] | None = None) -> None:
    """Write ``qa.json`` (answer set defaults to :func:`answer_vocabulary`)."""
    payload = {"version": QA_VERSION, "answer_set": list(answer_set or answer_vocabulary()),
               "types": list(QUESTION_TYPES), "items": [q.to_json() for q in items]}  # fmt: skip
    Path(path).write_text(json.dumps(payload, indent=1))


def _item(raw: Any, answers: set[str]) -> QAItem:
    need = {"qid", "video_uid", "start", "end", "question", "answer", "type", "split"}
    if not isinstance(raw, dict) or not need <= set(raw):
        raise ValueError(f"must be an object with keys {sorted(need)}")
    if raw["answer"] not in answers:
        raise ValueError(f"answer {raw['answer']!r} is not in the answer_set")
    if raw["type"] not in QUESTION_TYPES:
        raise ValueError(f"type {raw['type']!r}; valid: {', '.join(QUESTION_TYPES)}")
    if not float(raw["end"]) > float(raw["start"]):
        raise ValueError(f"window [{raw['start']}, {raw['end']}] is empty")
    choices = tuple(raw.get("choices") or ())
    index = int(raw.get("answer_choice", -1))
    if choices and not (0 <= index < len(choices) and choices[index] == raw["answer"]):
        raise ValueError(f"answer_choice {index} does not point at the answer {raw['answer']!r} in {choices}")
    return QAItem(qid=str(raw["qid"]), video_uid=str(raw["video_uid"]), start=float(raw["start"]),
                  end=float(raw["end"]), actions=tuple(raw.get("actions", ())), type=raw["type"],
                  question=str(raw["question"]), answer=raw["answer"], answer_kind=str(raw.get("answer_kind", "")),
                  choices=choices, answer_choice=index if choices else -1, split=str(raw["split"]))  # fmt: skip


def read_qa(path: str | Path) -> QASet:
    """Read and validate ``qa.json``.

    Raises:
        FileNotFoundError: If the file does not exist.
        QAFormatError: Naming the file and the first bad item.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"QA file {path} does not exist; generate it with 'egovlp data synth' (or "
            "egovlpv2_edge.training.data.synth.write_task_files on an existing dataset)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise QAFormatError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("answer_set"), list) or "items" not in data:
        raise QAFormatError(f"{path}: top level must be an object with 'answer_set' (list) and 'items'")
    answers = tuple(data["answer_set"])
    items = []
    for i, raw in enumerate(data["items"]):
        try:
            items.append(_item(raw, set(answers)))
        except (ValueError, KeyError, TypeError) as err:
            raise QAFormatError(f"{path} item {i}: {err}") from None
    return QASet(answer_set=answers, items=tuple(items))


class QADataset(Dataset):
    """QA items of one split with their window clips.

    Items: ``video`` (F, 3, H, W) sampled across the whole window, ``question``, ``answer`` (index into the
    answer set), ``type``, ``choices`` (texts) and ``answer_choice``.

    Args:
        qa: The read ``qa.json``.
        video_root: Chunked video store root.
        split: ``train``, ``val`` or ``test``.
        num_frames: Frames per clip F.
        size: Output frame side.
        mode: ``"train"`` (random frame per bin, random crop, no flip) or ``"eval"``.
        meta: ``meta.json`` contents (fps, chunk length); defaults when empty.
        seed: Seed of the train-time sampling.
    """

    def __init__(self, qa: QASet, video_root: str | Path, split: str, num_frames: int, size: int,
                 mode: str = "eval", meta: dict | None = None, seed: int = 0) -> None:  # fmt: skip
        from egovlpv2_edge.training.data.dataset import _ClipReader

        if mode not in ("train", "eval"):
            raise ValueError(f"mode={mode!r} is not one of 'train', 'eval'")
        self.items = qa.split(split)
        if not self.items:
            raise ValueError(f"no QA items in split {split!r}; splits present: {sorted({q.split for q in qa.items})}")
        self.index = {a: i for i, a in enumerate(qa.answer_set)}
        self.reader = _ClipReader(video_root, num_frames, size, meta or {}, None, None)
        self.mode, self.seed, self.epoch = mode, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Change the train-time sampling for a new epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def window(self, i: int) -> tuple[str, float, float]:
        """Item ``i``'s clip as ``(video_uid, start, end)``: items with the same window share their eval-mode clip."""
        q = self.items[i]
        return q.video_uid, q.start, q.end

    def windows(self) -> tuple[list[int], list[int]]:
        """One item per distinct window (its first, in order) and, for every item, the position of its window in
        that list: a training window carries several questions, and a frozen encoder needs each clip once."""
        pos: dict[tuple[str, float, float], int] = {}
        first: list[int] = []
        of = []
        for i in range(len(self.items)):
            key = self.window(i)
            if key not in pos:
                pos[key] = len(first)
                first.append(i)
            of.append(pos[key])
        return first, of

    def fields(self, i: int) -> dict[str, Any]:
        """Item ``i`` without its clip (question, answer index, type, choices, answer_choice, qid)."""
        q = self.items[i]
        return {"question": q.question, "answer": self.index[q.answer], "type": q.type, "choices": list(q.choices),
                "answer_choice": q.answer_choice, "qid": q.qid}  # fmt: skip

    def __getitem__(self, i: int) -> dict[str, Any]:
        from egovlpv2_edge.training.data.egoclip import ClipRecord

        q = self.items[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        rec = ClipRecord(clip_idx=-1, video_uid=q.video_uid, video_dur=q.end, narration_source="qa",
                         narration_ind=-1, narration_time=(q.start + q.end) / 2, clip_start=q.start, clip_end=q.end,
                         clip_text=q.question, tag_verb=(), tag_noun=())  # fmt: skip
        video = self.reader.load(rec, self.mode, rng, hflip=False)  # a flip would swap left/right answers
        return {"video": video, **self.fields(i)}


def collate_qa(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack videos and answers; keep texts, types and choices as lists."""
    return {
        "video": torch.stack([b["video"] for b in batch]),  # (B, F, 3, H, W)
        "answer": torch.tensor([b["answer"] for b in batch]),
        "question": [b["question"] for b in batch],
        "type": [b["type"] for b in batch],
        "choices": [b["choices"] for b in batch],
        "answer_choice": torch.tensor([b["answer_choice"] for b in batch]),
        "qid": [b["qid"] for b in batch],
    }

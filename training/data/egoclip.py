"""Read and write EgoClip (``egoclip.csv``) and EgoMCQ (``egomcq.json``) with validation.

Formats follow the reference §4: EgoClip is tab-separated with the columns in ``EGOCLIP_COLUMNS`` and tags
as Python-list strings (``"[93]"``; parsed here with ``ast.literal_eval``, never ``eval``). EgoMCQ is a dict
keyed ``"0".."N"``; each entry holds a ``query`` clip record, five ``choices`` keyed ``"0".."4"``, the
``answer`` index and ``types`` (1 = inter-video, 2 = intra-video).

A malformed row raises ``EgoClipFormatError`` naming the file, line and problem; with ``skip_bad=True`` each
bad row is logged as a warning, skipped, and the count is returned (``EgoClipTable.skipped``) and logged.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EGOCLIP_COLUMNS = (
    "clip_idx", "video_uid", "video_dur", "narration_source", "narration_ind", "narration_time",
    "clip_start", "clip_end", "clip_text", "tag_verb", "tag_noun",
)  # fmt: skip
MCQ_INTER, MCQ_INTRA = 1, 2
_FIX = "fix the row, or skip bad rows with skip_bad=true (egovlp train) / skip_bad=True (Python)"


class EgoClipFormatError(ValueError):
    """A malformed ``egoclip.csv`` file or row (the message names the file, line and problem)."""


class EgoMCQFormatError(ValueError):
    """A malformed ``egomcq.json`` entry (the message names the file, key and problem)."""


@dataclass(frozen=True)
class ClipRecord:
    """One EgoClip row: a narrated clip of a video.

    Attributes:
        clip_idx: Row index in ``egoclip.csv``.
        video_uid: Video the clip comes from.
        video_dur: Length of that video in seconds.
        narration_source: Annotation pass, e.g. ``"narration_pass_1"``.
        narration_ind: Index of the narration in the video.
        narration_time: Narration timestamp in seconds (the clip window is centred on it).
        clip_start: Clip start in seconds.
        clip_end: Clip end in seconds.
        clip_text: The narration, fed as-is (``"#C C picks up the red cup"``).
        tag_verb: Verb class ids.
        tag_noun: Noun class ids.
    """

    clip_idx: int
    video_uid: str
    video_dur: float
    narration_source: str
    narration_ind: int
    narration_time: float
    clip_start: float
    clip_end: float
    clip_text: str
    tag_verb: tuple[int, ...]
    tag_noun: tuple[int, ...]

    @property
    def segment_id(self) -> str:
        """Scene-aware negative bucket: ``video_uid + "_" + floor(narration_time / 60)`` (reference §2)."""
        return f"{self.video_uid}_{int(self.narration_time // 60)}"

    def to_row(self) -> list[str]:
        """Cells in ``EGOCLIP_COLUMNS`` order (tags as Python-list strings)."""
        d = asdict(self)
        d["tag_verb"], d["tag_noun"] = str(list(self.tag_verb)), str(list(self.tag_noun))
        return [str(d[c]) for c in EGOCLIP_COLUMNS]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with every EgoClip field (tags as lists)."""
        d = asdict(self)
        d["tag_verb"], d["tag_noun"] = list(self.tag_verb), list(self.tag_noun)
        return d


def _tags(text: str, column: str) -> tuple[int, ...]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"column {column!r} = {text!r} is not a Python list like [3, 7]") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise ValueError(f"column {column!r} = {text!r} must be a list of non-negative ints like [3, 7]")
    return tuple(value)


def _number(cells: Mapping[str, Any], column: str, kind: type = float) -> Any:
    raw = cells.get(column)
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ValueError(f"column {column!r} = {raw!r} is not {'an int' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"column {column!r} = {raw!r} is not finite")
    return value


def record_from_mapping(cells: Mapping[str, Any]) -> ClipRecord:
    """Build and validate a ``ClipRecord`` from named cells (csv strings or JSON values).

    Raises:
        ValueError: Naming the column and value at fault.
    """
    uid = str(cells.get("video_uid") or "").strip()
    if not uid:
        raise ValueError("column 'video_uid' is empty")
    tv, tn = cells.get("tag_verb", "[]"), cells.get("tag_noun", "[]")
    rec = ClipRecord(
        clip_idx=_number(cells, "clip_idx", int), video_uid=uid, video_dur=_number(cells, "video_dur"),
        narration_source=str(cells.get("narration_source", "")), narration_ind=_number(cells, "narration_ind", int),
        narration_time=_number(cells, "narration_time"), clip_start=_number(cells, "clip_start"),
        clip_end=_number(cells, "clip_end"), clip_text=str(cells.get("clip_text") or ""),
        tag_verb=_tags(tv, "tag_verb") if isinstance(tv, str) else _tags(repr(list(tv)), "tag_verb"),
        tag_noun=_tags(tn, "tag_noun") if isinstance(tn, str) else _tags(repr(list(tn)), "tag_noun"),
    )  # fmt: skip
    if not rec.clip_text.strip():
        raise ValueError("column 'clip_text' is empty")
    if rec.clip_start < 0 or rec.clip_end <= rec.clip_start:
        raise ValueError(f"clip window [{rec.clip_start}, {rec.clip_end}] must satisfy 0 <= clip_start < clip_end")
    return rec


@dataclass(frozen=True)
class EgoClipTable(Sequence[ClipRecord]):
    """The rows read from one ``egoclip.csv`` (a sequence of ``ClipRecord``) and how many bad rows were skipped."""

    path: Path
    records: tuple[ClipRecord, ...]
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int | slice) -> Any:  # ClipRecord for an int, a tuple of them for a slice
        return self.records[i]

    def __iter__(self) -> Iterator[ClipRecord]:
        return iter(self.records)


def write_egoclip(path: str | Path, records: Iterable[ClipRecord]) -> int:
    """Write records as a tab-separated ``egoclip.csv`` with a header row; returns the number of rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(EGOCLIP_COLUMNS)
        for rec in records:
            w.writerow(rec.to_row())
            n += 1
    return n


def read_egoclip(path: str | Path, *, skip_bad: bool = False) -> EgoClipTable:
    """Read and validate a tab-separated ``egoclip.csv``.

    Args:
        path: The csv file; its first row must name the ``EGOCLIP_COLUMNS``.
        skip_bad: Skip malformed rows with one warning each (and a count at the end) instead of raising.

    Returns:
        The valid rows and the number skipped.

    Raises:
        FileNotFoundError: If the file does not exist.
        EgoClipFormatError: On a bad header, or on the first bad row unless ``skip_bad``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EgoClip file {path} does not exist; generate one with 'egovlp data synth --out DIR'")
    records, skipped = [], 0
    with path.open(newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != EGOCLIP_COLUMNS:
            raise EgoClipFormatError(f"{path} line 1: header {header} must be the columns {list(EGOCLIP_COLUMNS)}")
        for row in reader:
            if not row:
                continue
            try:
                if len(row) != len(EGOCLIP_COLUMNS):
                    raise ValueError(f"expected {len(EGOCLIP_COLUMNS)} tab-separated cells, found {len(row)}")
                records.append(record_from_mapping(dict(zip(EGOCLIP_COLUMNS, row, strict=True))))
            except ValueError as err:
                msg = f"{path} line {reader.line_num}: {err}"
                if not skip_bad:
                    raise EgoClipFormatError(f"{msg}; {_FIX}") from None
                logger.warning("skipping bad row: %s", msg)
                skipped += 1
    if skipped:
        logger.warning("skipped %d bad row(s) of %d in %s", skipped, skipped + len(records), path)
    return EgoClipTable(path=path, records=tuple(records), skipped=skipped)


@dataclass(frozen=True)
class MCQEntry:
    """One EgoMCQ question: pick the clip among five ``choices`` that matches the ``query`` text."""

    query: ClipRecord
    choices: tuple[ClipRecord, ...]
    answer: int
    types: int  # MCQ_INTER (1) or MCQ_INTRA (2)

    def to_json(self) -> dict[str, Any]:
        """The reference JSON layout (choices keyed "0".."4")."""
        return {
            "query": self.query.to_json(),
            "choices": {str(i): c.to_json() for i, c in enumerate(self.choices)},
            "answer": self.answer,
            "types": self.types,
        }


_MCQ_DEFAULTS = {"clip_idx": -1, "video_dur": 0.0, "narration_source": "", "narration_ind": -1, "tag_verb": "[]",
                 "tag_noun": "[]"}  # fmt: skip


def _mcq_entry(raw: Any) -> MCQEntry:
    if not isinstance(raw, dict) or not {"query", "choices", "answer", "types"} <= set(raw):
        raise ValueError("must be an object with 'query', 'choices', 'answer' and 'types'")
    choices = raw["choices"]
    if not isinstance(choices, dict) or sorted(choices) != [str(i) for i in range(len(choices))] or len(choices) != 5:
        raise ValueError(f"'choices' must be 5 records keyed '0'..'4', got keys {sorted(choices)}")

    def rec(c: Any) -> ClipRecord:
        cells = {**_MCQ_DEFAULTS, "narration_time": (c["clip_start"] + c["clip_end"]) / 2, **c}
        return record_from_mapping(cells)

    query, recs = rec(raw["query"]), tuple(rec(choices[str(i)]) for i in range(5))
    answer, types = raw["answer"], raw["types"]
    if not isinstance(answer, int) or not 0 <= answer < 5:
        raise ValueError(f"'answer' = {answer!r} must be an int in 0..4")
    if types not in (MCQ_INTER, MCQ_INTRA):
        raise ValueError(f"'types' = {types!r} must be 1 (inter-video) or 2 (intra-video)")
    if recs[answer].clip_text != query.clip_text:
        raise ValueError(f"answer {answer} text {recs[answer].clip_text!r} differs from query {query.clip_text!r}")
    return MCQEntry(query=query, choices=recs, answer=answer, types=types)


def write_egomcq(path: str | Path, entries: Sequence[MCQEntry]) -> None:
    """Write entries as ``egomcq.json`` keyed ``"0".."N"``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(i): e.to_json() for i, e in enumerate(entries)}, indent=1))


def read_egomcq(path: str | Path) -> list[MCQEntry]:
    """Read and validate ``egomcq.json`` (entries in key order).

    Raises:
        FileNotFoundError: If the file does not exist.
        EgoMCQFormatError: Naming the file and the key of the first bad entry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EgoMCQ file {path} does not exist; generate one with 'egovlp data synth --out DIR'")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EgoMCQFormatError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise EgoMCQFormatError(f"{path}: top level must be an object keyed '0'..'N', got {type(data).__name__}")
    out = []
    for key in sorted(data, key=lambda k: int(k) if str(k).isdigit() else -1):
        try:
            if not str(key).isdigit():
                raise ValueError("keys must be '0'..'N'")
            out.append(_mcq_entry(data[key]))
        except (ValueError, KeyError, TypeError) as err:
            raise EgoMCQFormatError(f"{path} entry {key!r}: {err}") from None
    return out


def has_reverse_choice(query: ClipRecord, choices: Sequence[ClipRecord], reverse: dict[int, dict[str, str]]) -> bool:
    """Whether a choice shows the reverse of the query's action on the same object (its first noun)."""
    rev = reverse.get(query.tag_verb[0]) if query.tag_verb else None
    noun = list(query.tag_noun[:1])
    return rev is not None and any(list(c.tag_verb[:1]) == [int(rev["id"])] and list(c.tag_noun[:1]) == noun
                                   for c in choices)  # fmt: skip

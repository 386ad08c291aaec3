"""The synthetic dataset's verb/noun taxonomy, its CSV files and multi-hot tag vectors.

Ego4D tags every EgoClip narration with verb and noun classes (118 verbs, 582 nouns) and EgoNCE treats two
clips as positives when they share a verb and a noun class (reference §2, EgoNCE). The synthetic data keeps
that structure with a smaller vocabulary chosen to be *visually* separable: verbs differ by motion (six
pairs differ only in temporal order, e.g. pick up / put down), nouns differ by shape, colour and texture.

Each verb names the motion program the renderer runs (``program``), an optional object property it needs
(``requires``, e.g. only ``openable`` nouns can be opened) and, for order pairs, its reverse. The files
``verbs.csv`` and ``nouns.csv`` are written as ``id,key,...`` so tag ids in ``egoclip.csv`` can be decoded.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "NOUNS",
    "ORDER_PAIRS",
    "VERBS",
    "Noun",
    "Verb",
    "base_phrase",
    "compatible",
    "compatible_nouns",
    "multi_hot",
    "noun_by_key",
    "read_nouns",
    "read_verbs",
    "reverse_narrations",
    "reverse_verbs",
    "verb_by_key",
    "write_taxonomy",
]


@dataclass(frozen=True)
class Verb:
    """One verb class.

    Attributes:
        id: Tag id (row in ``verbs.csv``).
        key: Stable identifier, e.g. ``"pick_up"``.
        templates: Narration templates after ``"#C C "``; ``{n}`` is the noun name. The first is the usual one.
        program: Motion program the renderer runs (see ``_motion.py``).
        requires: Object property a compatible noun must have, or "" for any object.
        reverse: Key of the verb whose motion is this one played backwards, or "".
        mirror: Key of the verb a horizontal flip turns this one into (left/right, clockwise), or "".
        tool: Key of the tool noun held in the hand and tagged too, or "".
    """

    id: int
    key: str
    templates: tuple[str, ...]
    program: str
    requires: str = ""
    reverse: str = ""
    mirror: str = ""
    tool: str = ""


@dataclass(frozen=True)
class Noun:
    """One noun class: a scene object (or a tool held in the hand).

    Attributes:
        id: Tag id (row in ``nouns.csv``).
        key: Stable identifier, e.g. ``"red_cup"``.
        name: Words used in narrations, e.g. ``"red cup"``.
        shape: Sprite family the renderer draws (cup, bowl, box, ...).
        colour: Main colour name.
        rgb: Main colour as RGB.
        texture: Surface pattern: plain, striped, checkered, dotted, speckled, grain.
        size: Radius as a fraction of the rendered canvas.
        props: Properties verbs may require (openable, foldable, stirrable, pourable, cuttable, ...).
    """

    id: int
    key: str
    name: str
    shape: str
    colour: str
    rgb: tuple[int, int, int]
    texture: str
    size: float
    props: frozenset[str]

    @property
    def is_tool(self) -> bool:
        """Tools are held in the hand for stir/cut/wipe; they are never scene objects."""
        return "tool" in self.props


def _v(key: str, templates: Sequence[str], program: str = "", **kw: str) -> tuple:
    return (key, tuple(templates), program or key, kw)


_VERB_SPECS = [
    _v("pick_up", ["picks up the {n}", "picks the {n} up"], reverse="put_down"),
    _v("put_down", ["puts down the {n}", "puts the {n} down"], reverse="pick_up", requires="held"),
    _v("open", ["opens the {n}"], requires="openable", reverse="close"),
    _v("close", ["closes the {n}"], requires="openable", reverse="open"),
    _v("push", ["pushes the {n}", "pushes the {n} away"], reverse="pull"),
    _v("pull", ["pulls the {n}", "pulls the {n} closer"], reverse="push"),
    _v("slide_left", ["slides the {n} to the left"], reverse="slide_right", mirror="slide_right"),
    _v("slide_right", ["slides the {n} to the right"], reverse="slide_left", mirror="slide_left"),
    _v(
        "rotate_cw", ["turns the {n} clockwise", "rotates the {n} clockwise"], reverse="rotate_ccw", mirror="rotate_ccw"
    ),
    _v(
        "rotate_ccw",
        ["turns the {n} anticlockwise", "rotates the {n} anticlockwise"],
        reverse="rotate_cw",
        mirror="rotate_cw",
    ),
    _v("fold", ["folds the {n}"], requires="foldable", reverse="unfold"),
    _v("unfold", ["unfolds the {n}", "spreads out the {n}"], requires="foldable", reverse="fold"),
    _v("shake", ["shakes the {n}"]),
    _v("stir", ["stirs the {n} with a spoon"], requires="stirrable", tool="spoon"),
    _v("pour", ["pours water from the {n}"], requires="pourable"),
    _v("wipe", ["wipes the {n} with a cloth", "cleans the {n} with a cloth"], tool="cloth"),
    _v("tap", ["taps the {n}", "taps on the {n}"]),
    _v("flip", ["flips the {n}", "turns over the {n}"]),
    _v("cut", ["cuts the {n} with a knife", "slices the {n} with a knife"], requires="cuttable", tool="knife"),
    _v("squeeze", ["squeezes the {n}"], requires="squeezable"),
    _v("roll", ["rolls the {n}", "rolls the {n} across the table"], requires="rollable"),
    _v("point", ["points at the {n}"]),
    _v("drop", ["drops the {n}"], requires="held"),
    _v("spin", ["spins the {n}"]),
]

VERBS: tuple[Verb, ...] = tuple(
    Verb(id=i, key=k, templates=t, program=p, **kw) for i, (k, t, p, kw) in enumerate(_VERB_SPECS)
)

_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 40), "blue": (40, 80, 200), "green": (40, 150, 60), "white": (235, 235, 230),
    "orange": (240, 130, 30), "brown": (150, 100, 55), "yellow": (240, 210, 40), "purple": (130, 60, 160),
    "black": (35, 35, 40), "silver": (185, 190, 195), "grey": (120, 122, 128), "cream": (240, 225, 170),
}  # fmt: skip

# shape -> (properties, radius as a fraction of the canvas)
_SHAPES: dict[str, tuple[frozenset[str], float]] = {
    "cup": (frozenset({"stirrable", "pourable"}), 0.05),
    "bowl": (frozenset({"stirrable"}), 0.07),
    "plate": (frozenset(), 0.08),
    "box": (frozenset({"openable"}), 0.065),
    "jar": (frozenset({"openable", "pourable"}), 0.05),
    "bottle": (frozenset({"pourable", "rollable"}), 0.065),
    "ball": (frozenset({"rollable", "squeezable"}), 0.045),
    "towel": (frozenset({"foldable"}), 0.08),
    "book": (frozenset({"openable"}), 0.065),
    "sponge": (frozenset({"squeezable"}), 0.045),
    "apple": (frozenset({"cuttable", "rollable"}), 0.04),
    "tomato": (frozenset({"cuttable", "rollable", "squeezable"}), 0.04),
    "orange": (frozenset({"cuttable", "rollable", "squeezable"}), 0.042),
    "bread": (frozenset({"cuttable"}), 0.065),
    "cheese": (frozenset({"cuttable"}), 0.05),
    "carrot": (frozenset({"cuttable"}), 0.06),
    "banana": (frozenset({"cuttable"}), 0.06),
    "can": (frozenset({"rollable", "pourable"}), 0.04),
    "pan": (frozenset({"stirrable"}), 0.07),
    "pot": (frozenset({"stirrable", "openable"}), 0.07),
    "phone": (frozenset(), 0.05),
    "laptop": (frozenset({"openable"}), 0.08),
    "knife": (frozenset({"tool"}), 0.05),
    "spoon": (frozenset({"tool"}), 0.04),
    "cloth": (frozenset({"tool"}), 0.04),
}

# (key, name, shape, colour, texture)
_NOUN_SPECS = [
    ("red_cup", "red cup", "cup", "red", "plain"), ("blue_cup", "blue cup", "cup", "blue", "plain"),
    ("green_cup", "green cup", "cup", "green", "striped"),
    ("blue_bowl", "blue bowl", "bowl", "blue", "plain"), ("orange_bowl", "orange bowl", "bowl", "orange", "plain"),
    ("white_bowl", "white bowl", "bowl", "white", "dotted"),
    ("white_plate", "white plate", "plate", "white", "plain"),
    ("dotted_plate", "dotted plate", "plate", "cream", "dotted"),
    ("green_box", "green box", "box", "green", "plain"), ("brown_box", "cardboard box", "box", "brown", "speckled"),
    ("red_box", "red box", "box", "red", "striped"),
    ("glass_jar", "glass jar", "jar", "silver", "plain"), ("purple_jar", "purple jar", "jar", "purple", "plain"),
    ("green_bottle", "green bottle", "bottle", "green", "plain"),
    ("blue_bottle", "blue bottle", "bottle", "blue", "striped"),
    ("yellow_ball", "yellow ball", "ball", "yellow", "plain"), ("red_ball", "red ball", "ball", "red", "plain"),
    ("striped_ball", "striped ball", "ball", "blue", "striped"),
    ("striped_towel", "striped towel", "towel", "white", "striped"),
    ("checkered_towel", "checkered towel", "towel", "red", "checkered"),
    ("blue_towel", "blue towel", "towel", "blue", "plain"),
    ("red_book", "red book", "book", "red", "plain"), ("black_book", "black book", "book", "black", "plain"),
    ("sponge", "sponge", "sponge", "yellow", "speckled"),
    ("red_apple", "red apple", "apple", "red", "plain"), ("green_apple", "green apple", "apple", "green", "plain"),
    ("tomato", "tomato", "tomato", "red", "plain"), ("orange", "orange", "orange", "orange", "dotted"),
    ("bread", "loaf of bread", "bread", "brown", "grain"), ("cheese", "piece of cheese", "cheese", "yellow", "dotted"),
    ("carrot", "carrot", "carrot", "orange", "striped"), ("banana", "banana", "banana", "yellow", "plain"),
    ("silver_can", "silver can", "can", "silver", "plain"), ("red_can", "red can", "can", "red", "plain"),
    ("pan", "frying pan", "pan", "black", "plain"), ("pot", "cooking pot", "pot", "silver", "plain"),
    ("phone", "phone", "phone", "black", "plain"), ("laptop", "laptop", "laptop", "grey", "plain"),
    ("knife", "knife", "knife", "silver", "plain"), ("spoon", "spoon", "spoon", "silver", "plain"),
    ("cloth", "cloth", "cloth", "blue", "checkered"),
]  # fmt: skip

NOUNS: tuple[Noun, ...] = tuple(
    Noun(id=i, key=k, name=n, shape=s, colour=c, rgb=_COLOURS[c], texture=tx, size=_SHAPES[s][1], props=_SHAPES[s][0])
    for i, (k, n, s, c, tx) in enumerate(_NOUN_SPECS)
)

_VERB_INDEX = {v.key: v for v in VERBS}
_NOUN_INDEX = {n.key: n for n in NOUNS}


def _lookup(index: dict, key: str, what: str):  # noqa: ANN202 - Verb or Noun
    if key not in index:
        raise ValueError(f"unknown {what} {key!r}; valid {what}s: {', '.join(index)}")
    return index[key]


def verb_by_key(key: str) -> Verb:
    """Return the verb named ``key``.

    Raises:
        ValueError: If no verb has that key; the message lists the valid keys.
    """
    return _lookup(_VERB_INDEX, key, "verb")


def noun_by_key(key: str) -> Noun:
    """Return the noun named ``key``.

    Raises:
        ValueError: If no noun has that key; the message lists the valid keys.
    """
    return _lookup(_NOUN_INDEX, key, "noun")


# Verb pairs whose motions are each other played backwards, e.g. ("pick_up", "put_down").
ORDER_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (v.key, v.reverse) for v in VERBS if v.reverse and v.id < verb_by_key(v.reverse).id
)


def compatible(verb: Verb, noun: Noun) -> bool:
    """Whether ``verb`` can act on ``noun`` (tools are never acted on; ``held`` is a state, not a property)."""
    if noun.is_tool:
        return False
    return verb.requires in ("", "held") or verb.requires in noun.props


def compatible_nouns(verb: Verb) -> list[Noun]:
    """All scene nouns ``verb`` can act on."""
    return [n for n in NOUNS if compatible(verb, n)]


def multi_hot(ids: Iterable[int], n: int) -> np.ndarray:
    """Multi-hot float32 vector of length ``n`` with ones at ``ids`` (EgoNCE's verb/noun vectors).

    Raises:
        ValueError: If an id is outside ``[0, n)``.
    """
    out = np.zeros(n, dtype=np.float32)
    for i in ids:
        if not 0 <= int(i) < n:
            raise ValueError(f"tag id {i} is outside [0, {n}); check the taxonomy the tags were written with")
        out[int(i)] = 1.0
    return out


_VERB_FIELDS = ["id", "key", "text", "program", "requires", "reverse", "mirror", "tool"]
_NOUN_FIELDS = ["id", "key", "name", "shape", "colour", "texture", "props"]


def write_taxonomy(out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``verbs.csv`` and ``nouns.csv`` (``id,key,...``) into ``out_dir``.

    Returns:
        The two paths written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    verbs_path, nouns_path = out_dir / "verbs.csv", out_dir / "nouns.csv"
    with verbs_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(_VERB_FIELDS)
        for v in VERBS:
            w.writerow([v.id, v.key, v.templates[0], v.program, v.requires, v.reverse, v.mirror, v.tool])
    with nouns_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(_NOUN_FIELDS)
        for n in NOUNS:
            w.writerow([n.id, n.key, n.name, n.shape, n.colour, n.texture, " ".join(sorted(n.props))])
    return verbs_path, nouns_path


def _read_table(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"taxonomy file {path} does not exist; write it with write_taxonomy(dir)")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    header = set(rows[0]) if rows else set()
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected at least {list(required)}")
    for line, row in enumerate(rows, start=2):
        if row["id"] != str(line - 2):
            raise ValueError(f"{path} line {line}: id {row['id']!r} should be {line - 2}; ids must be 0..N-1 in order")
    return rows


def read_verbs(path: str | Path) -> list[dict[str, str]]:
    """Read ``verbs.csv`` as one dict per row (ids are checked to run 0..N-1).

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If columns are missing or ids are out of order.
    """
    return _read_table(Path(path), ["id", "key"])


def read_nouns(path: str | Path) -> list[dict[str, str]]:
    """Read ``nouns.csv`` as one dict per row (ids are checked to run 0..N-1).

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If columns are missing or ids are out of order.
    """
    return _read_table(Path(path), ["id", "key"])


def _base_word(word: str) -> str:
    """Third person singular to base form: ``picks`` -> ``pick``, ``pushes`` -> ``push``."""
    if word.endswith("es") and word[:-2].endswith(("sh", "ch", "ss", "x", "zz")):  # "squeezes" keeps its "e"
        return word[:-2]
    return word[:-1] if word.endswith("s") else word


def base_phrase(verb_key: str, obj: str) -> str:
    """The verb's usual narration in base form with ``obj`` as its object (``""`` drops it).

    ``base_phrase("pick_up", "the red cup") == "pick up the red cup"``; ``base_phrase("pour", "")`` is
    ``"pour water from"``.
    """
    words = verb_by_key(verb_key).templates[0].split(" ")
    words[0] = _base_word(words[0])
    return " ".join(" ".join(words).replace("the {n}", obj).split())


def reverse_verbs(root: Path) -> dict[int, dict[str, str]]:
    """Verb id -> the ``verbs.csv`` row of its reverse (empty when the file is missing or has no reverses)."""
    if not (root / "verbs.csv").is_file():
        return {}
    verbs = read_verbs(root / "verbs.csv")
    by_key = {v["key"]: v for v in verbs}
    return {int(v["id"]): by_key[v["reverse"]] for v in verbs if v.get("reverse")}


def first_of_pairs(root: Path) -> list[int]:
    """The verb ids that come first in their reverse pair (the lower id of each pair; the direction term's label 1)."""
    return [v for v, rev in reverse_verbs(root).items() if v < int(rev["id"])]


def reverse_narrations(root: Path) -> dict[tuple[int, int], str]:
    """``(verb id, noun id)`` -> the narration of that noun under the verb's reverse (``"#C C puts down the red cup"``
    for pick up and the red cup), for every verb with a reverse and every noun of ``nouns.csv``; empty when either
    file is missing. The verbs' usual templates, as the generator narrates them."""
    if not (root / "nouns.csv").is_file():
        return {}
    nouns = read_nouns(root / "nouns.csv")
    return {
        (verb, int(n["id"])): "#C C " + rev["text"].format(n=n["name"])
        for verb, rev in reverse_verbs(root).items()
        for n in nouns
    }

"""Plans one synthetic video: scenes of objects on a counter and a consistent sequence of actions (private).

The planner tracks each object's state (position, angle, held, lid open, folded, flipped, cuts) so actions
stay plausible: an object that was picked up is put down or dropped next, only a closed box can be opened,
a slide needs room on the table. Long videos with many consecutive actions in the same scene give EgoVLPv2's
scene-aware negatives (same video, same 60-s bucket; reference §2) something to be hard with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from egovlpv2_edge.training.data._motion import HELD_AT, ObjPose
from egovlpv2_edge.training.data.taxonomy import NOUNS, VERBS, Noun, Verb, compatible, verb_by_key

X_RANGE = (0.27, 0.73)  # where object centres may be, as fractions of the canvas
Y_RANGE = (0.25, 0.6)
_SCENE_NOUNS = [n for n in NOUNS if not n.is_tool]
_MOVES_BLOCKED_WHEN_OPEN = {"pick_up", "flip", "shake", "spin", "roll"}
_NEEDS_UPRIGHT = {"open", "close", "fold", "unfold", "stir", "pour", "cut"}


@dataclass
class Scene:
    """Objects on one counter; a video visits one to three scenes."""

    index: int
    nouns: list[Noun]
    init: list[ObjPose]
    table_seed: int


@dataclass
class PlannedAction:
    """One narrated action: ``a``/``b`` are the object's states before and after."""

    index: int
    scene: int
    obj: int
    verb: Verb
    noun: Noun
    start: float
    end: float
    a: ObjPose
    b: ObjPose
    template: int
    n_objects: int


@dataclass
class VideoPlan:
    """Everything the renderer needs for one video."""

    scenes: list[Scene]
    actions: list[PlannedAction]
    duration: float
    holdout_hits: int = 0


def _free(x: float, y: float, r: float, i: int, nouns: Sequence[Noun], states: Sequence[ObjPose]) -> bool:
    if not (X_RANGE[0] <= x <= X_RANGE[1] and Y_RANGE[0] <= y <= Y_RANGE[1]):
        return False
    for j, (n, s) in enumerate(zip(nouns, states, strict=True)):
        if j != i and s.h < 0.5 and math.hypot(x - s.x, y - s.y) < r + n.size + 0.015:
            return False
    return True


def _spot_near(x: float, y: float, i: int, nouns: Sequence[Noun], states: Sequence[ObjPose],
               rng: np.random.Generator) -> tuple[float, float]:  # fmt: skip
    """A free spot near (x, y), else anywhere free; a held object can always be put down somewhere."""
    for k in range(80):
        if k < 30:
            px, py = x + rng.uniform(-0.12, 0.12), y + rng.uniform(-0.12, 0.05)
        else:
            px, py = rng.uniform(*X_RANGE), rng.uniform(*Y_RANGE)
        if _free(px, py, nouns[i].size, i, nouns, states):
            return px, py
    return x, Y_RANGE[1]


def _move(verb: str, a: ObjPose, r: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """Target (x, y, angle) of a moving verb before checking for room."""
    d = rng.uniform(0.08, 0.15)
    if verb == "push":
        return a.x, a.y - d, a.angle
    if verb == "pull":
        return a.x, a.y + d, a.angle
    if verb == "slide_left":
        return a.x - d, a.y, a.angle
    if verb == "slide_right":
        return a.x + d, a.y, a.angle
    ang = rng.uniform(0, 2 * math.pi)
    dist = rng.uniform(0.1, 0.2)
    dx, dy = dist * math.cos(ang), dist * math.sin(ang)
    return a.x + dx, a.y + dy, a.angle - math.degrees(dist / r) * (1 if dx >= 0 else -1)


def next_state(verb: Verb, i: int, nouns: Sequence[Noun], states: Sequence[ObjPose],
               rng: np.random.Generator) -> ObjPose | None:  # fmt: skip
    """The object's state after ``verb`` acts on object ``i``, or None if the action is not possible now."""
    n, a, k = nouns[i], states[i], verb.key
    held = a.h > 0.5
    if not compatible(verb, n) or (verb.requires == "held") != held:
        return None
    if k in _NEEDS_UPRIGHT and a.flipped or k in _MOVES_BLOCKED_WHEN_OPEN and a.lid > 0.5:
        return None
    if k in ("open", "close", "fold", "unfold"):
        attr = "lid" if k in ("open", "close") else "fold"
        want = 0.0 if k in ("open", "fold") else 1.0
        return replace(a, **{attr: 1.0 - want}) if getattr(a, attr) == want else None
    if k == "pick_up":
        return replace(a, x=HELD_AT[0] + rng.uniform(-0.03, 0.03), y=HELD_AT[1], h=1.0)
    if k in ("put_down", "drop"):
        x, y = _spot_near(a.x, 0.55 if k == "drop" else 0.5, i, nouns, states, rng)
        return replace(a, x=x, y=y, h=0.0)
    if k in ("push", "pull", "slide_left", "slide_right", "roll"):
        x, y, ang = _move(k, a, n.size, rng)
        return replace(a, x=x, y=y, angle=ang) if _free(x, y, n.size, i, nouns, states) else None
    if k in ("rotate_cw", "rotate_ccw"):
        return replace(a, angle=a.angle + rng.uniform(60, 120) * (-1 if k == "rotate_cw" else 1))
    if k == "spin":
        return replace(a, angle=a.angle + rng.uniform(360, 720) * rng.choice([-1, 1]))
    if k == "flip":
        return replace(a, flipped=1 - a.flipped) if a.lid < 0.5 and a.fold < 0.5 else None
    if k == "cut":
        return replace(a, cuts=a.cuts + 1) if a.cuts < 3 else None
    if k in ("pour", "stir") and "openable" in n.props and a.lid < 0.5:
        return None
    return a  # shake, squeeze, pour, stir, tap, point, wipe leave the state as it was


def make_scene(index: int, rng: np.random.Generator, prefer: Sequence[Noun] = ()) -> Scene:
    """Three to five objects (the one acted on plus two to four distractors) placed apart on the counter."""
    want = int(rng.integers(3, 6))
    chosen: list[Noun] = [n for n in prefer if rng.random() < 0.25][:2]
    pool = [n for n in _SCENE_NOUNS if n not in chosen]
    chosen += [pool[j] for j in rng.choice(len(pool), size=want - len(chosen), replace=False)]
    nouns: list[Noun] = []
    states: list[ObjPose] = []
    for n in chosen:
        for _ in range(200):
            x, y = rng.uniform(*X_RANGE), rng.uniform(*Y_RANGE)
            if _free(x, y, n.size, len(nouns), [*nouns, n], [*states, ObjPose(x, y)]):
                lid = 1.0 if "openable" in n.props and rng.random() < 0.3 else 0.0
                fold_ = 1.0 if "foldable" in n.props and rng.random() < 0.4 else 0.0
                nouns.append(n)
                states.append(ObjPose(x, y, angle=float(rng.uniform(-40, 40)), lid=lid, fold=fold_))
                break
    return Scene(index=index, nouns=nouns, init=states, table_seed=int(rng.integers(2**31)))


def _choose(nouns: list[Noun], states: list[ObjPose], rng: np.random.Generator, holdout: set[tuple[str, str]],
            last: tuple[str, int] | None, boost: float,
            undo: tuple[str, int] | None = None) -> tuple[Verb, int, ObjPose] | None:  # fmt: skip
    """Pick a verb uniformly among the possible ones, then an object for it.

    When a held-out pair is possible it is taken with probability ``boost``, so the compositional test split
    is not left empty by chance. ``undo`` (verb key, object) is taken first when it is possible.
    """
    if undo is not None:
        verb = verb_by_key(undo[0])
        b = next_state(verb, undo[1], nouns, states, rng)
        if b is not None:
            return verb, undo[1], b
    options: dict[str, list[tuple[Verb, int, ObjPose]]] = {}
    held = [i for i, s in enumerate(states) if s.h > 0.5]  # a held object must be put down first
    for v in VERBS:
        for i in held or range(len(nouns)):
            if (v.key, i) == last:
                continue
            b = next_state(v, i, nouns, states, rng)
            if b is not None:
                options.setdefault(v.key, []).append((v, i, b))
    if not options:
        return None
    special = [o for opts in options.values() for o in opts if (o[0].key, nouns[o[1]].key) in holdout]
    if special and rng.random() < boost:
        return special[int(rng.integers(len(special)))]
    keys = sorted(options)
    opts = options[keys[int(rng.integers(len(keys)))]]
    return opts[int(rng.integers(len(opts)))]


def plan_video(rng: np.random.Generator, n_actions: int, dur_range: tuple[float, float],
               holdout: set[tuple[str, str]], boost: float = 0.1, undo_rate: float = 0.0) -> VideoPlan:  # fmt: skip
    """Plan scenes and ``n_actions`` timed actions (0.2-0.8 s gaps; 1 s to walk to a new counter).

    With probability ``undo_rate`` an action whose verb has a reverse is undone by the next one where possible
    (push, then pull the same object back; open, then close it): the same object's two actions, which differ
    only in the order of their frames, are then next to each other, as in footage of people at work (an undo
    may be undone in turn). At 0 no random number is drawn for it, so the videos are those of a plan without the
    option.
    """
    prefer = [next(n for n in _SCENE_NOUNS if n.key == nk) for _, nk in sorted(holdout)]
    scenes = [make_scene(0, rng, prefer)]
    nouns, states = scenes[0].nouns, list(scenes[0].init)
    t, actions, last, scene_left = 0.5, [], None, int(rng.integers(12, 31))
    undo: tuple[str, int] | None = None  # the reverse of the last action, to do next
    while len(actions) < n_actions:
        holding = any(s.h > 0.5 for s in states)
        if scene_left <= 0 and not holding:
            scenes.append(make_scene(len(scenes), rng, prefer))
            nouns, states, last, scene_left = scenes[-1].nouns, list(scenes[-1].init), None, int(rng.integers(12, 31))
            t, undo = t + 1.0, None
        pick = _choose(nouns, states, rng, holdout, last, boost, undo)
        undo = None
        if pick is None:  # nothing possible here (rare): move on to a new counter
            scene_left = 0
            continue
        verb, i, b = pick
        if undo_rate > 0 and verb.reverse and rng.random() < undo_rate:
            undo = (verb.reverse, i)
        dur = float(rng.uniform(*dur_range))
        tmpl = 0 if rng.random() < 0.7 or len(verb.templates) == 1 else int(rng.integers(1, len(verb.templates)))
        actions.append(PlannedAction(len(actions), scenes[-1].index, i, verb, nouns[i], round(t, 3),
                                     round(t + dur, 3), states[i], b, tmpl, len(nouns)))  # fmt: skip
        states[i], last = b, (verb.key, i)
        t += dur + float(rng.uniform(0.2, 0.8))
        scene_left -= 1
    hits = sum((a.verb.key, a.noun.key) in holdout for a in actions)
    return VideoPlan(scenes=scenes, actions=actions, duration=round(t + 0.3, 3), holdout_hits=hits)

"""Motion programs: where the acted-on object and the hand are at each moment of an action (private).

A program maps normalised time ``u`` in [0, 1], the object's state before (``a``) and after (``b``) the action
and a context (object extents, duration) to an ``ObjPose`` and a ``HandPose``. Positions are fractions of the
square canvas the scene is drawn on (x right, y towards the camera; angles in degrees, anticlockwise on screen
as in OpenCV). Verbs of an order pair share one program: the second plays the first backwards with the states
swapped, so "put down" is exactly "pick up" reversed in time (taxonomy ``reverse``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from egovlpv2_edge.training.data.taxonomy import VERBS

SHOULDER = (0.8, 1.25)  # where the right forearm comes from (below the bottom-right of the view)
HELD_AT = (0.52, 0.68)  # where a picked-up object is held (near the body, centre-bottom of the view)


@dataclass(frozen=True)
class ObjPose:
    """Object state (the first eight fields persist between actions) plus render-only transients."""

    x: float
    y: float
    angle: float = 0.0
    h: float = 0.0  # height above the table, 0..1 (1 = held near the camera)
    lid: float = 0.0  # 0 closed .. 1 open
    fold: float = 0.0  # 0 flat .. 1 folded
    flipped: int = 0  # 1 = upside down
    cuts: int = 0  # number of cuts made
    flip_s: float = 1.0  # x-scale while flipping (1 -> -1)
    squash: float = 1.0
    cut_t: float = 0.0  # progress of the cut being made now
    stream: float = 0.0  # strength of the poured stream


@dataclass(frozen=True)
class HandPose:
    """Right hand: palm centre, height above the table, grip, index finger, tool."""

    x: float
    y: float
    h: float = 0.6
    grip: float = 0.0  # 0 open .. 1 closed
    point: float = 0.0  # 1 = index finger extended
    tool: str = ""  # "", "knife", "spoon", "cloth"
    tip: tuple[float, float] | None = None  # tool tip (knife, spoon)


@dataclass(frozen=True)
class Ctx:
    """What a program needs about the object and the action (fractions of the canvas)."""

    r: float  # object radius
    hx: float  # half extents
    hy: float
    dur: float  # seconds
    hinge: tuple[float, float] = (0.0, 0.0)  # local hinge point of a hinged panel
    edge: tuple[float, float] = (0.0, 0.0)  # local free edge of the panel when closed
    axis: int = 1  # 0: panel swings along x; 1: along y
    slide: bool = True  # True: the lid slides off; False: hinged panel


Program = Callable[[float, ObjPose, ObjPose, Ctx], tuple[ObjPose, HandPose]]


def ease(t: float) -> float:
    t = min(1.0, max(0.0, t))
    return t * t * (3.0 - 2.0 * t)


def seg(u: float, a: float, b: float) -> float:
    """Eased progress of ``u`` through [a, b]."""
    return ease((u - a) / (b - a))


def lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def rot(vx: float, vy: float, deg: float) -> tuple[float, float]:
    """Rotate a vector anticlockwise on screen (y down) by ``deg``."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return vx * c + vy * s, -vx * s + vy * c


def hand_dir(x: float, y: float) -> tuple[float, float]:
    """Unit vector from the shoulder towards the palm (the way the fingers point)."""
    dx, dy = x - SHOULDER[0], y - SHOULDER[1]
    n = math.hypot(dx, dy) or 1.0
    return dx / n, dy / n


def grip_point(o: ObjPose, r: float) -> tuple[float, float]:
    """Palm centre when holding ``o``: on the near side, so the fingers cover only part of the object."""
    fx, fy = hand_dir(o.x, o.y)
    back = 0.6 * r * (1 + 0.35 * o.h) + 0.035
    return o.x - fx * back, o.y - fy * back


def rest(o: ObjPose, r: float) -> tuple[float, float]:
    """Where the hand hovers before reaching for ``o`` and after letting go."""
    return o.x + r + 0.05, o.y + r + 0.12


def mix(a: ObjPose, b: ObjPose, t: float) -> ObjPose:
    """Interpolate position, height, angle, lid and fold; discrete fields switch at the end."""
    return replace(
        b if t >= 1.0 else a,
        x=lerp(a.x, b.x, t), y=lerp(a.y, b.y, t), h=lerp(a.h, b.h, t), angle=lerp(a.angle, b.angle, t),
        lid=lerp(a.lid, b.lid, t), fold=lerp(a.fold, b.fold, t),
    )  # fmt: skip


def lid_offset(lid: float, hx: float, hy: float) -> tuple[float, float, float]:
    """Local offset (dx, dy) and extra rotation (degrees) of a sliding lid at opening ``lid``."""
    return 2.2 * hx * lid, -0.35 * hy * lid, 25.0 * lid


def _grab(u: float, a: ObjPose, ctx: Ctx, move: Callable[[float], ObjPose],
          contact: Callable[[ObjPose], tuple[float, float]], grip: float = 1.0, hold: bool = False,
          window: tuple[float, float] = (0.35, 0.8)) -> tuple[ObjPose, HandPose]:  # fmt: skip
    """Reach for the object, grip it, run ``move`` over ``window``, then release and withdraw (unless ``hold``)."""
    m0, m1 = window
    m = seg(u, m0, m1) if not hold else seg(u, m0, 1.0)
    obj = move(m)
    start, end = move(0.0), move(1.0)
    cx, cy = contact(obj)
    rx, ry = rest(start, ctx.r)
    if u < m0 - 0.1:  # reach, fingers open
        t = seg(u, 0.0, m0 - 0.1)
        sx, sy = contact(start)
        return obj, HandPose(lerp(rx, sx, t), lerp(ry, sy, t), h=lerp(0.7, start.h + 0.12, t), grip=0.0)
    g = grip * seg(u, m0 - 0.1, m0)
    if hold or u <= m1:
        return obj, HandPose(cx, cy, h=obj.h + 0.12, grip=g)
    ex, ey = contact(end)
    ox, oy = rest(end, ctx.r)
    t = seg(u, m1 + 0.08, 1.0)
    g = grip * (1.0 - seg(u, m1, m1 + 0.08))
    return obj, HandPose(lerp(ex, ox, t), lerp(ey, oy, t), h=lerp(end.h + 0.12, 0.7, t), grip=g)


def _local(o: ObjPose, lx: float, ly: float) -> tuple[float, float]:
    dx, dy = rot(lx, ly, o.angle)
    return o.x + dx, o.y + dy


def pick_up(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    return _grab(u, a, ctx, lambda m: mix(a, b, m), lambda o: grip_point(o, ctx.r), hold=True, window=(0.4, 1.0))


def push(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    return _grab(u, a, ctx, lambda m: mix(a, b, m), lambda o: (o.x + 0.2 * ctx.r, o.y + ctx.r + 0.015), grip=0.4)


def slide_left(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    return _grab(u, a, ctx, lambda m: mix(a, b, m), lambda o: (o.x + ctx.r + 0.015, o.y + 0.2 * ctx.r), grip=0.4)


def rotate_cw(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    return _grab(u, a, ctx, lambda m: mix(a, b, m), lambda o: _local(o, 0.9 * ctx.r, 0.9 * ctx.r))


def _panel_edge(o: ObjPose, ctx: Ctx, amount: float) -> tuple[float, float]:
    """Where the hand holds a lid or hinged panel at opening ``amount``."""
    if ctx.slide:
        dx, dy, _ = lid_offset(amount, ctx.hx, ctx.hy)
        return _local(o, dx + 0.3 * ctx.hx, dy + 0.3 * ctx.hy)
    s = math.cos(math.pi * amount)
    ex, ey = ctx.edge
    if ctx.axis == 0:
        ex = ctx.hinge[0] + (ex - ctx.hinge[0]) * s
    else:
        ey = ctx.hinge[1] + (ey - ctx.hinge[1]) * s
    return _local(o, ex, ey)


def open_(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    return _grab(u, a, ctx, lambda m: mix(a, b, m), lambda o: _panel_edge(o, ctx, o.lid), grip=0.8)


def fold(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    return _grab(u, a, ctx, lambda m: mix(a, b, m), lambda o: _panel_edge(o, ctx, o.fold), grip=0.9)


def _bump(m: float, ramp: float = 0.2) -> float:
    return seg(m, 0.0, ramp) - seg(m, 1.0 - ramp, 1.0)


def _cycles(ctx: Ctx, per_s: float) -> int:
    return max(2, round(per_s * ctx.dur))


def shake(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    k = _cycles(ctx, 2.5)

    def move(m: float) -> ObjPose:
        lift = _bump(m)
        return replace(a, h=0.35 * lift, x=a.x + 0.03 * math.sin(2 * math.pi * k * m) * lift)

    return _grab(u, a, ctx, move, lambda o: grip_point(o, ctx.r), window=(0.3, 0.85))


def flip(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    def move(m: float) -> ObjPose:
        return replace(a if m < 0.5 else b, h=0.3 * _bump(m), flip_s=math.cos(math.pi * m))

    return _grab(u, a, ctx, move, lambda o: grip_point(o, ctx.r))


def squeeze(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    k = _cycles(ctx, 0.8)
    return _grab(u, a, ctx, lambda m: replace(a, squash=1.0 - 0.25 * math.sin(math.pi * k * m) ** 2),
                 lambda o: grip_point(o, ctx.r), window=(0.3, 0.85))  # fmt: skip


def pour(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    def move(m: float) -> ObjPose:
        lift, tilt = _bump(m, 0.25), seg(m, 0.25, 0.4) - seg(m, 0.6, 0.75)
        return replace(a, h=0.45 * lift, x=a.x - 0.06 * lift, angle=a.angle + 70.0 * tilt, stream=tilt)

    return _grab(u, a, ctx, move, lambda o: grip_point(o, ctx.r), window=(0.3, 0.9))


def spin(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    t = min(1.0, max(0.0, (u - 0.3) / 0.65))
    obj = replace(a, angle=lerp(a.angle, b.angle, 1.0 - (1.0 - t) ** 3))
    cx, cy = _local(a, 0.9 * ctx.r, 0.0)
    rx, ry = rest(a, ctx.r)
    if u < 0.3:
        k = seg(u, 0.0, 0.28)
        return obj, HandPose(lerp(rx, cx, k), lerp(ry, cy, k), h=lerp(0.7, 0.12, k), point=1.0)
    flick = seg(u, 0.3, 0.4)
    back = seg(u, 0.45, 1.0)
    hx, hy = cx - 0.05 * flick, cy - 0.04 * flick
    return obj, HandPose(lerp(hx, rx, back), lerp(hy, ry, back), h=lerp(0.12, 0.7, back), point=1.0)


def roll(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    dx, dy = b.x - a.x, b.y - a.y
    n = math.hypot(dx, dy) or 1.0
    dx, dy = dx / n, dy / n
    t = min(1.0, max(0.0, (u - 0.3) / 0.7))
    obj = mix(a, b, 1.0 - (1.0 - t) ** 2)
    cx, cy = a.x - dx * (ctx.r + 0.015), a.y - dy * (ctx.r + 0.015)
    rx, ry = rest(a, ctx.r)
    if u < 0.3:
        k = seg(u, 0.0, 0.28)
        return obj, HandPose(lerp(rx, cx, k), lerp(ry, cy, k), h=lerp(0.7, 0.1, k))
    push_ = seg(u, 0.3, 0.42) * 0.05
    back = seg(u, 0.45, 1.0)
    hx, hy = cx + dx * push_, cy + dy * push_
    return obj, HandPose(lerp(hx, rx, back), lerp(hy, ry, back), h=lerp(0.1, 0.7, back))


def _finger(u: float, a: ObjPose, ctx: Ctx, gap: float, h_of: Callable[[float], float]) -> tuple[ObjPose, HandPose]:
    """Index finger to ``gap`` short of the object's centre, hold with height ``h_of(m)``, withdraw."""
    fx, fy = hand_dir(a.x, a.y)
    px, py = a.x - fx * (0.075 + gap), a.y - fy * (0.075 + gap)
    rx, ry = rest(a, ctx.r)
    m = seg(u, 0.3, 0.75)
    if u < 0.3:
        k = seg(u, 0.0, 0.28)
        return a, HandPose(lerp(rx, px, k), lerp(ry, py, k), h=lerp(0.7, h_of(0.0), k), point=seg(u, 0.0, 0.2))
    back = seg(u, 0.78, 1.0)
    return a, HandPose(lerp(px, rx, back), lerp(py, ry, back), h=lerp(h_of(m), 0.7, back), point=1.0 - back)


def tap(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    k = _cycles(ctx, 1.2)
    obj, hand = _finger(u, a, ctx, 0.0, lambda m: 0.25 * abs(math.sin(math.pi * k * m)))
    if 0.3 < u < 0.75 and hand.h < 0.04:
        obj = replace(obj, squash=0.94)
    return obj, hand


def point(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    return _finger(u, a, ctx, ctx.r + 0.05, lambda m: 0.45)


def _tool(u: float, a: ObjPose, ctx: Ctx, tool: str, tip_of: Callable[[float], tuple[float, float]],
          length: float) -> tuple[ObjPose, HandPose]:  # fmt: skip
    """Hold a tool whose tip follows ``tip_of(m)`` during [0.3, 0.8]; the palm sits ``length`` behind it."""
    m = seg(u, 0.3, 0.8) if 0.3 <= u <= 0.8 else (0.0 if u < 0.3 else 1.0)
    tx, ty = tip_of(m)
    fx, fy = hand_dir(tx, ty)
    px, py = tx - fx * length, ty - fy * length
    rx, ry = rest(a, ctx.r)
    k = seg(u, 0.0, 0.28) * (1.0 - seg(u, 0.82, 1.0))
    x, y = lerp(rx, px, k), lerp(ry, py, k)
    return a, HandPose(x, y, h=lerp(0.7, 0.12, k), grip=1.0, tool=tool, tip=(x + fx * length, y + fy * length))


def stir(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    k = _cycles(ctx, 1.0)
    rr = 0.45 * ctx.r

    def tip(m: float) -> tuple[float, float]:
        return a.x + rr * math.cos(2 * math.pi * k * m), a.y + rr * math.sin(2 * math.pi * k * m)

    return _tool(u, a, ctx, "spoon", tip, 0.1)


def wipe(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    k = _cycles(ctx, 1.0)
    obj, hand = _tool(u, a, ctx, "cloth", lambda m: (a.x + 0.9 * ctx.r * math.sin(2 * math.pi * k * m), a.y), 0.0)
    return obj, replace(hand, h=min(hand.h, 0.7), grip=0.2)


def cut(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    k = _cycles(ctx, 1.5)
    xc = (-0.35 + 0.35 * min(a.cuts, 2)) * ctx.hx

    def tip(m: float) -> tuple[float, float]:
        return _local(a, xc, -0.9 * ctx.hy + 0.15 * ctx.hy * math.sin(2 * math.pi * k * m))

    obj, hand = _tool(u, a, ctx, "knife", tip, 2.0 * ctx.hy + 0.06)
    return replace(obj, cut_t=seg(u, 0.3, 0.8)), hand


def drop(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
    ax, ay = grip_point(a, ctx.r)
    fall = min(1.0, max(0.0, (u - 0.3) / 0.2))
    bounce = 0.12 * math.sin(math.pi * min(1.0, max(0.0, (u - 0.5) / 0.12)))
    obj = replace(mix(a, b, fall), h=(1.0 - fall * fall) * a.h + bounce)
    grip = 1.0 - seg(u, 0.15, 0.3)
    rx, ry = rest(b, ctx.r)
    back = seg(u, 0.45, 1.0)
    return obj, HandPose(lerp(ax, rx, back), lerp(ay, ry, back), h=lerp(a.h + 0.12, 0.7, back), grip=grip)


def _reverse(p: Program) -> Program:
    def run(u: float, a: ObjPose, b: ObjPose, ctx: Ctx) -> tuple[ObjPose, HandPose]:
        return p(1.0 - u, b, a, ctx)

    return run


_BASE: dict[str, Program] = {
    "pick_up": pick_up, "push": push, "slide_left": slide_left, "rotate_cw": rotate_cw, "open": open_,
    "fold": fold, "shake": shake, "flip": flip, "squeeze": squeeze, "pour": pour, "spin": spin, "roll": roll,
    "tap": tap, "point": point, "stir": stir, "wipe": wipe, "cut": cut, "drop": drop,
}  # fmt: skip
PROGRAMS: dict[str, Program] = dict(_BASE)
for _v in VERBS:
    if _v.program not in PROGRAMS and _v.reverse in _BASE:
        PROGRAMS[_v.program] = _reverse(_BASE[_v.reverse])
_missing = [v.program for v in VERBS if v.program not in PROGRAMS]
assert not _missing, f"verbs without a motion program: {_missing}"

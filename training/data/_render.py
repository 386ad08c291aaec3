"""Frame compositor for the synthetic egocentric videos (private).

The scene is drawn top-down on a square canvas 1.5x the output size (table, object sprites, soft shadows, the
right hand and forearm), then one perspective warp per frame gives the above-ish first-person view and the head
motion (bob, pan, roll, zoom) in one step. Per-video lighting (gain, colour cast, gradient, slow drift, an
occasional light switch) and sensor noise are applied on the output. An optional 16-bit frame-index watermark
in the top-left corner lets tests check which frame a reader returned.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from egovlpv2_edge.training.data._motion import PROGRAMS, SHOULDER, Ctx, HandPose, ObjPose, hand_dir, lid_offset
from egovlpv2_edge.training.data._plan import X_RANGE, Y_RANGE, PlannedAction, VideoPlan
from egovlpv2_edge.training.data._sprites import Sprites, make_sprites, make_table, shade

WATERMARK_BITS = 16
_OFF = HandPose(0.95, 1.1, h=0.7)  # hand out of view


@dataclass
class Look:
    """Per-video appearance: skin, sleeve, camera, head motion and lighting parameters."""

    skin: tuple[int, int, int]
    sleeve: tuple[int, int, int]
    sleeve_frac: float
    quad: np.ndarray  # (4, 2) canvas fractions seen by the camera (tl, tr, br, bl)
    pan_knots: np.ndarray  # (K, 2) slow pan, fractions of the output, one knot every 2 s
    bob: tuple[float, float, float]  # amplitude (fraction), frequency (Hz), phase
    roll: tuple[float, float, float]  # amplitude (degrees), frequency, phase
    zoom: tuple[float, float, float]
    gaze: tuple[float, float, float]  # zoom on the gaze point, share of the way it is centred, time constant (s)
    light: np.ndarray  # (S, S, 3) float32 static light map
    drift: tuple[float, float, float]  # amplitude, period (s), phase
    switch: tuple[float, float]  # time (s) and gain change of a light switch
    light_dir: tuple[float, float]
    noise: np.ndarray  # (4, S, S, 3) float32


def make_look(rng: np.random.Generator, size: int, duration: float, head_motion: bool = True,
              steady: bool = False) -> Look:  # fmt: skip
    """Draw one video's appearance; ``head_motion=False`` keeps the camera still, ``steady=True`` also keeps
    the lighting constant and removes sensor noise (for tests that compare clips pixel by pixel)."""
    tone = rng.uniform(0, 1)
    skin = tuple(int(v) for v in np.array([224, 180, 150]) * (1 - tone) + np.array([120, 80, 60]) * tone)
    top, wt, wb = rng.uniform(0.1, 0.16), rng.uniform(0.66, 0.74), rng.uniform(0.48, 0.54)
    cx, bot = 0.5 + rng.uniform(-0.02, 0.02), rng.uniform(0.76, 0.8)
    quad = np.array([[cx - wt / 2, top], [cx + wt / 2, top], [cx + wb / 2, bot], [cx - wb / 2, bot]], np.float32)
    m = 1.0 if head_motion else 0.0
    knots = rng.normal(0, 0.035, (int(duration / 2) + 3, 2)) * m
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    ang, grad = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.35)
    light = (1 + grad * (xx * np.cos(ang) + yy * np.sin(ang))) * (1 - rng.uniform(0.1, 0.5) * (xx**2 + yy**2))
    cast = rng.uniform(0.88, 1.12, 3) * rng.uniform(0.75, 1.15)
    noise = rng.normal(0, rng.uniform(1.0, 3.5), (4, size, size, 3)).astype(np.float32) * (0.0 if steady else 1.0)
    switch = (rng.uniform(0, duration), rng.choice([-1, 1]) * rng.uniform(0.1, 0.2)) if rng.random() < 0.4 else (-1, 0)
    switch = (-1, 0) if steady else switch
    la = rng.uniform(0, 2 * np.pi)
    drift = 0.0 if steady else rng.uniform(0, 0.08)
    # The wearer looks at what the hands work on: the view zooms in on, and follows, the active object.
    gaze = (float(rng.uniform(1.5, 1.8)), float(rng.uniform(0.7, 0.9)), float(rng.uniform(0.15, 0.3)))
    gaze = gaze if head_motion else (1.0, 0.0, 1.0)
    return Look(
        skin=skin, sleeve=tuple(int(v) for v in rng.integers(20, 230, 3)), sleeve_frac=float(rng.uniform(0.3, 0.7)),
        quad=quad, pan_knots=knots, bob=(m * rng.uniform(0.005, 0.015), rng.uniform(0.8, 2.0), rng.uniform(0, 6)),
        roll=(m * rng.uniform(0.5, 3.0), rng.uniform(0.05, 0.3), rng.uniform(0, 6)),
        zoom=(m * rng.uniform(0.0, 0.04), rng.uniform(0.03, 0.2), rng.uniform(0, 6)), gaze=gaze,
        light=(light[..., None] * cast).astype(np.float32), drift=(drift, rng.uniform(8, 40), la),
        switch=(float(switch[0]), float(switch[1])), light_dir=(float(np.cos(la)), float(abs(np.sin(la)))), noise=noise,
    )  # fmt: skip


def _camera(look: Look, t: float, size: int, canvas: int, swing: float, gaze: tuple[float, float]) -> np.ndarray:
    """3x3 matrix mapping canvas px to output px at time ``t`` (perspective, gaze, then head motion).

    ``gaze`` is the point looked at, in canvas fractions: the view zooms in by ``look.gaze[0]`` and moves that
    point ``look.gaze[1]`` of the way to the centre.
    """
    src = look.quad * canvas
    dst = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float32)
    persp = cv2.getPerspectiveTransform(src, dst)
    z, w, _ = look.gaze
    if z != 1.0 or w:
        g = persp @ np.array([gaze[0] * canvas, gaze[1] * canvas, 1.0])
        c = size / 2
        q = c + w * (g[:2] / g[2] - c)  # the output point that becomes the centre
        persp = np.array([[z, 0, c - z * q[0]], [0, z, c - z * q[1]], [0, 0, 1]]) @ persp
    k = look.pan_knots
    grid = np.arange(len(k)) * 2.0
    pan = np.array([np.interp(t, grid, k[:, 0]) + swing, np.interp(t, grid, k[:, 1])]) * size
    a, f, p = look.bob
    pan[1] += a * size * math.sin(2 * math.pi * f * t + p)
    roll = look.roll[0] * math.sin(2 * math.pi * look.roll[1] * t + look.roll[2])
    zoom = 1 + look.zoom[0] * math.sin(2 * math.pi * look.zoom[1] * t + look.zoom[2])
    head = np.eye(3)
    head[:2] = cv2.getRotationMatrix2D((size / 2, size / 2), roll, zoom)
    head[:2, 2] += pan
    return head @ persp


def _affine(cx: float, cy: float, angle: float, sx: float, sy: float) -> np.ndarray:
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return np.array([[c * sx, s * sy, cx], [-s * sx, c * sy, cy], [0, 0, 1]])


def _shift(dx: float, dy: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], dtype=np.float64)


def _paste(canvas: np.ndarray, sprite: np.ndarray, local_to_canvas: np.ndarray) -> None:
    """Warp an RGBA sprite (centre = local origin) onto ``canvas`` and alpha-blend it in place."""
    n = sprite.shape[0]
    a = local_to_canvas @ _shift(-(n - 1) / 2, -(n - 1) / 2)
    corners = a[:2, :2] @ np.array([[0, n, n, 0], [0, 0, n, n]], np.float64) + a[:2, 2:]
    x0, y0 = max(0, int(corners[0].min()) - 1), max(0, int(corners[1].min()) - 1)
    x1, y1 = min(canvas.shape[1], int(corners[0].max()) + 2), min(canvas.shape[0], int(corners[1].max()) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    m = (_shift(-x0, -y0) @ a)[:2]
    warped = cv2.warpAffine(sprite, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    alpha = warped[..., 3:].astype(np.float32) * (1 / 255)
    roi = canvas[y0:y1, x0:x1].astype(np.float32)
    canvas[y0:y1, x0:x1] = (roi + (warped[..., :3] - roi) * alpha).astype(np.uint8)


def _draw_object(canvas: np.ndarray, spr: Sprites, o: ObjPose, px: float) -> None:
    """Draw one object (body, lid or hinged panel, cut lines, poured stream) at pose ``o``."""
    k = 1 + 0.35 * o.h
    sx = k * max(abs(o.flip_s), 0.06) * (1 + 0.5 * (1 - o.squash))
    base = _affine(o.x * px, o.y * px, o.angle, sx, k * o.squash)
    if o.flipped:
        _paste(canvas, spr.under, base)
        return
    if spr.flap_kind == "slide":
        if o.lid > 0.02:
            _paste(canvas, spr.body, base)
        dx, dy, extra = lid_offset(o.lid, spr.hx, spr.hy)
        lid_k = 1 + 0.15 * math.sin(math.pi * o.lid)
        _paste(canvas, spr.flap_front, base @ _affine(dx, dy, extra, lid_k, lid_k))
    elif spr.flap_kind == "hinge":
        _paste(canvas, spr.body, base)
        s = math.cos(math.pi * getattr(o, spr.flap_field))
        hx, hy = spr.hinge
        d = np.diag([s, 1.0, 1.0]) if spr.hinge_axis == 0 else np.diag([1.0, s, 1.0])
        flap = spr.flap_front if s >= 0 else spr.flap_back
        _paste(canvas, flap, base @ _shift(hx, hy) @ d @ _shift(-hx, -hy))
    else:
        _paste(canvas, spr.body, base)
    for j in range(o.cuts + (1 if o.cut_t > 0 else 0)):
        t = 1.0 if j < o.cuts else o.cut_t
        xc = (-0.35 + 0.35 * min(j, 2)) * spr.hx
        p0 = base @ np.array([xc, -0.9 * spr.hy, 1.0])
        p1 = base @ np.array([xc, (-0.9 + 1.8 * t) * spr.hy, 1.0])
        cv2.line(canvas, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), (45, 35, 30), 1, cv2.LINE_AA)
    if o.stream > 0.05:
        mouth = base @ np.array([-spr.hx, 0.0, 1.0])
        end = (int(mouth[0]), int(mouth[1] + 0.07 * px))
        cv2.line(canvas, (int(mouth[0]), int(mouth[1])), end, (175, 205, 240), 1 + int(2 * o.stream), cv2.LINE_AA)
        cv2.circle(canvas, end, int(1 + 0.025 * px * o.stream), (160, 195, 235), -1, cv2.LINE_AA)


def _hand_geometry(hand: HandPose, px: float) -> dict:
    """Pixel geometry of the forearm, palm, fingers and thumb."""
    k = 1 + 0.25 * hand.h
    dx, dy = hand_dir(hand.x, hand.y)
    nx, ny = -dy, dx  # across the hand; the thumb of a palm-down right hand is on the -n side
    p = np.array([hand.x, hand.y]) * px
    d, n = np.array([dx, dy]), np.array([nx, ny])
    sh = np.array(SHOULDER) * px
    wrist = p - d * 0.04 * px * k
    arm = np.array([sh + n * 0.06 * px, wrist + n * 0.03 * px * k, wrist - n * 0.03 * px * k, sh - n * 0.06 * px])
    fingers = []
    for i, (off, length) in enumerate(zip((-0.024, -0.008, 0.008, 0.024), (0.05, 0.056, 0.052, 0.042), strict=True)):
        frac = 1.0 if (hand.point > 0.5 and i == 0) else (0.35 if hand.point > 0.5 else 1 - 0.65 * hand.grip)
        fan = math.radians((i - 1.5) * 7 * (1 - hand.grip))
        fd = np.array([dx * math.cos(fan) - dy * math.sin(fan), dx * math.sin(fan) + dy * math.cos(fan)])
        base = p + d * 0.028 * px * k + n * off * px * k
        fingers.append((base, base + fd * length * px * k * frac))
    tb = p - n * 0.028 * px * k
    td = d * (0.4 + 0.5 * hand.grip) - n * (0.9 - 0.5 * hand.grip)
    thumb = (tb, tb + td / np.linalg.norm(td) * 0.04 * px * k)
    return {
        "arm": arm,
        "wrist": wrist,
        "palm": p,
        "d": d,
        "k": k,
        "fingers": fingers,
        "thumb": thumb,
        "sh": sh,
        "h": hand.h,
    }


def _pt(v: np.ndarray) -> tuple[int, int]:
    return int(v[0] + 0.5), int(v[1] + 0.5)


def _draw_tool(canvas: np.ndarray, hand: HandPose, g: dict, px: float) -> None:
    if hand.tool == "cloth":
        c, a = g["palm"], math.degrees(math.atan2(g["d"][1], g["d"][0]))
        box = cv2.boxPoints(((c[0], c[1]), (0.09 * px, 0.075 * px), a)).astype(np.int32)
        cv2.fillConvexPoly(canvas, box, (60, 90, 190), cv2.LINE_AA)
        cv2.polylines(canvas, [box], True, (235, 235, 240), 1, cv2.LINE_AA)
    elif hand.tool in ("knife", "spoon") and hand.tip is not None:
        tip = np.array(hand.tip) * px
        grip_pt = g["palm"] + g["d"] * 0.02 * px
        if hand.tool == "knife":
            cv2.line(canvas, _pt(g["palm"] - g["d"] * 0.02 * px), _pt(grip_pt), (25, 25, 25), max(2, int(0.02 * px)))
            cv2.line(canvas, _pt(grip_pt), _pt(tip), (200, 205, 210), max(1, int(0.014 * px)), cv2.LINE_AA)
        else:
            cv2.line(canvas, _pt(g["palm"]), _pt(tip), (190, 195, 200), max(1, int(0.008 * px)), cv2.LINE_AA)
            cv2.circle(canvas, _pt(tip), max(1, int(0.014 * px)), (200, 205, 210), -1, cv2.LINE_AA)


def _draw_hand(canvas: np.ndarray, hand: HandPose, g: dict, look: Look, px: float) -> None:
    """Forearm (sleeve, then skin), palm, fingers and thumb (geometry ``g``), each with a darker outline."""
    _draw_tool(canvas, hand, g, px)
    skin, dark = look.skin, shade(look.skin, 0.7)
    fw = max(1, int(0.017 * px * g["k"]))
    ang = math.degrees(math.atan2(g["d"][1], g["d"][0]))
    axes = (int(0.042 * px * g["k"]), int(0.034 * px * g["k"]))
    for colour, extra in ((dark, 1), (skin, 0)):
        cv2.fillConvexPoly(canvas, g["arm"].astype(np.int32), colour, cv2.LINE_AA)
        cv2.ellipse(canvas, _pt(g["palm"]), (axes[0] + extra, axes[1] + extra), ang, 0, 360, colour, -1, cv2.LINE_AA)
        for a, b in [*g["fingers"], g["thumb"]]:
            cv2.line(canvas, _pt(a), _pt(b), colour, fw + 2 * extra, cv2.LINE_AA)
    cuff = g["sh"] + (g["wrist"] - g["sh"]) * look.sleeve_frac
    arm = g["arm"]
    sleeve = np.array([arm[0], arm[0] + (arm[1] - arm[0]) * look.sleeve_frac,
                       arm[3] + (arm[2] - arm[3]) * look.sleeve_frac, arm[3]])  # fmt: skip
    cv2.fillConvexPoly(canvas, sleeve.astype(np.int32), look.sleeve, cv2.LINE_AA)
    n = np.array([-g["d"][1], g["d"][0]])
    cv2.line(canvas, _pt(cuff + n * 0.045 * px), _pt(cuff - n * 0.045 * px), shade(look.sleeve, 0.6), 2, cv2.LINE_AA)


def _shadows(canvas: np.ndarray, objs: list[tuple[Sprites, ObjPose]], hand: dict | None, look: Look,
             px: float) -> None:  # fmt: skip
    """Darken the table under objects and the hand (soft, offset along the light direction), in place."""
    mask = np.zeros(canvas.shape[:2], np.uint8)  # darkness x 255
    lx, ly = look.light_dir
    for spr, o in objs:
        off = 0.01 * px * (1 + 8 * o.h)
        c = (int(o.x * px + lx * off), int(o.y * px + ly * off))
        k = 1 + 0.35 * o.h
        axes = (int(spr.hx * k * max(abs(o.flip_s), 0.2)), int(spr.hy * k))
        cv2.ellipse(mask, c, axes, -o.angle, 0, 360, int(115 * (1 - 0.5 * o.h)), -1)
    if hand is not None:
        off = np.array([lx, ly]) * 0.012 * px * (1 + 6 * hand["h"])
        cv2.fillConvexPoly(mask, (hand["arm"] + off).astype(np.int32), 90)
        cv2.circle(mask, _pt(hand["palm"] + off), int(0.05 * px), 90, -1)
    light = cv2.merge([255 - cv2.blur(mask, (5, 5))] * 3)
    cv2.multiply(canvas, light, dst=canvas, scale=1 / 255)


def draw_watermark(frame: np.ndarray, index: int) -> None:
    """Write ``index`` as 16 black/white cells (2 rows of 8) into the top-left corner, in place."""
    cell = max(2, frame.shape[0] // 16)
    for bit in range(WATERMARK_BITS):
        r, c = divmod(bit, 8)
        frame[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = 255 if (index >> bit) & 1 else 0


def read_watermark(frame: np.ndarray) -> int:
    """Decode the frame index written by ``draw_watermark`` (robust to mild compression)."""
    cell = max(2, frame.shape[0] // 16)
    q = max(1, cell // 4)
    value = 0
    for bit in range(WATERMARK_BITS):
        r, c = divmod(bit, 8)
        patch = frame[r * cell + q : (r + 1) * cell - q, c * cell + q : (c + 1) * cell - q]
        if patch.mean() > 127:
            value |= 1 << bit
    return value


def make_ctx(spr: Sprites, act: PlannedAction, px: float) -> Ctx:
    """Program context for ``act`` from the object's sprites (extents converted to canvas fractions)."""
    hx, hy = spr.hx / px, spr.hy / px
    hinge = (spr.hinge[0] / px, spr.hinge[1] / px)
    if spr.hinge_axis == 0:
        edge = (-hinge[0] if hinge[0] else hx, 0.3 * hy)
    else:
        edge = (0.3 * hx, -hinge[1] if hinge[1] else -hy)
    return Ctx(r=act.noun.size, hx=hx, hy=hy, dur=act.end - act.start, hinge=hinge, edge=edge,
               axis=spr.hinge_axis, slide=spr.flap_kind != "hinge")  # fmt: skip


class _SceneArt:
    """A scene's table and sprites, its objects' current states, and a cache of the static layer."""

    def __init__(self, plan: VideoPlan, index: int, canvas: int, look: Look) -> None:
        scene = plan.scenes[index]
        rng = np.random.default_rng(scene.table_seed)
        self.bg = make_table(canvas, rng)
        self.sprites = [make_sprites(n, canvas, rng) for n in scene.nouns]
        self.states = list(scene.init)
        self.look, self.px = look, float(canvas)
        self._cache: tuple[tuple, np.ndarray] | None = None

    def set_state(self, i: int, pose: ObjPose) -> None:
        self.states[i] = pose
        self._cache = None

    def static_layer(self, active: int | None) -> np.ndarray:
        """Table, shadows and every object except ``active`` (redrawn only when a state changes)."""
        if self._cache is None or self._cache[0] != (active,):
            canvas = self.bg.copy()
            idx = sorted((i for i in range(len(self.states)) if i != active), key=lambda i: self.states[i].h)
            _shadows(canvas, [(self.sprites[i], self.states[i]) for i in idx], None, self.look, self.px)
            for i in idx:
                _draw_object(canvas, self.sprites[i], self.states[i], self.px)
            self._cache = ((active,), canvas)
        return self._cache[1]


def _act(act: PlannedAction, art: _SceneArt, u: float, px: float) -> tuple[ObjPose, HandPose]:
    return PROGRAMS[act.verb.program](u, act.a, act.b, make_ctx(art.sprites[act.obj], act, px))


def _blend_hand(a: HandPose, b: HandPose, t: float) -> HandPose:
    t = t * t * (3 - 2 * t)
    return HandPose(a.x + (b.x - a.x) * t, a.y + (b.y - a.y) * t, h=a.h + (b.h - a.h) * t,
                    grip=a.grip + (b.grip - a.grip) * t, point=a.point + (b.point - a.point) * t)  # fmt: skip


def _gap_hand(nxt: PlannedAction | None, art: _SceneArt, scene: int, prev: HandPose, prev_end: float,
              t: float, until: float) -> HandPose:  # fmt: skip
    """Between actions the hand moves from where the last one left it to where the next one starts."""
    goal = _act(nxt, art, 0.0, art.px)[1] if nxt is not None and nxt.scene == scene else _OFF
    return _blend_hand(prev, goal, min(1.0, (t - prev_end) / max(1e-3, until - prev_end)))


def render_frames(plan: VideoPlan, look: Look, size: int, fps: float, watermark: bool = False) -> Iterator[np.ndarray]:
    """Yield every frame of ``plan`` as an (S, S, 3) uint8 RGB array, in order."""
    canvas_px = int(round(1.5 * size))
    arts: dict[int, _SceneArt] = {0: _SceneArt(plan, 0, canvas_px, look)}
    scene, ai, prev_hand, prev_end = 0, 0, _OFF, 0.0
    acts = plan.actions
    gaze = _REST_GAZE
    follow = 1 - math.exp(-1 / (fps * look.gaze[2]))  # per-frame smoothing of the gaze point
    for f in range(int(round(plan.duration * fps))):
        t = f / fps
        while ai < len(acts) and t >= acts[ai].end:
            art = arts[acts[ai].scene]
            art.set_state(acts[ai].obj, acts[ai].b)
            prev_hand, prev_end = _act(acts[ai], art, 1.0, art.px)[1], acts[ai].end
            ai += 1
        nxt = acts[ai] if ai < len(acts) else None
        swing, until = 0.0, nxt.start if nxt is not None else plan.duration
        if nxt is not None and nxt.scene != scene:  # walking to the next counter
            until = (prev_end + nxt.start) / 2
            tau = (t - until) / 0.5  # the head swings away, the scene changes, the head swings back
            swing = 0.35 * math.copysign(1 - abs(tau), -tau) if abs(tau) < 1 else 0.0
            if t >= until:
                scene = nxt.scene
                arts[scene] = _SceneArt(plan, scene, canvas_px, look)
                prev_hand, prev_end, until = _OFF, until, nxt.start
        art = arts[scene]
        if nxt is not None and nxt.start <= t and nxt.scene == scene:
            pose, hand = _act(nxt, art, (t - nxt.start) / (nxt.end - nxt.start), art.px)
            gaze = _follow(gaze, (pose.x, pose.y), follow)
            frame = _compose(art, nxt.obj, pose, hand, look, t, size, swing, gaze, f if watermark else None)
        else:
            hand = _gap_hand(nxt, art, scene, prev_hand, prev_end, t, until)
            ahead = nxt is not None and nxt.scene == scene  # the eyes go to the next object before the hand
            gaze = _follow(gaze, (nxt.a.x, nxt.a.y) if ahead else _REST_GAZE, follow)
            frame = _compose(art, None, None, hand, look, t, size, swing, gaze, f if watermark else None)
        yield frame


_REST_GAZE = (0.5, 0.45)  # where the wearer looks with no hand in view (canvas fractions)


def _follow(gaze: tuple[float, float], target: tuple[float, float], k: float) -> tuple[float, float]:
    """Move the gaze point a share ``k`` of the way to ``target``, kept over the counter."""
    tx = min(max(target[0], X_RANGE[0]), X_RANGE[1])
    ty = min(max(target[1], Y_RANGE[0]), Y_RANGE[1])
    return gaze[0] + k * (tx - gaze[0]), gaze[1] + k * (ty - gaze[1])


def _compose(art: _SceneArt, active: int | None, pose: ObjPose | None, hand: HandPose, look: Look, t: float,
             size: int, swing: float, gaze: tuple[float, float], mark: int | None) -> np.ndarray:  # fmt: skip
    """Static layer + the moving object + the hand, then camera warp, lighting, noise and watermark."""
    px = art.px
    canvas = art.static_layer(active).copy()
    g = _hand_geometry(hand, px)
    moving = [(art.sprites[active], pose)] if active is not None and pose is not None else []
    _shadows(canvas, moving, g, look, px)
    if moving:
        _draw_object(canvas, moving[0][0], moving[0][1], px)
    _draw_hand(canvas, hand, g, look, px)
    m = _camera(look, t, size, int(px), swing, gaze)
    out = cv2.warpPerspective(canvas, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    amp, period, phase = look.drift
    gain = 1 + amp * math.sin(2 * math.pi * t / period + phase)
    if look.switch[0] >= 0:
        gain += look.switch[1] * min(1.0, max(0.0, t - look.switch[0]))
    frame = out.astype(np.float32) * (look.light * gain) + look.noise[int(t * 7) % len(look.noise)]
    frame = np.clip(frame, 0, 255).astype(np.uint8)
    if mark is not None:
        draw_watermark(frame, mark)
    return frame

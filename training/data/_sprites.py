"""Object sprites and table surfaces for the synthetic egocentric renderer (private).

Every scene object is drawn once per scene into RGBA sprites (at twice the resolution, then area-downsampled
for anti-aliasing); the per-frame compositor only warps and blends them. Each sprite is rotationally
asymmetric (a handle, stem, label or seam) so turning and rolling are visible.

Object parts: ``body`` is always drawn; ``flap_front``/``flap_back`` form a lid (``flap_kind="slide"``: the lid
slides off) or a hinged panel (``"hinge"``: book cover, laptop screen, the far half of a folded towel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from egovlpv2_edge.training.data.taxonomy import Noun

RGB = tuple[int, int, int]
_SS = 2  # supersampling factor for sprite drawing


@dataclass
class Sprites:
    """The pre-drawn parts of one scene object (RGBA uint8, centre of the array = object centre).

    Attributes:
        body: Part always drawn (for boxes and jars: the open interior, hidden under the lid when closed).
        under: The body seen from below (after a flip).
        flap_front: Lid / hinged panel as seen when closed, or None.
        flap_back: Back of a hinged panel (seen when opened past 90 degrees), or None.
        flap_kind: "", "slide" or "hinge".
        hinge: Local (x, y) px of the hinge line's centre (hinge flaps only).
        hinge_axis: 0 when the panel swings along x (book spine on the left), 1 along y.
        flap_field: The object state that drives the flap: "lid" (open/close) or "fold" (towels).
        hx: Half width of the whole object in px.
        hy: Half height of the whole object in px.
    """

    body: np.ndarray
    under: np.ndarray
    flap_front: np.ndarray | None = None
    flap_back: np.ndarray | None = None
    flap_kind: str = ""
    hinge: tuple[float, float] = (0.0, 0.0)
    hinge_axis: int = 1
    flap_field: str = "lid"
    hx: float = 0.0
    hy: float = 0.0


def shade(rgb: RGB, k: float) -> RGB:
    """Scale a colour by ``k`` (darker below 1, lighter above), clipped to [0, 255]."""
    return tuple(int(np.clip(c * k, 0, 255)) for c in rgb)  # type: ignore[return-value]


def _texture(kind: str, rgb: RGB, n: int, rng: np.random.Generator) -> np.ndarray:
    """An n x n RGB texture of ``kind`` around colour ``rgb``."""
    base = np.empty((n, n, 3), np.float32)
    base[:] = rgb
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    period = max(4, n // 6)
    if kind == "striped":
        alt = np.array(shade(rgb, 0.45) if sum(rgb) > 450 else (240, 240, 235), np.float32)
        base[((xx + yy * 0.3) // (period / 2)) % 2 == 1] = alt
    elif kind == "checkered":
        alt = np.array((245, 245, 240), np.float32)
        base[((xx // period) + (yy // period)) % 2 == 1] = alt
    elif kind == "dotted":
        dots = np.zeros((n, n), np.uint8)
        for cy in range(period // 2, n, period):
            for cx in range((cy // period % 2) * period // 2, n, period):
                cv2.circle(dots, (cx, cy), max(1, period // 5), 1, -1)
        base[dots > 0] = shade(rgb, 0.55)
    elif kind == "speckled":
        base *= 1.0 + 0.25 * (rng.random((n, n, 1), dtype=np.float32) - 0.5)
    elif kind == "grain":
        base *= (1.0 + 0.12 * np.sin(yy / 3.0 + 2.0 * np.sin(xx / 9.0)))[..., None]
    return np.clip(base, 0, 255).astype(np.uint8)


class _Canvas:
    """A supersampled RGBA drawing surface in local object coordinates (px at the final scale)."""

    def __init__(self, half: float) -> None:
        self.n = int(np.ceil(half)) * 2 * _SS + 2 * _SS
        self.img = np.zeros((self.n, self.n, 4), np.uint8)
        self.c = self.n / 2.0

    def p(self, x: float, y: float) -> tuple[int, int]:
        return int(round(self.c + x * _SS)), int(round(self.c + y * _SS))

    def s(self, v: float) -> int:
        return max(1, int(round(v * _SS)))

    def fill_textured(self, mask_draw: Callable[[np.ndarray], object], tex: np.ndarray) -> None:
        mask = np.zeros((self.n, self.n), np.uint8)
        mask_draw(mask)
        tex = cv2.resize(tex, (self.n, self.n), interpolation=cv2.INTER_NEAREST)
        sel = mask > 0
        self.img[sel, :3] = tex[sel]
        self.img[sel, 3] = 255

    def circle(self, x: float, y: float, r: float, rgb: RGB, thick: int = -1) -> None:
        t = thick if thick < 0 else self.s(thick)
        cv2.circle(self.img, self.p(x, y), self.s(r), (*rgb, 255), t, cv2.LINE_AA)

    def rect(self, x0: float, y0: float, x1: float, y1: float, rgb: RGB, thick: int = -1) -> None:
        t = thick if thick < 0 else self.s(thick)
        cv2.rectangle(self.img, self.p(x0, y0), self.p(x1, y1), (*rgb, 255), t, cv2.LINE_AA)

    def ellipse(self, x: float, y: float, ax: float, ay: float, rgb: RGB, ang: float = 0.0) -> None:
        cv2.ellipse(self.img, self.p(x, y), (self.s(ax), self.s(ay)), ang, 0, 360, (*rgb, 255), -1, cv2.LINE_AA)

    def line(self, x0: float, y0: float, x1: float, y1: float, rgb: RGB, w: float) -> None:
        cv2.line(self.img, self.p(x0, y0), self.p(x1, y1), (*rgb, 255), self.s(w), cv2.LINE_AA)

    def poly(self, pts: list[tuple[float, float]], rgb: RGB) -> None:
        arr = np.array([self.p(x, y) for x, y in pts], np.int32)
        cv2.fillPoly(self.img, [arr], (*rgb, 255), cv2.LINE_AA)

    def done(self) -> np.ndarray:
        out = cv2.resize(self.img, (self.n // _SS, self.n // _SS), interpolation=cv2.INTER_AREA)
        return out


def _textured_circle(cv: _Canvas, r: float, noun: Noun, rng: np.random.Generator) -> None:
    tex = _texture(noun.texture, noun.rgb, 64, rng)
    cv.fill_textured(lambda m: cv2.circle(m, cv.p(0, 0), cv.s(r), 1, -1, cv2.LINE_AA), tex)


def _textured_rect(cv: _Canvas, hx: float, hy: float, rgb: RGB, texture: str, rng: np.random.Generator) -> None:
    tex = _texture(texture, rgb, 64, rng)
    cv.fill_textured(lambda m: cv2.rectangle(m, cv.p(-hx, -hy), cv.p(hx, hy), 1, -1), tex)


def _round(cv: _Canvas, r: float, noun: Noun, rng: np.random.Generator) -> None:
    """Cups, bowls, plates, balls, fruit, cans: round bodies with an asymmetric mark."""
    rgb, s = noun.rgb, noun.shape
    if s == "cup":
        cv.circle(1.15 * r, 0, 0.32 * r, shade(rgb, 0.8), thick=max(1, int(0.16 * r)))
    if s == "pan":
        cv.rect(0.9 * r, -0.14 * r, 2.0 * r, 0.14 * r, (25, 25, 25))
    if s == "pot":
        for sx in (-1, 1):
            cv.rect(sx * 0.95 * r - 0.15 * r, -0.2 * r, sx * 0.95 * r + 0.15 * r, 0.2 * r, shade(rgb, 0.6))
    _textured_circle(cv, r, noun, rng)
    if s in ("cup", "bowl", "pan", "pot"):
        inner = (70, 45, 25) if s == "cup" else shade(rgb, 0.7 if s != "pan" else 2.2)
        cv.circle(0, 0, 0.74 * r, inner)
        cv.circle(0.35 * r, -0.5 * r, 0.12 * r, shade(rgb, 1.4))  # rim mark
    elif s == "plate":
        cv.circle(0, 0, 0.68 * r, shade(rgb, 0.93), thick=1)
        cv.circle(0.3 * r, 0.2 * r, 0.18 * r, (90, 160, 60))  # a few peas
        cv.circle(0.45 * r, 0.05 * r, 0.14 * r, (90, 160, 60))
    elif s == "ball":
        seam = (250, 250, 250) if noun.texture == "plain" else shade(rgb, 0.5)
        cv2.ellipse(cv.img, cv.p(-0.6 * r, 0), (cv.s(0.55 * r), cv.s(0.9 * r)), 0, -70, 70, (*seam, 255), cv.s(1))
        cv.circle(-0.35 * r, -0.35 * r, 0.18 * r, shade(rgb, 1.5))
    elif s in ("apple", "tomato", "orange"):
        cv.circle(-0.3 * r, -0.3 * r, 0.2 * r, shade(rgb, 1.35))
        if s == "tomato":
            for k in range(5):
                a = k * 2 * np.pi / 5
                cv.line(0.15 * r, 0, 0.15 * r + 0.45 * r * np.cos(a), 0.45 * r * np.sin(a), (40, 120, 40), 0.18 * r)
        else:
            cv.line(0.1 * r, 0, 0.3 * r, -0.2 * r, (90, 60, 30), 0.12 * r)
            cv.ellipse(0.45 * r, -0.3 * r, 0.28 * r, 0.12 * r, (50, 140, 50), ang=-30)
    elif s == "can":
        cv.circle(0, 0, 0.82 * r, (205, 208, 212))
        cv.circle(0, 0, 0.82 * r, (150, 150, 155), thick=1)
        cv.ellipse(0.35 * r, 0, 0.22 * r, 0.12 * r, (120, 120, 125))


def _long(cv: _Canvas, r: float, noun: Noun, rng: np.random.Generator) -> tuple[float, float]:
    """Bottles, carrots, bananas, bread, cheese, phones: elongated shapes. Returns (hx, hy)."""
    rgb, s = noun.rgb, noun.shape
    if s == "bottle":
        hx, hy = r, 0.36 * r
        _textured_rect(cv, 0.75 * r, hy, rgb, noun.texture, rng)
        cv.circle(-0.75 * r, 0, hy, rgb)
        cv.rect(0.7 * r, -0.16 * r, r, 0.16 * r, shade(rgb, 0.8))
        cv.rect(0.95 * r, -0.2 * r, 1.1 * r, 0.2 * r, (240, 240, 240))
        cv.rect(-0.3 * r, -hy, 0.2 * r, hy, (235, 235, 225))  # label
        cv.line(-0.8 * r, -0.2 * r, 0.6 * r, -0.2 * r, shade(rgb, 1.5), 0.08 * r)
    elif s == "carrot":
        hx, hy = 1.1 * r, 0.25 * r
        cv.poly([(-0.8 * r, -hy), (1.1 * r, 0), (-0.8 * r, hy)], rgb)
        for k in range(4):
            x = -0.5 * r + 0.35 * k * r
            cv.line(x, -0.12 * r, x, 0.12 * r, shade(rgb, 0.7), 0.05 * r)
        for a in (-0.4, 0, 0.4):
            cv.line(-0.8 * r, 0, -1.15 * r, a * r, (50, 140, 50), 0.12 * r)
    elif s == "banana":
        hx, hy = r, 0.5 * r
        pts = [(r * np.cos(a), 0.9 * r * np.sin(a) - 0.5 * r) for a in np.linspace(0.35, np.pi - 0.35, 12)]
        arr = np.array([cv.p(x, y) for x, y in pts], np.int32)
        cv2.polylines(cv.img, [arr], False, (*rgb, 255), cv.s(0.42 * r), cv2.LINE_AA)
        cv.circle(*pts[0], 0.12 * r, (90, 60, 30))
        cv.circle(*pts[-1], 0.12 * r, (60, 40, 20))
    elif s == "bread":
        hx, hy = r, 0.6 * r
        cv.ellipse(0, 0, hx, hy, shade(rgb, 0.8))
        cv.ellipse(0, 0, 0.9 * hx, 0.8 * hy, shade(rgb, 1.15))
        for k in (-1, 0, 1):
            cv.line(k * 0.4 * r - 0.15 * r, -0.35 * r, k * 0.4 * r + 0.15 * r, 0.35 * r, shade(rgb, 0.75), 0.1 * r)
    elif s == "cheese":
        hx, hy = r, 0.7 * r
        cv.poly([(-r, -hy), (r, -hy), (-r, hy)], rgb)
        cv.line(-r, -hy, r, -hy, shade(rgb, 0.75), 0.2 * r)
        for x, y in ((-0.6, -0.3), (-0.2, -0.45), (-0.7, 0.2)):
            cv.circle(x * r, y * r, 0.11 * r, shade(rgb, 0.7))
    else:  # phone
        hx, hy = 0.55 * r, r
        cv.rect(-hx, -hy, hx, hy, rgb)
        cv.rect(-0.45 * r, -0.85 * r, 0.45 * r, 0.75 * r, (30, 60, 110))
        cv.rect(-0.3 * r, -0.6 * r, 0.1 * r, -0.35 * r, (90, 180, 230))
        cv.circle(0, 0.88 * r, 0.06 * r, (90, 90, 90))
    return hx, hy


def _under(body: np.ndarray) -> np.ndarray:
    """The underside of a body: darker, mirrored, with a moulded ring."""
    out = body[:, ::-1].copy()
    out[..., :3] = (out[..., :3].astype(np.float32) * 0.55 + 20).clip(0, 255).astype(np.uint8)
    n = out.shape[0]
    ring = np.zeros_like(out)
    cv2.circle(ring, (n // 2, n // 2), max(1, n // 6), (230, 230, 230, 255), 1, cv2.LINE_AA)
    sel = (ring[..., 3] > 0) & (out[..., 3] > 128)
    out[sel, :3] = 215
    return out


def _box_like(noun: Noun, r: float, rng: np.random.Generator) -> Sprites:
    """Boxes, jars and pots: an open interior plus a lid that slides off."""
    rgb, s = noun.rgb, noun.shape
    round_ = s in ("jar", "pot")
    hx, hy = (r, r) if round_ else (1.1 * r, 0.85 * r)
    half = 1.6 * max(hx, hy)
    body, lid = _Canvas(half), _Canvas(half)
    if round_:
        if s == "pot":
            _round(body, r, noun, rng)
        else:
            body.circle(0, 0, r, shade(rgb, 0.9))
            body.circle(0, 0, 0.8 * r, (150, 90, 40) if s == "jar" else shade(rgb, 0.5))  # contents
        lid_rgb = (200, 170, 60) if s == "jar" else shade(rgb, 0.85)
        lid.circle(0, 0, 0.85 * r, lid_rgb)
        for k in range(10):
            a = k * np.pi / 5
            lid.line(0.6 * r * np.cos(a), 0.6 * r * np.sin(a), 0.82 * r * np.cos(a), 0.82 * r * np.sin(a),
                     shade(lid_rgb, 0.7), 0.06 * r)  # fmt: skip
        lid.circle(0.3 * r, 0.1 * r, 0.14 * r, shade(lid_rgb, 0.6))
    else:
        _textured_rect(body, hx, hy, shade(rgb, 0.85), noun.texture, rng)
        body.rect(-0.85 * hx, -0.8 * hy, 0.85 * hx, 0.8 * hy, shade(rgb, 0.4))
        body.circle(-0.3 * hx, 0.2 * hy, 0.2 * r, (200, 200, 60))  # something inside
        _textured_rect(lid, 1.04 * hx, 1.04 * hy, rgb, noun.texture, rng)
        lid.rect(-0.12 * hx, -1.04 * hy, 0.12 * hx, 1.04 * hy, (215, 195, 140))  # tape
        lid.rect(0.45 * hx, 0.35 * hy, 0.9 * hx, 0.85 * hy, (245, 245, 245))  # label
    b = body.done()
    return Sprites(body=b, under=_under(b), flap_front=lid.done(), flap_kind="slide", hx=hx, hy=hy)


def _hinged(noun: Noun, r: float, rng: np.random.Generator) -> Sprites:
    """Books, laptops and towels: a body plus a panel that swings about a hinge."""
    rgb, s = noun.rgb, noun.shape
    if s == "towel":
        hx, hy = 1.0 * r, 0.8 * r
        half = 1.2 * max(hx, hy)
        full = _Canvas(half)
        _textured_rect(full, hx, hy, rgb, noun.texture, rng)
        for k in np.linspace(-0.9, 0.9, 7):
            full.line(-hx, k * hy, -1.12 * hx, k * hy, shade(rgb, 0.8), 0.05 * r)
            full.line(hx, k * hy, 1.12 * hx, k * hy, shade(rgb, 0.8), 0.05 * r)
        full.rect(-hx, -hy, hx, -0.8 * hy, shade(rgb, 0.6))  # hem on the far edge
        img = full.done()
        n = img.shape[0]
        near, far = img.copy(), img.copy()
        near[: n // 2, :, 3], far[n // 2 :, :, 3] = 0, 0
        back = far.copy()  # the far half seen from below; the hinge transform mirrors it onto the near half
        back[..., :3] = (back[..., :3].astype(np.float32) * 0.7).astype(np.uint8)
        return Sprites(body=near, under=_under(img), flap_front=far, flap_back=back, flap_kind="hinge",
                       hinge=(0.0, 0.0), hinge_axis=1, flap_field="fold", hx=hx, hy=hy)  # fmt: skip
    book = s == "book"
    hx, hy = (0.75 * r, r) if book else (r, 0.7 * r)
    half = 1.2 * max(hx, hy)
    base, front, back = _Canvas(half), _Canvas(half), _Canvas(half)
    if book:
        base.rect(-hx, -hy, hx, hy, (245, 242, 230))
        for k in np.linspace(-0.7, 0.7, 7):
            base.line(-0.8 * hx, k * hy, 0.8 * hx, k * hy, (160, 160, 160), 0.04 * r)
        _textured_rect(front, hx, hy, rgb, noun.texture, rng)
        front.rect(-hx, -hy, -0.75 * hx, hy, shade(rgb, 0.6))  # spine
        front.rect(-0.4 * hx, -0.6 * hy, 0.6 * hx, -0.3 * hy, (230, 200, 80))  # title
        back.rect(-hx, -hy, hx, hy, (240, 238, 225))
        back.rect(-hx, -hy, hx, hy, shade(rgb, 0.8), thick=1)
        hinge, axis = (-hx, 0.0), 0
    else:
        base.rect(-hx, -hy, hx, hy, shade(rgb, 0.8))
        for kx in np.linspace(-0.8, 0.8, 9):
            for ky in np.linspace(-0.5, 0.5, 4):
                base.rect(kx * hx - 0.07 * r, ky * hy - 0.07 * r, kx * hx + 0.07 * r, ky * hy + 0.07 * r, (40, 40, 45))
        front.rect(-hx, -hy, hx, hy, rgb)
        front.circle(0.2 * hx, 0.1 * hy, 0.15 * r, shade(rgb, 1.5))  # logo
        back.rect(-hx, -hy, hx, hy, (40, 40, 45))
        back.rect(-0.9 * hx, -0.85 * hy, 0.9 * hx, 0.85 * hy, (60, 110, 190))
        back.rect(-0.6 * hx, -0.5 * hy, 0.1 * hx, 0.2 * hy, (230, 230, 240))  # a window on screen
        hinge, axis = (0.0, -hy), 1
    b = base.done()
    return Sprites(body=b, under=_under(front.done()), flap_front=front.done(), flap_back=back.done(),
                   flap_kind="hinge", hinge=hinge, hinge_axis=axis, hx=hx, hy=hy)  # fmt: skip


def make_sprites(noun: Noun, canvas: int, rng: np.random.Generator) -> Sprites:
    """Draw all parts of ``noun`` for a canvas of ``canvas`` px (the object's radius is ``noun.size * canvas``)."""
    r = noun.size * canvas
    if noun.shape in ("box", "jar", "pot"):
        return _box_like(noun, r, rng)
    if noun.shape in ("book", "laptop", "towel"):
        return _hinged(noun, r, rng)
    cv = _Canvas(2.3 * r)
    if noun.shape in ("bottle", "carrot", "banana", "bread", "cheese", "phone"):
        hx, hy = _long(cv, r, noun, rng)
    elif noun.shape == "sponge":
        hx, hy = 0.8 * r, 0.55 * r
        _textured_rect(cv, hx, hy, noun.rgb, noun.texture, rng)
        cv.rect(-hx, -hy, -0.1 * hx, hy, (40, 130, 60))
    else:
        _round(cv, r, noun, rng)
        hx = hy = r
    body = cv.done()
    return Sprites(body=body, under=_under(body), hx=hx, hy=hy)


def make_table(canvas: int, rng: np.random.Generator) -> np.ndarray:
    """A textured counter (wood, stone, cloth or laminate) with a wall band at the far edge; RGB uint8."""
    n = canvas
    kind = rng.choice(["wood", "stone", "cloth", "laminate"])
    base = tuple(int(v) for v in rng.integers(90, 200, 3))
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    img = np.empty((n, n, 3), np.float32)
    img[:] = base
    if kind == "wood":
        img[:] = (150 + rng.integers(-30, 30), 105 + rng.integers(-20, 20), 65)
        f = rng.uniform(0.15, 0.3)
        img *= (1.0 + 0.12 * np.sin(xx * f + 3.0 * np.sin(yy * 0.03 + rng.uniform(0, 6))))[..., None]
    elif kind == "stone":
        noise = cv2.GaussianBlur(rng.random((n, n), dtype=np.float32), (0, 0), 3.0)
        img *= (0.85 + 0.6 * (noise - noise.mean()))[..., None]
    elif kind == "cloth":
        period = int(rng.integers(10, 20))
        alt = np.array(shade(base, 1.35), np.float32)  # type: ignore[arg-type]
        img[((xx // period) + (yy // period)) % 2 == 1] = alt
    img *= 1.0 + 0.08 * (rng.random((n, n, 1), dtype=np.float32) - 0.5)
    wall = int(n * rng.uniform(0.08, 0.16))
    img[:wall] = tuple(int(v) for v in rng.integers(150, 235, 3))
    img[wall : wall + 2] *= 0.6  # the counter's back edge
    for _ in range(int(rng.integers(0, 3))):  # static clutter baked into the surface (a mat, a board)
        x0, y0 = int(rng.integers(0, n - n // 4)), int(rng.integers(wall + 4, n - n // 4))
        w, h = int(rng.integers(n // 10, n // 5)), int(rng.integers(n // 12, n // 6))
        img[y0 : y0 + h, x0 : x0 + w] = tuple(int(v) for v in rng.integers(40, 220, 3))
    return np.clip(img, 0, 255).astype(np.uint8)

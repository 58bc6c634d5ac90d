"""Backgrounds, colours and clutter of the training generator (:mod:`.digits`).

Every item is drawn in two steps, like the digit: a small frozen record (kind, placement, colour and a
seed) and a pure render of that record, so a sample can be redrawn with parts left out.

Why these kinds: a classifier trained on one flat noisy ground with digit fragments learns that ground
and those fragments; gradients, blotches and gratings make it ignore low-frequency and periodic
structure, and scribbles, arcs, rectangles, blobs and dots (half of them in the digit's colour) make it
look for the shape of a whole digit rather than for any bright stroke or for the digit's colour.
Clutter is always smaller than the digit and off its box, so the label stays unambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from camserve.demo.canvas import RGB, Box, Patch, cut_faint, luminance, overlaps

BACKGROUNDS: tuple[str, ...] = ("flat", "gradient", "blotches", "grating")
CLUTTER_KINDS: tuple[str, ...] = ("fragment", "scribble", "arc", "rectangle", "blob", "dots")
DARK_INK_SHARE: float = 0.3
"""Share of samples with dark ink on a lighter ground (the rest: light ink on a darker ground)."""
MIN_CONTRAST: float = 70.0
"""Least luma difference (grey levels) between ink and the ground's base colour."""


@dataclass(frozen=True)
class Background:
    """A ground: ``kind`` (one of :data:`BACKGROUNDS`), base ``color``, pattern ``amplitude`` in grey
    levels (peak to peak) and the ``seed`` of its random pattern."""

    kind: str
    color: RGB
    amplitude: float
    seed: int


@dataclass(frozen=True)
class Clutter(Patch):
    """One distractor of the training generator: ``kind`` is one of :data:`CLUTTER_KINDS`; ``source`` is
    the digit a ``fragment`` is cut from (-1 for the other kinds)."""

    source: int = -1


def pick(rng: np.random.Generator, items: tuple[str, ...], weights: tuple[float, ...]) -> str:
    """One of ``items`` with the given weights (a faster ``rng.choice(items, p=...)``, one draw)."""
    return items[int(np.searchsorted(np.cumsum(weights), rng.random() * sum(weights), side="right"))]


@lru_cache(maxsize=4)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs), each (side, side) float32 in [0, 1): pixel coordinates divided by ``side``."""
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) / side
    ys.setflags(write=False)
    xs.setflags(write=False)
    return ys, xs


def _colour(rng: np.random.Generator) -> RGB:
    c = rng.integers(0, 256, size=3)
    return int(c[0]), int(c[1]), int(c[2])


def pick_colours(rng: np.random.Generator) -> tuple[RGB, RGB, RGB]:
    """(ink, ground, other): ink and a second clutter colour both at least :data:`MIN_CONTRAST` luma
    away from the ground, on the same side (light on dark, or dark on light)."""
    dark_ink = rng.random() < DARK_INK_SHARE
    sign = -1.0 if dark_ink else 1.0

    def contrasting(ground: RGB) -> RGB:
        for _ in range(100):
            c = _colour(rng)
            if sign * (luminance(c) - luminance(ground)) >= MIN_CONTRAST:
                return c
        return (0, 0, 0) if dark_ink else (255, 255, 255)

    lo, hi = (110, 256) if dark_ink else (0, 146)
    g = rng.integers(lo, hi, size=3)
    ground: RGB = (int(g[0]), int(g[1]), int(g[2]))
    return contrasting(ground), ground, contrasting(ground)


def draw_background(rng: np.random.Generator, ground: RGB) -> Background:
    kind = pick(rng, BACKGROUNDS, (0.25, 0.25, 0.3, 0.2))
    amplitude = 0.0 if kind == "flat" else float(rng.uniform(10.0, 50.0))
    return Background(kind, ground, amplitude, int(rng.integers(0, 2**31 - 1)))


def render_background(bg: Background, side: int) -> np.ndarray:
    """(side, side, 3) float32 canvas of ``bg`` (grey levels, may leave 0..255 before rounding)."""
    canvas = np.empty((side, side, 3), np.float32)
    canvas[...] = np.asarray(bg.color, np.float32)
    if bg.kind == "flat":
        return canvas
    rng = np.random.default_rng(bg.seed)
    ys, xs = _grid(side)
    if bg.kind == "gradient":
        theta = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(theta) * xs + np.sin(theta) * ys
        pattern = (ramp - ramp.mean())[:, :, None] * np.ones(3, np.float32)
    elif bg.kind == "blotches":
        cells = int(rng.integers(2, 7))
        small = rng.standard_normal((cells, cells, 3)).astype(np.float32)
        pattern = cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)
    else:  # grating: stripes of 3..16 pixels, any direction
        theta, period, phase = rng.uniform(0, np.pi), rng.uniform(3.0, 16.0), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * side * (np.cos(theta) * xs + np.sin(theta) * ys) / period + phase)
        pattern = wave[:, :, None] * rng.uniform(0.5, 1.0, size=3).astype(np.float32)
    span = float(pattern.max() - pattern.min())
    if span > 0:
        canvas += pattern * np.float32(bg.amplitude / span)
    return canvas


def _fragment(rng: np.random.Generator, glyph: np.ndarray, w: int, h: int) -> np.ndarray:
    """A crop of 2..5 x 2..5 cells of an 8x8 glyph with enough ink, scaled to (h, w)."""
    piece = glyph
    for _ in range(20):
        ch, cw = int(rng.integers(2, 6)), int(rng.integers(2, 6))
        r0, c0 = int(rng.integers(0, 9 - ch)), int(rng.integers(0, 9 - cw))
        piece = glyph[r0 : r0 + ch, c0 : c0 + cw]
        if piece.sum() >= 0.25 * ch * cw:
            break
    up = cv2.resize(np.asarray(piece, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip((up - 0.4) / 0.3 + 0.5, 0.0, 1.0)


def render_clutter(item: Clutter, glyphs: np.ndarray) -> np.ndarray:
    """Alpha mask (float32 (h, w) in [0, 1]) of one clutter item; pure function of the record."""
    rng = np.random.default_rng(item.seed)
    w, h = item.w, item.h
    if item.kind == "fragment":
        return cut_faint(_fragment(rng, glyphs[item.source], w, h))
    # Shapes are drawn 4x larger on uint8 (anti-aliasing) and shrunk by area averaging.
    s = 4
    img = np.zeros((h * s, w * s), np.uint8)
    thick = int(rng.integers(1, 4)) * s

    def pt() -> tuple[int, int]:
        return int(rng.integers(0, w * s)), int(rng.integers(0, h * s))

    if item.kind == "scribble":
        pts = np.array([pt() for _ in range(int(rng.integers(2, 5)))], np.int32)
        cv2.polylines(img, [pts], False, 255, thick, cv2.LINE_8)
    elif item.kind == "arc":
        start = float(rng.uniform(0, 360))
        axes = (max(1, w * s // 2 - thick), max(1, h * s // 2 - thick))
        extent = float(rng.uniform(60, 270))
        cv2.ellipse(img, (w * s // 2, h * s // 2), axes, 0, start, start + extent, 255, thick)
    elif item.kind == "rectangle":
        fill = -1 if rng.random() < 0.4 else thick
        cv2.rectangle(
            img, (thick // 2, thick // 2), (w * s - 1 - thick // 2, h * s - 1 - thick // 2), 255, fill
        )
    elif item.kind == "blob":
        cv2.ellipse(img, (w * s // 2, h * s // 2), (w * s // 2 - 1, h * s // 2 - 1), 0, 0, 360, 255, -1)
    else:  # dots
        for _ in range(int(rng.integers(3, 9))):
            cv2.circle(img, pt(), int(rng.integers(1, 3)) * s, 255, -1)
    small = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return cut_faint(small)


def draw_clutter(
    rng: np.random.Generator, pool: np.ndarray, avoid: Box, side: int, colours: list[RGB]
) -> tuple[Clutter, ...]:
    """1..6 clutter items, each at most 75% of the digit's height on a side and placed off ``avoid``
    (the digit's box, 1 pixel margin); ``colours[0]`` (the ink) for half of them, else ``colours[1]``."""
    digit = max(avoid[2] - avoid[0], avoid[3] - avoid[1])
    biggest = max(5, int(0.75 * digit))
    items: list[Clutter] = []
    for _ in range(int(rng.integers(1, 7))):
        kind = pick(rng, CLUTTER_KINDS, (0.3, 0.2, 0.15, 0.1, 0.1, 0.15))
        for _ in range(10):
            w, h = int(rng.integers(4, biggest + 1)), int(rng.integers(4, biggest + 1))
            x, y = int(rng.integers(-2, side - w + 3)), int(rng.integers(-2, side - h + 3))
            if not overlaps((x, y, x + w, y + h), avoid, margin=1):
                break
        else:
            continue  # no room beside this digit
        color = colours[0] if rng.random() < 0.5 else colours[1]
        source = int(rng.choice(pool)) if kind == "fragment" else -1
        items.append(Clutter(kind, x, y, w, h, color, int(rng.integers(0, 2**31 - 1)), source))
    return tuple(items)

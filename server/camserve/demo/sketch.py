"""Sketched digits: pen strokes along jittered skeletons, the training generator's second glyph source.

Why: scikit-learn's 8x8 digits come from 43 writers who mostly crossed their sevens and flagged their
ones, at one stroke width, size-normalised to fill the box. A model trained on them alone reads an
uncrossed 7 as a 1 and a 1 with a foot as a 2. Skeletons written here from common handwriting
conventions (several variants per digit: open and closed 4, crossed and plain 7, 1 with and without
flag and foot, ...), jittered point by point, slanted, squeezed and drawn with a round pen of any
width, teach the shapes without any font: the printed held-out set (:mod:`.printed`) stays unseen.

A skeleton is a list of polylines in a unit box (x right, y down, both 0..1); arcs are sampled
ellipses, angles in degrees with 0 = right and 90 = down.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from camserve.demo.canvas import crop_to_ink, cut_faint

Stroke = list[tuple[float, float]]


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 14) -> Stroke:
    t = np.radians(np.linspace(a0, a1, n))
    return [(cx + rx * float(np.cos(a)), cy + ry * float(np.sin(a))) for a in t]


SKELETONS: dict[int, tuple[tuple[Stroke, ...], ...]] = {
    0: (
        (_arc(0.5, 0.5, 0.42, 0.5, 0, 360, 24),),
        (_arc(0.5, 0.5, 0.3, 0.5, 250, 610, 24),),
    ),
    1: (
        ([(0.5, 0.0), (0.5, 1.0)],),
        ([(0.2, 0.25), (0.55, 0.0), (0.55, 1.0)],),
        ([(0.2, 0.22), (0.5, 0.0), (0.5, 1.0)], [(0.2, 1.0), (0.8, 1.0)]),
    ),
    2: (
        ([*_arc(0.5, 0.3, 0.42, 0.3, 190, 390), (0.05, 1.0), (0.95, 1.0)],),
        ([*_arc(0.5, 0.28, 0.4, 0.28, 200, 370), (0.1, 0.95), (0.3, 0.85), (0.95, 1.0)],),
    ),
    3: (
        (_arc(0.5, 0.26, 0.38, 0.26, 200, 450), _arc(0.5, 0.74, 0.42, 0.26, 270, 520)),
        ([(0.1, 0.0), (0.9, 0.0), (0.45, 0.4)], _arc(0.5, 0.7, 0.42, 0.3, 250, 520)),
    ),
    4: (
        ([(0.6, 0.0), (0.05, 0.7), (0.95, 0.7)], [(0.7, 0.3), (0.7, 1.0)]),
        ([(0.25, 0.0), (0.1, 0.6), (0.9, 0.6)], [(0.7, 0.0), (0.7, 1.0)]),
    ),
    5: (
        ([(0.85, 0.0), (0.2, 0.0), (0.15, 0.45)], _arc(0.5, 0.68, 0.38, 0.32, 215, 500)),
        ([(0.2, 0.0), (0.15, 0.45)], [(0.2, 0.0), (0.85, 0.0)], _arc(0.48, 0.7, 0.4, 0.3, 230, 490)),
    ),
    6: (
        ([(0.75, 0.0), (0.4, 0.15), (0.17, 0.45), (0.13, 0.72)], _arc(0.5, 0.72, 0.37, 0.28, 180, 540)),
        (_arc(0.85, 0.6, 0.72, 0.6, 250, 180), _arc(0.45, 0.75, 0.32, 0.25, 180, 540)),
    ),
    7: (
        ([(0.05, 0.0), (0.95, 0.0), (0.35, 1.0)],),
        ([(0.05, 0.0), (0.95, 0.0), (0.4, 1.0)], [(0.3, 0.5), (0.85, 0.5)]),
        ([(0.05, 0.1), (0.95, 0.0), (0.6, 0.45), (0.45, 1.0)],),
    ),
    8: (
        (_arc(0.5, 0.25, 0.3, 0.25, 0, 360, 20), _arc(0.5, 0.72, 0.38, 0.28, 0, 360, 20)),
        (_arc(0.5, 0.24, 0.33, 0.24, 90, 450, 20), _arc(0.5, 0.72, 0.4, 0.28, 270, 630, 20)),
    ),
    9: (
        (_arc(0.5, 0.3, 0.38, 0.3, 0, 360, 20), [(0.88, 0.3), (0.85, 0.6), (0.6, 1.0)]),
        (_arc(0.48, 0.3, 0.38, 0.3, 0, 360, 20), [(0.86, 0.3), (0.86, 1.0)]),
    ),
}
"""Skeleton variants per digit: each a tuple of strokes (polylines in the unit box)."""


@dataclass(frozen=True)
class Sketch:
    """One sketched digit: skeleton ``variant`` of ``label``; ``height`` and ``width`` of its box in
    pixels; ``pen``: stroke width in pixels; ``slant``: horizontal shear (positive leans right);
    ``angle``: rotation in degrees; ``jitter``: point noise as a fraction of the box; ``seed`` of that
    noise."""

    label: int
    variant: int
    height: float
    width: float
    pen: float
    slant: float
    angle: float
    jitter: float
    seed: int


def draw_sketch(rng: np.random.Generator, label: int, height: float) -> Sketch:
    """A random sketch of ``label`` about ``height`` pixels tall."""
    narrow = 0.3 if label == 1 else 0.5  # a 1 is a stroke: let it be much narrower than its height
    return Sketch(
        label=label,
        variant=int(rng.integers(0, len(SKELETONS[label]))),
        height=height,
        width=height * float(rng.uniform(narrow, 0.85)),
        pen=float(rng.uniform(1.2, max(1.5, 0.2 * height))),
        slant=float(rng.uniform(-0.15, 0.35)),
        angle=float(rng.uniform(-10.0, 10.0)),
        jitter=float(rng.uniform(0.0, 0.03)),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


@lru_cache(maxsize=4096)
def sketch_alpha(sketch: Sketch) -> np.ndarray:
    """Alpha (float32 in [0, 1], tight to its ink) of ``sketch``, drawn 4x larger and area-averaged."""
    rng = np.random.default_rng(sketch.seed)
    s = 4  # supersampling: anti-aliased strokes of fractional width
    pad = sketch.pen + 0.3 * sketch.height + 2
    side = int(np.ceil(max(sketch.height, sketch.width) + 2 * pad))
    img = np.zeros((side * s, side * s), np.uint8)
    c, sn = np.cos(np.radians(sketch.angle)), np.sin(np.radians(sketch.angle))
    for stroke in SKELETONS[sketch.label][sketch.variant]:
        pts = np.asarray(stroke, np.float64) + rng.normal(0.0, sketch.jitter, (len(stroke), 2))
        x = (pts[:, 0] - 0.5) * sketch.width
        y = (pts[:, 1] - 0.5) * sketch.height
        x = x - sketch.slant * y  # y grows downwards: the top moves right for a positive slant
        xr, yr = c * x + sn * y, -sn * x + c * y
        poly = np.stack([xr + side / 2, yr + side / 2], axis=1) * s
        cv2.polylines(img, [np.rint(poly).astype(np.int32)], False, 255, max(1, round(sketch.pen * s)))
    alpha = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    out = crop_to_ink(cut_faint(alpha))
    assert out is not None, "a skeleton always draws ink"
    out.setflags(write=False)
    return out

"""Drawing primitives shared by the two demo sets (training generator and the printed held-out set).

Only mechanics live here (alpha compositing, tight ink boxes, contrast checks); what is drawn, and how
it varies, belongs to each set's own module so that the printed set stays made differently.

Conventions: images are float32 (H, W, 3) RGB in grey levels 0..255 while being drawn and uint8 when
done; alpha masks are float32 (h, w) in [0, 1]; boxes are ``(x0, y0, x1, y1)`` in pixels with exclusive
ends, so the object lies in ``image[y0:y1, x0:x1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Box = tuple[int, int, int, int]
RGB = tuple[int, int, int]

INK_CUTOFF: float = 0.05
"""Alpha below this is set to exactly 0: a box then holds every pixel the ink can change (a faint
anti-aliasing tail below 5% changes a pixel by at most a few grey levels and would only loosen boxes)."""


@dataclass(frozen=True)
class Patch:
    """Where and how a distractor is drawn: its ``kind``, a (h, w) patch with its corner at (x, y) on the
    canvas (it may hang over the edge), its ``color`` and the ``seed`` that fixes its shape."""

    kind: str
    x: int
    y: int
    w: int
    h: int
    color: RGB
    seed: int

    @property
    def box(self) -> Box:
        """The patch's box on the canvas (exclusive ends)."""
        return self.x, self.y, self.x + self.w, self.y + self.h


def cut_faint(alpha: np.ndarray) -> np.ndarray:
    """``alpha`` (float32) with values below :data:`INK_CUTOFF` set to 0 (in place; returned)."""
    alpha[alpha < INK_CUTOFF] = 0.0
    return alpha


def ink_box(alpha: np.ndarray) -> Box | None:
    """Tight box (exclusive ends) of the pixels with alpha > 0, or None when there is no ink."""
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(alpha.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def crop_to_ink(alpha: np.ndarray) -> np.ndarray | None:
    """The smallest sub-array of ``alpha`` holding all its ink (None when it has none)."""
    box = ink_box(alpha)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(alpha[y0:y1, x0:x1])


def paste(canvas: np.ndarray, alpha: np.ndarray, x: int, y: int, color: RGB) -> None:
    """Alpha-blend a solid ``color`` through ``alpha`` into ``canvas`` (float32 HxWx3) with its corner at
    (x, y); the part of ``alpha`` that falls outside the canvas is dropped."""
    h, w = alpha.shape
    H, W = canvas.shape[:2]
    ax0, ay0 = max(0, -x), max(0, -y)
    cx0, cy0 = max(0, x), max(0, y)
    cx1, cy1 = min(W, x + w), min(H, y + h)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    a = alpha[ay0 : ay0 + cy1 - cy0, ax0 : ax0 + cx1 - cx0, None]
    region = canvas[cy0:cy1, cx0:cx1]
    region[...] = region * (1.0 - a) + np.asarray(color, dtype=np.float32) * a


def luminance(color: RGB | np.ndarray) -> float:
    """Rec. 601 luma of an RGB colour, in grey levels 0..255."""
    r, g, b = (float(c) for c in color)
    return 0.299 * r + 0.587 * g + 0.114 * b


def overlaps(a: Box, b: Box, margin: int = 0) -> bool:
    """True when boxes ``a`` and ``b`` come closer than ``margin`` pixels (or overlap)."""
    return not (
        a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]
    )


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    """Round and clip a float canvas to uint8."""
    return np.rint(canvas).clip(0, 255).astype(np.uint8)

"""Deterministic "cluttered digits": scikit-learn's 8x8 handwritten digits drawn into 64x64 RGB canvases.

Why this task: it is small enough to train on two CPU cores in minutes, yet the classifier must find
one whole digit among clutter on a textured background, and the true box of that digit is known
exactly, so heatmaps can be scored (pointing game, box IoU).

Data source: the UCI "Optical Recognition of Handwritten Digits" test set as bundled inside
scikit-learn (``sklearn.datasets.load_digits``, 1797 images of 8x8 pixels, values 0..16, BSD-licensed
with scikit-learn). It is read from the installed scikit-learn only when this generator runs
(training, tests, benchmarks); serving never imports this module.

What varies, so that the model learns digits rather than this generator (see :mod:`.strokes` for the
background and clutter kinds):

- glyph: 60% scikit-learn glyphs, 40% digits sketched with a round pen along jittered skeletons
  (:mod:`.sketch`: the shapes the 43 scikit-learn writers did not use, such as uncrossed sevens);
- size: the digit is 12..48 pixels tall, aspect 0.75..1.25, anywhere on the canvas;
- pen: grey-level dilation or erosion after upscaling (bolder or thinner strokes), then an edge ramp
  from crisp (like print) to soft (like the blurry 8x8 source), then rotation and shear; sketches
  take any pen width from 1.2 pixels to a fifth of their height;
- polarity and colour: light ink on a darker ground or (30%) dark ink on a lighter one;
- background: flat, gradient, blotches or a grating, plus Gaussian noise of 0..24 grey levels;
- clutter: 1..6 items, smaller than the digit and off its box: fragments of digits of other classes,
  scribbles, arcs, rectangles, blobs, dot clusters, half of them in the digit's own colour.

Each sample is first drawn as a small :class:`Recipe` and then rendered by a pure function of it;
:func:`render` can leave the digit out, which lets tests check the box against the pixels the digit
actually changed. Boxes are ``(x0, y0, x1, y1)`` with exclusive ends (see :mod:`.canvas`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np

from camserve.demo.canvas import RGB, Box, crop_to_ink, cut_faint, paste, to_uint8
from camserve.demo.sketch import Sketch, draw_sketch, sketch_alpha
from camserve.demo.strokes import (
    Background,
    Clutter,
    draw_background,
    draw_clutter,
    pick_colours,
    render_background,
    render_clutter,
)

CANVAS: int = 64
"""Side of the square RGB canvas (the demo model's input size)."""

HEIGHTS: tuple[float, float] = (12.0, 48.0)
"""Range of the digit's height in pixels (the 8 rows of the source glyph after upscaling)."""

SKETCH_SHARE: float = 0.4
"""Share of samples whose digit is sketched (:mod:`.sketch`) rather than a scikit-learn glyph."""

HELD_OUT_FRACTION: float = 0.2
"""Share of the 1797 source digits (per class) reserved for evaluation, never used in training."""

SPLIT_SEED: int = 20160527
"""Seed of the train/held-out split of source digits (fixed: the shipped model depends on it)."""

Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class Pen:
    """How an 8x8 glyph (ink in [0, 1]) becomes an alpha mask on the canvas.

    ``height``: pixels of the glyph's 8 rows; ``aspect``: width/height of a cell; ``dilate``: radius in
    pixels of a grey-level dilation (> 0, bolder) or erosion (< 0, thinner); ``threshold``: ink level
    that becomes alpha 0.5; ``softness``: ink range of the edge ramp (0.1 crisp .. 0.6 soft);
    ``angle``: rotation in degrees (counter-clockwise); ``shear``: horizontal shear factor.
    """

    height: float
    aspect: float
    dilate: int
    threshold: float
    softness: float
    angle: float
    shear: float


@dataclass(frozen=True)
class Recipe:
    """Everything needed to render one sample; rendering is a pure function of this and the glyphs.

    ``source``: the scikit-learn digit drawn with ``pen``, or, when ``sketch`` is set, the one whose
    label the sketch takes (sources cycle, so classes stay balanced); ``x``, ``y``: corner of the
    digit's tight ink box on the canvas (pixels).
    """

    source: int
    label: int
    pen: Pen | None
    sketch: Sketch | None
    x: int
    y: int
    color: RGB
    background: Background
    clutter: tuple[Clutter, ...]
    noise_sigma: float
    noise_seed: int


@dataclass(frozen=True)
class DigitsSet:
    """A generated set: ``images`` (N, 64, 64, 3) uint8 RGB, ``labels`` (N,) int64, ``boxes`` (N, 4)
    int64 x0, y0, x1, y1 (exclusive ends), and the recipes (or other per-sample records) behind them."""

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    recipes: tuple

    def __len__(self) -> int:
        return len(self.labels)


@lru_cache(maxsize=1)
def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 scikit-learn digits as (glyphs (1797, 8, 8) float32 in [0, 1], labels (1797,) int64)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # only the generator needs it; serving does not
        raise RuntimeError(
            "the cluttered-digits generator needs scikit-learn (pip install 'camserve[dev]')"
        ) from exc
    data = load_digits()
    glyphs = (np.asarray(data.images, dtype=np.float32) / 16.0).clip(0.0, 1.0)
    glyphs.setflags(write=False)
    labels = np.asarray(data.target, dtype=np.int64)
    labels.setflags(write=False)
    return glyphs, labels


@lru_cache(maxsize=2)
def split_sources(split: Split) -> np.ndarray:
    """Indices of the source digits in ``split``: a fixed, per-class stratified partition.

    Splitting by source digit (not by generated image) means no held-out image shows a handwritten
    digit, or a fragment of one, that training saw.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    _, labels = source_digits()
    rng = np.random.default_rng(SPLIT_SEED)
    held: list[np.ndarray] = []
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        count = round(len(members) * HELD_OUT_FRACTION)
        held.append(rng.permutation(members)[:count])
    held_mask = np.zeros(len(labels), dtype=bool)
    held_mask[np.concatenate(held)] = True
    chosen = np.flatnonzero(held_mask if split == "heldout" else ~held_mask)
    chosen.setflags(write=False)
    return chosen


def glyph_alpha(glyph: np.ndarray, pen: Pen) -> np.ndarray | None:
    """Alpha mask (float32 in [0, 1], cropped tight to its ink) of ``glyph`` (r, c) drawn with ``pen``.

    Upscale (bilinear) -> grey-level dilate/erode -> edge ramp -> rotate and shear -> cut faint tails.
    None when nothing is left (a thin glyph eroded away).
    """
    rows, cols = glyph.shape
    h = max(2, round(pen.height * rows / 8))
    w = max(2, round(pen.height * pen.aspect * cols / 8))
    up = cv2.resize(np.asarray(glyph, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    pad = (max(h, w) + 1) // 3 + max(pen.dilate, 0) + 2  # room for dilation, rotation and shear
    up = cv2.copyMakeBorder(up, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0.0)
    if pen.dilate:
        size = 2 * abs(pen.dilate) + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        up = cv2.dilate(up, kernel) if pen.dilate > 0 else cv2.erode(up, kernel)
    alpha = np.clip((up - pen.threshold) / pen.softness + 0.5, 0.0, 1.0).astype(np.float32)
    if pen.angle or pen.shear:
        H, W = alpha.shape
        rot = cv2.getRotationMatrix2D((W / 2, H / 2), pen.angle, 1.0)
        shear = np.array([[1.0, pen.shear, -pen.shear * H / 2], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        matrix = rot @ shear
        alpha = cv2.warpAffine(alpha, matrix, (W, H), flags=cv2.INTER_LINEAR, borderValue=0.0)
    return crop_to_ink(cut_faint(alpha))


def draw_pen(rng: np.random.Generator) -> Pen:
    """A random pen: size first, then a dilation the size allows (erosion only on large digits)."""
    height = float(rng.uniform(*HEIGHTS))
    choices = (-1, 0, 1, 2) if height >= 24 else (0, 1)
    crisp, soft = rng.uniform(0.08, 0.2), rng.uniform(0.2, 0.6)
    return Pen(
        height=height,
        aspect=float(rng.uniform(0.75, 1.25)),
        dilate=choices[int(rng.integers(0, len(choices)))],
        threshold=float(rng.uniform(0.25, 0.7)),  # high thresholds thin the strokes, like print
        softness=float(crisp if rng.random() < 0.5 else soft),
        angle=float(rng.uniform(-15.0, 15.0)),
        shear=float(rng.uniform(-0.25, 0.25)),
    )


@lru_cache(maxsize=4096)
def _glyph_alpha(source: int, pen: Pen) -> np.ndarray | None:
    """:func:`glyph_alpha` of a source digit, cached (drawing, rendering and boxing each need it)."""
    glyphs, _ = source_digits()
    alpha = glyph_alpha(glyphs[source], pen)
    if alpha is not None:
        alpha.setflags(write=False)
    return alpha


def digit_alpha(recipe: Recipe) -> np.ndarray:
    """Alpha (float32 in [0, 1], tight to its ink) of the real digit of ``recipe``."""
    if recipe.sketch is not None:
        return sketch_alpha(recipe.sketch)
    assert recipe.pen is not None
    alpha = _glyph_alpha(recipe.source, recipe.pen)
    assert alpha is not None, "recipes are only drawn with visible digits"
    return alpha


def digit_box(recipe: Recipe) -> Box:
    """Ground-truth box of the real digit of ``recipe`` on the canvas (tight around its ink)."""
    h, w = digit_alpha(recipe).shape
    return recipe.x, recipe.y, recipe.x + w, recipe.y + h


def render(recipe: Recipe, *, include_digit: bool = True) -> np.ndarray:
    """Draw ``recipe`` as a (64, 64, 3) uint8 RGB image; ``include_digit=False`` leaves the digit out.

    Order: background, clutter, digit, then sensor noise over everything (same noise with or without
    the digit, so the two renders differ only where the digit's alpha is > 0).
    """
    glyphs, _ = source_digits()
    canvas = render_background(recipe.background, CANVAS)
    for item in recipe.clutter:
        paste(canvas, render_clutter(item, glyphs), item.x, item.y, item.color)
    if include_digit:
        paste(canvas, digit_alpha(recipe), recipe.x, recipe.y, recipe.color)
    if recipe.noise_sigma > 0:
        noise = np.random.default_rng(recipe.noise_seed).standard_normal(canvas.shape, dtype=np.float32)
        canvas += noise * np.float32(recipe.noise_sigma)
    return to_uint8(canvas)


def draw_recipe(rng: np.random.Generator, source: int, pool: np.ndarray) -> Recipe:
    """Draw the digit (a pen for ``source``, or a sketch of its label), placement, colours,
    background, noise and clutter.

    Clutter fragments come only from ``pool`` (the same split) and from other classes, so a held-out
    image holds no piece of a training digit and no clutter is evidence for the label.
    """
    _, labels = source_digits()
    label = int(labels[source])
    pen: Pen | None = None
    sketch: Sketch | None = None
    if rng.random() < SKETCH_SHARE:
        sketch = draw_sketch(rng, label, float(rng.uniform(*HEIGHTS)))
        while max(sketch_alpha(sketch).shape) > CANVAS - 2:  # slanted and rotated: may outgrow the canvas
            sketch = replace(sketch, height=0.9 * sketch.height, width=0.9 * sketch.width)
        alpha = sketch_alpha(sketch)
    else:
        pen = draw_pen(rng)
        glyph = _glyph_alpha(source, pen)
        if glyph is None or max(glyph.shape) > CANVAS - 2:  # eroded away, or rotated too big: plain pen
            pen = Pen(pen.height, 1.0, 0, 0.4, 0.3, 0.0, 0.0)
            glyph = _glyph_alpha(source, pen)
        assert glyph is not None
        alpha = glyph
    h, w = alpha.shape
    x, y = int(rng.integers(0, CANVAS - w + 1)), int(rng.integers(0, CANVAS - h + 1))
    ink, ground, other = pick_colours(rng)
    background = draw_background(rng, ground)
    box = (x, y, x + w, y + h)
    clutter = draw_clutter(rng, pool[labels[pool] != label], box, CANVAS, [ink, other])
    return Recipe(
        source=source,
        label=label,
        pen=pen,
        sketch=sketch,
        x=x,
        y=y,
        color=ink,
        background=background,
        clutter=clutter,
        noise_sigma=0.0 if rng.random() < 0.15 else float(rng.uniform(2.0, 24.0)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def generate(n: int, split: Split = "train", seed: int = 0) -> DigitsSet:
    """``n`` deterministic samples of ``split``; the same (n, split, seed) always gives the same set.

    Real digits cycle through the split's source digits in a seeded order, so every source digit is
    used about equally; clutter fragments come from the same split only.
    """
    if n < 1:
        raise ValueError(f"n must be a positive number of samples, not {n}")
    pool = split_sources(split)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    order = np.concatenate([rng.permutation(pool) for _ in range(-(-n // len(pool)))])[:n]
    recipes = tuple(draw_recipe(rng, int(source), pool) for source in order)
    images = np.stack([render(r) for r in recipes])
    labels = np.array([r.label for r in recipes], dtype=np.int64)
    boxes = np.array([digit_box(r) for r in recipes], dtype=np.int64)
    return DigitsSet(images=images, labels=labels, boxes=boxes, recipes=recipes)


def preprocess(images: np.ndarray) -> np.ndarray:
    """The demo model's "tf" preprocessing (x / 127.5 - 1), applied outside the model as the server does.

    ``images``: (..., 3) uint8 -> float32 in [-1, 1].
    """
    return images.astype(np.float32) / 127.5 - 1.0

"""Deterministic "cluttered digits": scikit-learn's 8x8 digits pasted into larger noisy RGB canvases.

Why this task: it is small enough to train on two CPU cores in minutes, yet the classifier must find
one whole digit among distractor fragments (pieces of other digits) on a noisy background, and the
true box of that digit is known exactly, so heatmaps can be scored (pointing game, box IoU).

Data source: the UCI "Optical Recognition of Handwritten Digits" test set as bundled inside
scikit-learn (``sklearn.datasets.load_digits``, 1797 images of 8x8 pixels, values 0..16, BSD-licensed
with scikit-learn). It is read from the installed scikit-learn only when this generator runs
(training, tests, benchmarks); serving never imports this module.

Each sample is first drawn as a small :class:`Recipe` (which digit, where, colours, fragments, noise
seed) and then rendered; :func:`render` can leave the real digit out, which lets tests check the
ground-truth box against the pixels the digit actually changed.

Boxes are ``(x0, y0, x1, y1)`` in pixels with exclusive ends: the digit lies in ``image[y0:y1, x0:x1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np

CANVAS: int = 64
"""Side of the square RGB canvas (the demo model's input size)."""

SCALES: tuple[int, ...] = (3, 4)
"""Upscaling factors of the 8x8 digits: the real digit is 24 or 32 pixels wide on the canvas."""

HELD_OUT_FRACTION: float = 0.2
"""Share of the 1797 source digits (per class) reserved for evaluation, never used in training."""

SPLIT_SEED: int = 20160527
"""Seed of the train/held-out split of source digits (fixed: the shipped model depends on it)."""

Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class Fragment:
    """A piece of another digit pasted as a distractor (crop in 8x8 units, position in pixels)."""

    source: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    scale: int
    x: int
    y: int
    color: tuple[int, int, int]


@dataclass(frozen=True)
class Recipe:
    """Everything needed to render one sample; rendering is a pure function of this and the glyphs."""

    source: int
    label: int
    scale: int
    x: int
    y: int
    color: tuple[int, int, int]
    background: tuple[int, int, int]
    noise_sigma: float
    noise_seed: int
    fragments: tuple[Fragment, ...]


@dataclass(frozen=True)
class DigitsSet:
    """A generated set: ``images`` (N, 64, 64, 3) uint8 RGB, ``labels`` (N,), ``boxes`` (N, 4) x0,y0,x1,y1."""

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    recipes: tuple[Recipe, ...]

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


def _upscale(glyph: np.ndarray, scale: int) -> np.ndarray:
    """Bilinear upscaling of a glyph (values in [0, 1]) to ``scale`` times its size."""
    h, w = glyph.shape
    return cv2.resize(glyph, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR).clip(0.0, 1.0)


def _ink_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """Tight (x0, y0, x1, y1) box, exclusive ends, of the pixels with alpha > 0."""
    ys, xs = np.nonzero(alpha > 0)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _paste(canvas: np.ndarray, alpha: np.ndarray, x: int, y: int, color: tuple[int, int, int]) -> None:
    """Alpha-blend a solid colour through ``alpha`` into ``canvas`` (float32 HxWx3) at (x, y)."""
    h, w = alpha.shape
    region = canvas[y : y + h, x : x + w]
    a = alpha[:, :, None]
    region[...] = region * (1.0 - a) + np.asarray(color, dtype=np.float32) * a


def digit_box(recipe: Recipe) -> tuple[int, int, int, int]:
    """Ground-truth box of the real digit of ``recipe`` on the canvas (tight around its ink)."""
    glyphs, _ = source_digits()
    x0, y0, x1, y1 = _ink_box(_upscale(glyphs[recipe.source], recipe.scale))
    return recipe.x + x0, recipe.y + y0, recipe.x + x1, recipe.y + y1


def render(recipe: Recipe, *, include_digit: bool = True) -> np.ndarray:
    """Draw ``recipe`` as a (64, 64, 3) uint8 RGB image; ``include_digit=False`` leaves the digit out."""
    glyphs, _ = source_digits()
    noise = np.random.default_rng(recipe.noise_seed).normal(0.0, recipe.noise_sigma, (CANVAS, CANVAS, 3))
    canvas = np.asarray(recipe.background, dtype=np.float32) + noise.astype(np.float32)
    for frag in recipe.fragments:
        piece = glyphs[frag.source][frag.rows[0] : frag.rows[1], frag.cols[0] : frag.cols[1]]
        _paste(canvas, _upscale(piece, frag.scale), frag.x, frag.y, frag.color)
    if include_digit:
        _paste(canvas, _upscale(glyphs[recipe.source], recipe.scale), recipe.x, recipe.y, recipe.color)
    return np.rint(canvas).clip(0, 255).astype(np.uint8)


def _bright_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A colour clearly brighter than the background in at least one channel."""
    color = rng.integers(40, 256, size=3)
    color[rng.integers(0, 3)] = rng.integers(190, 256)
    return int(color[0]), int(color[1]), int(color[2])


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int) -> bool:
    return not (
        a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]
    )


def _draw_fragment(
    rng: np.random.Generator, pool: np.ndarray, avoid: tuple[int, int, int, int], scale: int
) -> Fragment | None:
    """A fragment (2..4 x 2..5 cells with ink) of a random digit from ``pool``, placed off ``avoid``."""
    glyphs, _ = source_digits()
    for _ in range(20):
        source = int(rng.choice(pool))
        h, w = int(rng.integers(2, 5)), int(rng.integers(2, 6))
        if rng.random() < 0.5:
            h, w = w, h
        r0, c0 = int(rng.integers(0, 9 - h)), int(rng.integers(0, 9 - w))
        piece = glyphs[source][r0 : r0 + h, c0 : c0 + w]
        if piece.sum() < 0.25 * h * w:  # mostly empty: not a visible stroke
            continue
        ph, pw = h * scale, w * scale
        x, y = int(rng.integers(0, CANVAS - pw + 1)), int(rng.integers(0, CANVAS - ph + 1))
        if _overlaps((x, y, x + pw, y + ph), avoid, margin=2):
            continue
        return Fragment(source, (r0, r0 + h), (c0, c0 + w), scale, x, y, _bright_color(rng))
    return None


def draw_recipe(rng: np.random.Generator, source: int, pool: np.ndarray) -> Recipe:
    """Draw placement, colours, noise and 2..4 distractor fragments for the real digit ``source``."""
    glyphs, labels = source_digits()
    scale = int(rng.choice(SCALES))
    side = 8 * scale
    x, y = int(rng.integers(0, CANVAS - side + 1)), int(rng.integers(0, CANVAS - side + 1))
    ix0, iy0, ix1, iy1 = _ink_box(_upscale(glyphs[source], scale))
    box = (x + ix0, y + iy0, x + ix1, y + iy1)
    fragments = []
    for _ in range(int(rng.integers(2, 5))):
        frag = _draw_fragment(rng, pool, box, int(rng.choice(SCALES)))
        if frag is not None:
            fragments.append(frag)
    background = rng.integers(0, 90, size=3)
    return Recipe(
        source=source,
        label=int(labels[source]),
        scale=scale,
        x=x,
        y=y,
        color=_bright_color(rng),
        background=(int(background[0]), int(background[1]), int(background[2])),
        noise_sigma=float(rng.uniform(6.0, 22.0)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
        fragments=tuple(fragments),
    )


def generate(n: int, split: Split = "train", seed: int = 0) -> DigitsSet:
    """``n`` deterministic samples of ``split``; the same (n, split, seed) always gives the same set.

    Real digits cycle through the split's source digits in a seeded order, so every source digit is
    used about equally; fragments come from the same split only.
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
    """The demo model's "tf" preprocessing (x / 127.5 - 1), applied outside the model as the server does."""
    return images.astype(np.float32) / 127.5 - 1.0

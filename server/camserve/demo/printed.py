"""Printed digits: a held-out set made differently from the training generator (:mod:`.digits`).

The demo model trains on scikit-learn's 8x8 handwriting only. This set shares none of its drawing
code beyond alpha compositing (:mod:`.canvas`):

- digits are typeset from fonts: OpenCV's built-in faces ``sans`` and ``italic`` (variable weight,
  200 = thin .. 900 = black) and ``uni``, drawn with ``cv2.putText``; OpenCV 5 draws its old
  ``FONT_HERSHEY_*`` constants with these same faces. Nothing is downloaded;
- scales: 11..52 pixels tall, a wider range than training's 12..48;
- grounds: crops of the photographs that ship inside scikit-image (toned down so the digit stays
  legible) or a plain sheet with grain and a vignette, never the training's
  flat/gradient/blotch/grating grounds; 40% dark ink on a light ground;
- clutter: font symbols (``+ * # = ~ < > @ ^``), pieces of other printed digits, filled polygons and
  crosses, smaller than the digit and off its box;
- JPEG compression (quality 35..95) on 70% of images; training never sees JPEG artefacts.

Boxes: the tight box of the typeset digit's ink (alpha >= 5%), exclusive ends, as in :mod:`.digits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from camserve.demo.canvas import RGB, Box, Patch, crop_to_ink, cut_faint, luminance, overlaps, paste, to_uint8
from camserve.demo.digits import CANVAS, DigitsSet

FACES: tuple[str, ...] = ("sans", "italic", "uni")
"""OpenCV's built-in font faces (``uni`` has no weight axis)."""

HEIGHTS: tuple[float, float] = (11.0, 52.0)
"""Range of the typeset digit's height in pixels (font size is chosen to reach it)."""

PHOTOS: tuple[str, ...] = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "moon", "rocket",
    "hubble_deep_field", "immunohistochemistry",
)  # fmt: skip
"""scikit-image sample images used as grounds (none shows text or digits)."""

SYMBOLS: str = "+*#=~<>@^"
"""Font symbols used as clutter: none reads as a digit."""

SEED_OFFSET: int = 7_000_000
"""Keeps the printed set's random streams apart from the generator's for the same ``seed``."""


@dataclass(frozen=True)
class Mark:
    """A typeset character: ``text`` in ``face`` at ``weight``, font ``size`` in pixels, rotated by
    ``angle`` degrees; its alpha is cropped tight to the ink. ``half`` (clutter pieces only): which half
    is kept, 0 top, 1 bottom, 2 left, 3 right; -1 the whole mark."""

    text: str
    face: str
    weight: int
    size: int
    angle: float
    half: int = -1


@dataclass(frozen=True)
class PrintedClutter(Patch):
    """One distractor of the printed set: ``kind`` in (symbol, piece, polygon, cross); ``mark`` is the
    typeset character a symbol or piece is cut from (None for the drawn kinds)."""

    mark: Mark | None = None


@dataclass(frozen=True)
class PrintedRecipe:
    """One printed sample. ``ground``: ("photo", name) or ("paper", ""); ``tone``: photo contrast (0..1);
    ``base``/``tint``: ground colour and photo tint; ``crop``: (x, y, side) of the photo crop;
    ``quality``: JPEG quality, 0 for none."""

    label: int
    digit: Mark
    x: int
    y: int
    color: RGB
    ground: tuple[str, str]
    crop: tuple[int, int, int]
    tone: float
    base: RGB
    seed: int
    clutter: tuple[PrintedClutter, ...]
    quality: int


@lru_cache(maxsize=8)
def _face(name: str) -> cv2.FontFace:
    return cv2.FontFace(name)


@lru_cache(maxsize=16)
def _photo(name: str) -> np.ndarray:
    """scikit-image sample ``name`` as (H, W, 3) uint8 RGB (grey images repeated over channels)."""
    try:
        from skimage import data
    except ImportError as exc:
        raise RuntimeError("the printed-digits set needs scikit-image (pip install 'camserve[dev]')") from exc
    image = np.asarray(getattr(data, name)())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)
    image.setflags(write=False)
    return image


@lru_cache(maxsize=8192)
def mark_alpha(mark: Mark) -> np.ndarray | None:
    """Alpha (float32 in [0, 1], tight to its ink) of a typeset ``mark``; None if it drew nothing."""
    side = 3 * mark.size + 8
    img = np.zeros((side, side), np.uint8)
    cv2.putText(img, mark.text, (side // 3, 2 * side // 3), 255, _face(mark.face), mark.size, mark.weight)
    if mark.angle:
        matrix = cv2.getRotationMatrix2D((side / 2, side / 2), mark.angle, 1.0)
        img = cv2.warpAffine(img, matrix, (side, side), flags=cv2.INTER_LINEAR)
    alpha = crop_to_ink(cut_faint(img.astype(np.float32) / 255.0))
    if alpha is not None:
        alpha.setflags(write=False)
    return alpha


def _draw_mark(rng: np.random.Generator, text: str, height: float) -> Mark:
    face = FACES[int(rng.integers(0, len(FACES)))]
    weight = 0 if face == "uni" else int(rng.integers(2, 10)) * 100
    # Digits in these faces are 0.75..0.8 of the font size tall: aim the size at the wanted height.
    return Mark(text, face, weight, max(6, round(height / 0.78)), float(rng.uniform(-8.0, 8.0)))


def _colours(rng: np.random.Generator) -> tuple[RGB, RGB, RGB]:
    """(ink, base of the ground, other clutter colour), ink >= 80 luma away from the base."""
    dark = rng.random() < 0.4
    base = rng.integers(150, 256, 3) if dark else rng.integers(0, 110, 3)
    b: RGB = (int(base[0]), int(base[1]), int(base[2]))
    picks: list[RGB] = []
    while len(picks) < 2:
        c = rng.integers(0, 256, 3)
        col: RGB = (int(c[0]), int(c[1]), int(c[2]))
        if (luminance(b) - luminance(col) if dark else luminance(col) - luminance(b)) >= 80:
            picks.append(col)
    return picks[0], b, picks[1]


def _draw_clutter(
    rng: np.random.Generator, label: int, avoid: Box, colours: tuple[RGB, RGB]
) -> tuple[PrintedClutter, ...]:
    digit = max(avoid[2] - avoid[0], avoid[3] - avoid[1])
    biggest = max(5, int(0.75 * digit))
    items: list[PrintedClutter] = []
    for _ in range(int(rng.integers(1, 6))):
        kind = ("symbol", "piece", "polygon", "cross")[int(rng.integers(0, 4))]
        w, h = int(rng.integers(4, biggest + 1)), int(rng.integers(4, biggest + 1))
        mark = None
        if kind == "symbol":
            mark = _draw_mark(rng, SYMBOLS[int(rng.integers(0, len(SYMBOLS)))], max(w, h))
        elif kind == "piece":  # half of another digit as large as this one: never a whole digit
            mark = _draw_mark(rng, str((label + int(rng.integers(1, 10))) % 10), digit)
            other = mark_alpha(mark)
            if other is None:
                continue
            half = int(rng.integers(0, 4))  # top, bottom, left or right half
            ah, aw = other.shape
            h, w = (ah // 2, aw) if half < 2 else (ah, aw // 2)
            h, w = min(h, biggest), min(w, biggest)
            mark = Mark(mark.text, mark.face, mark.weight, mark.size, mark.angle, half)
        x, y = int(rng.integers(-2, CANVAS - w + 3)), int(rng.integers(-2, CANVAS - h + 3))
        if overlaps((x, y, x + w, y + h), avoid, margin=1):
            continue  # no second try: fewer items beside big digits, as on a real page
        color = colours[int(rng.integers(0, 2))]
        items.append(PrintedClutter(kind, x, y, w, h, color, int(rng.integers(0, 2**31 - 1)), mark))
    return tuple(items)


def clutter_alpha(item: PrintedClutter) -> np.ndarray:
    """Alpha (float32 (h, w) in [0, 1]) of one clutter item; pure function of the record."""
    rng = np.random.default_rng(item.seed)
    w, h = item.w, item.h
    out = np.zeros((h, w), np.float32)
    if item.mark is not None:
        alpha = mark_alpha(item.mark)
        if alpha is None:
            return out
        if item.kind == "piece":  # the chosen half of the other digit (cut to the patch)
            ah, aw = alpha.shape
            y0 = ah - h if item.mark.half == 1 else 0
            x0 = aw - w if item.mark.half == 3 else 0
            alpha = alpha[y0 : y0 + h, x0 : x0 + w]
        else:  # a whole symbol, shrunk to fit when it is larger than the patch
            scale = min(1.0, w / alpha.shape[1], h / alpha.shape[0])
            size = (max(1, int(alpha.shape[1] * scale)), max(1, int(alpha.shape[0] * scale)))
            alpha = np.clip(cv2.resize(alpha, size, interpolation=cv2.INTER_AREA), 0.0, 1.0)
        out[: alpha.shape[0], : alpha.shape[1]] = alpha[:h, :w]
        return cut_faint(out)
    img = np.zeros((h * 4, w * 4), np.uint8)  # 4x supersampled, then area-averaged (anti-aliased)
    if item.kind == "polygon":
        pts = np.stack([rng.integers(0, w * 4, 4), rng.integers(0, h * 4, 4)], axis=1).astype(np.int32)
        cv2.fillPoly(img, [cv2.convexHull(pts)], 255)
    else:  # cross
        t = int(rng.integers(1, 3)) * 4
        cv2.line(img, (0, 0), (w * 4 - 1, h * 4 - 1), 255, t)
        cv2.line(img, (w * 4 - 1, 0), (0, h * 4 - 1), 255, t)
    return cut_faint(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0)


def _ground(recipe: PrintedRecipe) -> np.ndarray:
    """(64, 64, 3) float32 ground of ``recipe``: a toned photo crop or a paper-like sheet."""
    rng = np.random.default_rng(recipe.seed)
    base = np.asarray(recipe.base, np.float32)
    if recipe.ground[0] == "photo":
        x, y, side = recipe.crop
        crop = _photo(recipe.ground[1])[y : y + side, x : x + side]
        crop = cv2.resize(crop, (CANVAS, CANVAS), interpolation=cv2.INTER_AREA).astype(np.float32)
        return base + (crop - crop.mean(axis=(0, 1))) * np.float32(recipe.tone)
    ys, xs = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32) / CANVAS - 0.5
    vignette = 1.0 - np.float32(recipe.tone) * (xs**2 + ys**2)
    grain = cv2.GaussianBlur(rng.standard_normal((CANVAS, CANVAS)).astype(np.float32), (0, 0), 0.8)
    return base * vignette[:, :, None] + (6.0 * grain)[:, :, None]


def render(recipe: PrintedRecipe, *, include_digit: bool = True, compress: bool = True) -> np.ndarray:
    """Draw ``recipe`` as (64, 64, 3) uint8 RGB. ``include_digit=False`` leaves the digit out;
    ``compress=False`` skips the JPEG step (tests compare renders pixel by pixel)."""
    canvas = _ground(recipe)
    for item in recipe.clutter:
        paste(canvas, clutter_alpha(item), item.x, item.y, item.color)
    if include_digit:
        alpha = mark_alpha(recipe.digit)
        assert alpha is not None
        paste(canvas, alpha, recipe.x, recipe.y, recipe.color)
    image = to_uint8(canvas)
    if compress and recipe.quality:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, recipe.quality])
        assert ok
        image = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return image


def digit_box(recipe: PrintedRecipe) -> Box:
    """Tight box (exclusive ends) of the typeset digit of ``recipe`` on the canvas."""
    alpha = mark_alpha(recipe.digit)
    assert alpha is not None
    return recipe.x, recipe.y, recipe.x + alpha.shape[1], recipe.y + alpha.shape[0]


def draw_recipe(rng: np.random.Generator, label: int) -> PrintedRecipe:
    """Draw face, size, pose, placement, ground, clutter and compression for one digit ``label``."""
    while True:
        digit = _draw_mark(rng, str(label), float(rng.uniform(*HEIGHTS)))
        alpha = mark_alpha(digit)
        if alpha is not None and max(alpha.shape) <= CANVAS - 2:
            break
    h, w = alpha.shape
    x, y = int(rng.integers(0, CANVAS - w + 1)), int(rng.integers(0, CANVAS - h + 1))
    ink, base, other = _colours(rng)
    if rng.random() < 0.75:
        name = PHOTOS[int(rng.integers(0, len(PHOTOS)))]
        ph, pw = _photo(name).shape[:2]
        side = int(rng.integers(48, min(ph, pw) // 2 + 1))
        crop = (int(rng.integers(0, pw - side + 1)), int(rng.integers(0, ph - side + 1)), side)
        ground, tone = ("photo", name), float(rng.uniform(0.15, 0.45))
    else:
        ground, crop, tone = ("paper", ""), (0, 0, 0), float(rng.uniform(0.0, 0.8))
    clutter = _draw_clutter(rng, label, (x, y, x + w, y + h), (ink, other))
    quality = int(rng.integers(35, 96)) if rng.random() < 0.7 else 0
    seed = int(rng.integers(0, 2**31 - 1))
    return PrintedRecipe(label, digit, x, y, ink, ground, crop, tone, base, seed, clutter, quality)


def generate(n: int, seed: int = 0) -> DigitsSet:
    """``n`` deterministic printed samples (labels cycle 0..9 in a seeded order); same (n, seed), same set.

    Returns a :class:`~camserve.demo.digits.DigitsSet`: images (n, 64, 64, 3) uint8 RGB, labels (n,)
    int64, boxes (n, 4) int64, and the :class:`PrintedRecipe` of each image.
    """
    if n < 1:
        raise ValueError(f"n must be a positive number of samples, not {n}")
    rng = np.random.default_rng([SEED_OFFSET, seed])
    labels = np.concatenate([rng.permutation(10) for _ in range(-(-n // 10))])[:n]
    recipes = tuple(draw_recipe(rng, int(label)) for label in labels)
    images = np.stack([render(r) for r in recipes])
    boxes = np.array([digit_box(r) for r in recipes], dtype=np.int64)
    return DigitsSet(images=images, labels=labels.astype(np.int64), boxes=boxes, recipes=recipes)

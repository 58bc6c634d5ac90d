"""Images for load tests and examples, with no imaging library: a tiny PNG encoder and generators.

Sources, all local (nothing is downloaded): a folder of image files; cluttered digits made from
scikit-learn's bundled 8x8 digits; scikit-image's bundled photographs; or seeded noise shapes when
neither package is installed (the light client has only NumPy).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
    """Encode an (H,W) or (H,W,C) uint8 array as PNG (filter 0, zlib): C = 1 gray, 2 gray + alpha,
    3 RGB, 4 RGBA."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}.get(c)
    if color_type is None:
        raise ValueError(f"encode_png needs 1 to 4 channels, got {c}")
    rows = np.concatenate([np.zeros((h, 1), np.uint8), arr.reshape(h, w * c)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    idat = zlib.compress(rows.tobytes(), level)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def resize_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize in NumPy (enough for load-test inputs)."""
    ys = (np.arange(height) * image.shape[0] / height).astype(np.intp)
    xs = (np.arange(width) * image.shape[1] / width).astype(np.intp)
    return image[ys][:, xs]


def cluttered_digits(n: int, size: int = 64, seed: int = 0) -> tuple[list[np.ndarray], list[tuple[int, ...]]]:
    """n RGB canvases (size x size) each holding one digit on noise with digit-fragment clutter.

    Returns (images, boxes) with boxes (y0, x0, y1, x1, label). Needs scikit-learn's bundled digits.
    """
    from sklearn.datasets import load_digits  # bundled data: no download

    digits = load_digits()
    glyphs = (digits.images / 16.0 * 255.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    scale = max(1, size // 24)
    images, boxes = [], []
    for _ in range(n):
        canvas = rng.normal(30, 12, (size, size)).astype(np.float32)
        for _ in range(4):  # clutter: small crops of other digits
            g = glyphs[rng.integers(len(glyphs))]
            y, x = rng.integers(0, 5, 2)
            frag = np.kron(g[y:y + 3, x:x + 3], np.ones((scale, scale), np.float32))
            fy, fx = rng.integers(0, size - frag.shape[0], 2)
            canvas[fy:fy + frag.shape[0], fx:fx + frag.shape[1]] += 0.6 * frag
        k = rng.integers(len(glyphs))
        glyph = np.kron(glyphs[k], np.ones((scale * 2, scale * 2), np.float32))
        gh = glyph.shape[0]
        y0, x0 = rng.integers(0, size - gh + 1, 2)
        canvas[y0:y0 + gh, x0:x0 + gh] = np.maximum(canvas[y0:y0 + gh, x0:x0 + gh], glyph)
        gray = np.clip(canvas, 0, 255).astype(np.uint8)
        images.append(np.repeat(gray[:, :, None], 3, axis=2))
        boxes.append((int(y0), int(x0), int(y0 + gh), int(x0 + gh), int(digits.target[k])))
    return images, boxes


def photos(n: int, size: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """n RGB crops of scikit-image's bundled photographs, resized to size x size if given."""
    from skimage import data  # bundled photographs: no download

    sources = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = sources[i % len(sources)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = np.ascontiguousarray(img[y:y + side, x:x + side, :3])
        out.append(resize_nearest(crop, size, size) if size else crop)
    return out


def noise_shapes(n: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Seeded rectangles on noise: the fallback when neither scikit-learn nor scikit-image exists."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        for _ in range(3):
            y0, x0 = rng.integers(0, size // 2, 2)
            y1, x1 = y0 + rng.integers(size // 8, size // 2), x0 + rng.integers(size // 8, size // 2)
            img[y0:y1, x0:x1] = rng.integers(80, 255, 3, dtype=np.uint8)
        out.append(img)
    return out


def generated(n: int, size: int, source: str = "auto", seed: int = 0) -> tuple[list[np.ndarray], str]:
    """n uint8 RGB images at size x size from `source` (auto: digits for small inputs, else photos)."""
    order = {"auto": ["digits", "photos", "noise"] if size <= 96 else ["photos", "digits", "noise"],
             "digits": ["digits"], "photos": ["photos"], "noise": ["noise"]}.get(source)
    if order is None:
        raise ValueError(f"unknown image source {source!r}: auto, digits, photos, noise or a folder")
    for name in order:
        try:
            if name == "digits":
                return cluttered_digits(n, size, seed)[0], name
            if name == "photos":
                return photos(n, size, seed), name
            return noise_shapes(n, size, seed), name
        except ImportError:
            if source != "auto":
                raise ValueError(f"image source {name!r} needs "
                                 f"{'scikit-learn' if name == 'digits' else 'scikit-image'}") from None
    raise AssertionError("unreachable")


def folder_images(folder: str | Path, limit: int | None = None) -> list[tuple[str, bytes]]:
    """(name, encoded bytes) for the image files in a folder, sorted by name."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"image folder not found: {root}")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root}")
    return [(p.name, p.read_bytes()) for p in files[:limit]]

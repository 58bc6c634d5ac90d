"""Heatmap rendering: colormap, alpha blend over the image, PNG/JPEG bytes (NumPy + cv2 only).

Follows the original cam-keras README recipe: resize the map to the image (bilinear),
``cv2.applyColorMap(uint8(255 * map), COLORMAP_JET)``, then ``cv2.addWeighted(image, 1 - alpha,
colored, alpha, 0)``. Images here are RGB (cv2's colormaps and encoders are BGR: converted at the
edges). No TensorFlow: the server's parent process renders with this module.
"""

from __future__ import annotations

import cv2
import numpy as np

from camserve.engine.errors import InvalidInputError

COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO,
}
FORMATS = ("png", "jpeg")


def _check_map(heatmap: np.ndarray) -> np.ndarray:
    m = np.asarray(heatmap, dtype=np.float32)
    if m.ndim != 2 or m.size == 0:
        raise InvalidInputError(f"heatmap must be a non-empty (h, w) array, got shape {m.shape}")
    return np.clip(np.nan_to_num(m, nan=0.0), 0.0, 1.0)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise InvalidInputError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise InvalidInputError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {img.shape}")
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def resize_heatmap(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (cv2.INTER_LINEAR) of a [0, 1] map to (height, width), float32 in [0, 1]."""
    m = _check_map(heatmap)
    if height < 1 or width < 1:
        raise InvalidInputError(f"size must be positive, got {height}x{width}")
    if m.shape == (height, width):
        return m
    return np.clip(cv2.resize(m, (int(width), int(height)), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """(h, w) map in [0, 1] -> (h, w, 3) uint8 RGB through a cv2 colormap."""
    if colormap not in COLORMAPS:
        raise InvalidInputError(f"unknown colormap {colormap!r}; valid: {', '.join(COLORMAPS)}")
    m = _check_map(heatmap)
    bgr = cv2.applyColorMap(np.uint8(255 * m), COLORMAPS[colormap])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """Blend the colored map over the image: (H, W, 3) uint8 RGB = (1 - alpha) image + alpha map."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise InvalidInputError(f"alpha must be in [0, 1], got {alpha!r}")
    img = _as_rgb(image)
    colored = colorize(resize_heatmap(heatmap, img.shape[0], img.shape[1]), colormap)
    return cv2.addWeighted(img, 1.0 - float(alpha), colored, float(alpha), 0.0)


def encode(image: np.ndarray, fmt: str = "png", quality: int = 90) -> bytes:
    """PNG or JPEG bytes of a uint8 RGB (or grayscale) image."""
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown image format {fmt!r}; valid: {', '.join(FORMATS)}")
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise InvalidInputError(f"image to encode must be uint8 (H, W[, C]), got {img.dtype} {img.shape}")
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if fmt == "png":
        ok, buf = cv2.imencode(".png", img)
    else:
        if not 1 <= int(quality) <= 100:
            raise InvalidInputError(f"JPEG quality must be in 1..100, got {quality!r}")
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise InvalidInputError(f"cv2 could not encode a {img.shape} image as {fmt}")
    return buf.tobytes()


def heatmap_png(heatmap: np.ndarray) -> bytes:
    """8-bit grayscale PNG of a [0, 1] map (value = round(255 * map))."""
    return encode(np.uint8(np.round(255 * _check_map(heatmap))), "png")


def overlay_bytes(
    image: np.ndarray,
    heatmap: np.ndarray,
    alpha: float = 0.4,
    colormap: str = "jet",
    fmt: str = "png",
    quality: int = 90,
) -> bytes:
    """``overlay`` then ``encode``: what the server returns as the overlay image."""
    return encode(overlay(image, heatmap, alpha, colormap), fmt, quality)

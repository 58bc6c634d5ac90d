"""Overlay rendering against the original README's cv2 recipe, on a real photograph."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from camserve.engine import InvalidInputError
from camserve.engine.overlay import colorize, encode, heatmap_png, overlay, overlay_bytes, resize_heatmap


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return data.chelsea()[:120, :160]  # RGB uint8


def _map(h: int = 7, w: int = 9) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.exp(-((yy - 2) ** 2 + (xx - 6) ** 2) / 6.0)
    return ((m - m.min()) / (m.max() - m.min())).astype(np.float32)


def test_overlay_is_the_readme_recipe(photo: np.ndarray) -> None:
    heat = _map()
    # The cam-keras README recipe, written in BGR as cv2 works.
    bgr = cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)
    resized = cv2.resize(heat, (bgr.shape[1], bgr.shape[0]))
    colored = cv2.applyColorMap(np.uint8(255 * resized), cv2.COLORMAP_JET)
    expected = cv2.addWeighted(bgr, 0.6, colored, 0.4, 0)
    got = overlay(photo, heat, alpha=0.4)
    assert got.shape == photo.shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, cv2.cvtColor(expected, cv2.COLOR_BGR2RGB))
    # the hot spot is red in RGB (JET's top end)
    hot = colorize(np.ones((1, 1), np.float32))[0, 0]
    assert hot[0] > 100 and hot[2] < 50


def test_alpha_extremes_and_colormaps(photo: np.ndarray) -> None:
    heat = _map()
    np.testing.assert_array_equal(overlay(photo, heat, alpha=0.0), photo)
    for cmap in ("jet", "turbo", "viridis", "inferno"):
        full = overlay(photo, heat, alpha=1.0, colormap=cmap)
        np.testing.assert_array_equal(full, colorize(resize_heatmap(heat, *photo.shape[:2]), cmap))
    with pytest.raises(InvalidInputError, match="colormap"):
        colorize(heat, "rainbow")
    with pytest.raises(InvalidInputError, match="alpha"):
        overlay(photo, heat, alpha=1.5)


def test_encodings_round_trip(photo: np.ndarray) -> None:
    png = overlay_bytes(photo, _map(), fmt="png")
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, overlay(photo, _map()))
    jpg = encode(photo, "jpeg", quality=95)
    assert jpg[:2] == b"\xff\xd8"
    dec = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(dec.astype(int) - photo.astype(int)).mean() < 4
    gray = cv2.imdecode(np.frombuffer(heatmap_png(_map()), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(gray, np.uint8(np.round(255 * _map())))
    with pytest.raises(InvalidInputError, match="format"):
        encode(photo, "gif")
    with pytest.raises(InvalidInputError, match="heatmap"):
        overlay(photo, np.zeros((2, 2, 2)))


def test_grayscale_and_rgba_images(photo: np.ndarray) -> None:
    gray = photo[..., 0]
    out = overlay(gray, _map())
    assert out.shape == (*gray.shape, 3)
    rgba = np.concatenate([photo, np.full((*photo.shape[:2], 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(overlay(rgba, _map()), overlay(photo, _map()))

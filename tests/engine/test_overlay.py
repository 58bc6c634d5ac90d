"""Overlay rendering against the original README's cv2 recipe, on a real photograph."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from camserve.engine import InvalidInputError
from camserve.engine.overlay import (
    COLORMAPS,
    colorize,
    encode,
    heatmap_png,
    overlay,
    overlay_bytes,
    resize_heatmap,
)


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


#: The OpenCV colormap each name means, written out here (not read from the module under test).
OPENCV = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "viridis": cv2.COLORMAP_VIRIDIS,
          "inferno": cv2.COLORMAP_INFERNO}


def _opencv_rgb(heat: np.ndarray, cmap: str) -> np.ndarray:
    return cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * heat), OPENCV[cmap]), cv2.COLOR_BGR2RGB)


def test_each_colormap_is_opencvs_and_they_differ() -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (4, 1))  # every 8-bit level
    drawn = {cmap: colorize(ramp, cmap) for cmap in COLORMAPS}
    assert set(drawn) == set(OPENCV)
    for cmap, rgb in drawn.items():
        np.testing.assert_array_equal(rgb, _opencv_rgb(ramp, cmap), err_msg=cmap)
    for a, b in itertools.combinations(drawn, 2):
        assert np.abs(drawn[a].astype(int) - drawn[b].astype(int)).mean() > 20, (a, b)


def test_alpha_extremes_and_colormaps(photo: np.ndarray) -> None:
    heat = _map()
    np.testing.assert_array_equal(overlay(photo, heat, alpha=0.0), photo)
    resized = resize_heatmap(heat, *photo.shape[:2])
    for cmap in OPENCV:
        full = overlay(photo, heat, alpha=1.0, colormap=cmap)
        np.testing.assert_array_equal(full, _opencv_rgb(resized, cmap), err_msg=cmap)
        blend = cv2.addWeighted(photo, 0.6, _opencv_rgb(resized, cmap), 0.4, 0)  # the README recipe
        np.testing.assert_array_equal(overlay(photo, heat, alpha=0.4, colormap=cmap), blend, err_msg=cmap)
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


def test_jpeg_quality_trades_bytes_for_fidelity(photo: np.ndarray) -> None:
    """Lower quality: fewer bytes and a larger (still small) error; overlay_bytes passes it on."""
    sizes, errors = [], []
    for quality in (20, 50, 95):
        data = encode(photo, "jpeg", quality=quality)
        back = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        sizes.append(len(data))
        errors.append(np.abs(back.astype(int) - photo.astype(int)).mean())
        # the same bytes as OpenCV's encoder at that quality (BGR)
        bgr = cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)
        assert data == cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes(), quality
    assert sizes[0] < sizes[1] < sizes[2], sizes
    assert errors[0] > errors[1] > errors[2] and errors[0] < 8 and errors[2] < 3, errors
    low, high = (overlay_bytes(photo, _map(), fmt="jpeg", quality=q) for q in (20, 95))
    assert len(low) < len(high)
    assert low == encode(overlay(photo, _map()), "jpeg", quality=20)
    with pytest.raises(InvalidInputError, match="quality"):
        encode(photo, "jpeg", quality=0)


def test_grayscale_and_rgba_images(photo: np.ndarray) -> None:
    gray = photo[..., 0]
    out = overlay(gray, _map())
    assert out.shape == (*gray.shape, 3)
    rgba = np.concatenate([photo, np.full((*photo.shape[:2], 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(overlay(rgba, _map()), overlay(photo, _map()))

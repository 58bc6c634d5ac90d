"""camserve.front.codec against OpenCV/NumPy references on real photographs (no server, a few seconds)."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from camserve.front import codec
from camserve.front.codec import ImageError, OutputSpec
from skimage import data as skdata

INPUT = (64, 64, 3)


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return np.ascontiguousarray(skdata.chelsea())  # (300, 451, 3) RGB uint8


def encode(rgb: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb
    ok, buf = cv2.imencode(ext, bgr, params or [])
    assert ok
    return buf.tobytes()


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but carries almost no data (a bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\x00" * 1000)
    return (b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", len(idat)) + b"IDAT" + idat
            + struct.pack(">I", zlib.crc32(b"IDAT" + idat)))


@pytest.mark.parametrize("ext,params,fmt", [
    (".png", [], "PNG"),
    (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90], "JPEG"),
    (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], "JPEG"),
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], "WebP"),
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "WebP"),
    (".bmp", [], "BMP"),
])
def test_header_size_matches_encoder(chelsea: np.ndarray, ext: str, params: list[int], fmt: str) -> None:
    crop = chelsea[:123, :217]
    assert codec.image_header(encode(crop, ext, params)) == (fmt, 217, 123)


def test_webp_with_alpha_header() -> None:
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 3] = 128
    data = encode(rgba, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80])
    assert codec.image_header(data)[1:] == (12, 10)


def test_png_decodes_exactly_and_resizes_with_area(chelsea: np.ndarray) -> None:
    img = codec.decode_encoded(encode(chelsea, ".png"), INPUT)
    assert np.array_equal(img.original, chelsea)
    assert img.original_size == (300, 451)
    expected = cv2.resize(chelsea, (64, 64), interpolation=cv2.INTER_AREA)
    assert img.pixels.dtype == np.uint8 and img.pixels.shape == INPUT
    assert np.array_equal(img.pixels, expected)


def test_upscale_uses_linear(chelsea: np.ndarray) -> None:
    small = np.ascontiguousarray(chelsea[:20, :30])
    img = codec.decode_encoded(encode(small, ".bmp"), INPUT)
    assert np.array_equal(img.pixels, cv2.resize(small, (64, 64), interpolation=cv2.INTER_LINEAR))


def test_jpeg_is_close_to_source(chelsea: np.ndarray) -> None:
    img = codec.decode_encoded(encode(chelsea, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]), INPUT)
    assert np.abs(img.original.astype(int) - chelsea.astype(int)).mean() < 3.0


def test_gray_and_alpha_become_rgb(chelsea: np.ndarray) -> None:
    gray = cv2.cvtColor(chelsea, cv2.COLOR_RGB2GRAY)
    img = codec.decode_encoded(encode(gray, ".png"), INPUT)
    assert img.original.shape == (300, 451, 3)
    assert all(np.array_equal(img.original[..., k], gray) for k in range(3))
    rgba = np.dstack([cv2.cvtColor(chelsea, cv2.COLOR_RGB2BGR), np.full(gray.shape, 7, np.uint8)])
    img = codec.decode_encoded(encode(rgba, ".png"), INPUT)
    assert np.array_equal(img.original, chelsea)


def test_single_channel_model_gets_luminance(chelsea: np.ndarray) -> None:
    img = codec.decode_encoded(encode(chelsea, ".png"), (32, 32, 1))
    ref = cv2.cvtColor(cv2.resize(chelsea, (32, 32), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    assert img.pixels.shape == (32, 32, 1)
    assert np.array_equal(img.pixels[..., 0], ref)


@pytest.mark.parametrize("payload,words", [
    (b"", "empty"),
    (b"\x00\x01not an image" * 10, "not a supported image"),
    (b"GIF89a" + b"\x00" * 40, "not a supported image"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WebP"),
    (b"BM\x00", "BMP"),
])
def test_refuses_garbage_with_a_clear_message(payload: bytes, words: str) -> None:
    with pytest.raises(ImageError, match=words):
        codec.decode_encoded(payload, INPUT)


def test_truncated_png_is_refused(chelsea: np.ndarray) -> None:
    data = encode(chelsea, ".png")
    with pytest.raises(ImageError):
        codec.decode_encoded(data[: len(data) // 3], INPUT)


def test_decompression_bomb_header_refused_before_decoding() -> None:
    bomb = png_with_header(100_000, 100_000)
    assert len(bomb) < 200
    with pytest.raises(ImageError, match="at most 32768"):
        codec.decode_encoded(bomb, INPUT)
    with pytest.raises(ImageError, match=r"20000x20000 = 400000000 pixels"):
        codec.decode_encoded(png_with_header(20_000, 20_000), INPUT)
    with pytest.raises(ImageError, match="no pixels"):
        codec.decode_encoded(png_with_header(0, 10), INPUT)


def test_pixel_budget_applies_to_real_images(chelsea: np.ndarray) -> None:
    with pytest.raises(ImageError, match="at most 10000"):
        codec.decode_encoded(encode(chelsea, ".jpg"), INPUT, max_pixels=10_000)


def test_uint8_tensor_any_size(chelsea: np.ndarray) -> None:
    img = codec.decode_tensor("UINT8", [1, 300, 451, 3], chelsea.tobytes(), INPUT)
    assert np.array_equal(img.original, chelsea)
    assert np.array_equal(img.pixels, cv2.resize(chelsea, (64, 64), interpolation=cv2.INTER_AREA))
    gray = chelsea[:64, :64, :1].copy()
    img = codec.decode_tensor("UINT8", [64, 64, 1], gray.tobytes(), INPUT)
    assert np.array_equal(img.pixels, np.repeat(gray, 3, axis=2))


def test_float_tensor_must_be_at_input_size_and_finite() -> None:
    arr = np.linspace(-1, 1, 64 * 64 * 3, dtype=np.float32).reshape(INPUT)
    img = codec.decode_tensor("FLOAT32", [64, 64, 3], arr.astype("<f4").tobytes(), INPUT)
    assert img.pixels.dtype == np.float32 and np.array_equal(img.pixels, arr)
    assert img.original.dtype == np.uint8 and img.original.shape == INPUT
    with pytest.raises(ImageError, match="input shape"):
        codec.decode_tensor("FLOAT32", [32, 32, 3], arr[:32, :32].tobytes(), INPUT)
    # Overlays over a FLOAT32 tensor are drawn on the pixels it was preprocessed from: the model's
    # preprocessing undone, caffe's BGR back to RGB (a min-max of the BGR floats swapped red and blue).
    from camserve.engine.pixels import preprocess_numpy

    pixels = (skdata.chelsea()[:64, :64] // 2 + 40).astype(np.uint8)  # not spanning 0..255
    for mode in ("tf", "caffe", "torch"):
        sent = preprocess_numpy(pixels, mode).astype("<f4")
        img = codec.decode_tensor("FLOAT32", [64, 64, 3], sent.tobytes(), INPUT, preprocessing=mode)
        assert np.abs(img.original.astype(int) - pixels).max() <= 1, mode
    bad = arr.copy()
    bad[3, 3, 1] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        codec.decode_tensor("FLOAT32", [64, 64, 3], bad.tobytes(), INPUT)


@pytest.mark.parametrize("channels", [2, 4])
def test_alpha_is_dropped_alike_for_arrays_and_encoded_images(chelsea: np.ndarray, channels: int) -> None:
    """One rule for alpha: an RGBA (or gray + alpha) array decodes exactly as the same picture sent
    as PNG bytes; the alpha channel is dropped, not composited (fully transparent pixels keep their
    colour)."""
    from camserve_client.tools.testimages import encode_png

    color = chelsea[:120, :160] if channels == 4 else chelsea[:120, :160, :1]
    alpha = np.zeros((120, 160, 1), np.uint8)
    alpha[:60] = 255  # top half opaque, bottom half fully transparent
    pixels = np.concatenate([color, alpha], axis=2)
    as_array = codec.decode_tensor("UINT8", list(pixels.shape), pixels.tobytes(), INPUT)
    as_png = codec.decode_encoded(encode_png(pixels), INPUT)
    expected = np.repeat(color, 3, axis=2) if channels == 2 else color
    assert np.array_equal(as_array.original, expected) and np.array_equal(as_png.original, expected)
    assert np.array_equal(as_array.pixels, as_png.pixels)
    batch_axis = codec.decode_tensor("UINT8", [1, *pixels.shape], pixels.tobytes(), INPUT)
    assert np.array_equal(batch_axis.pixels, as_array.pixels)


@pytest.mark.parametrize("dtype,shape,nbytes,words", [
    ("UINT8", [64, 64, 3], 64 * 64 * 3 - 1, "needs exactly 12288"),
    ("UINT8", [2, 64, 64, 3], 2 * 64 * 64 * 3, "batch axis"),
    ("UINT8", [64, 64, 5], 64 * 64 * 5, "5 channels"),
    ("UINT8", [64, 64], 64 * 64, "not an image"),
    ("UINT8", [0, 64, 3], 0, "no pixels"),
    ("UINT8", [-5, 64, 3], 0, "no pixels"),
    ("DTYPE_UNSPECIFIED", [64, 64, 3], 64 * 64 * 3, "dtype"),
    ("UINT8", [100_000, 100_000, 3], 10, "at most"),
])
def test_tensor_refusals(dtype: str, shape: list[int], nbytes: int, words: str) -> None:
    with pytest.raises(ImageError, match=words):
        codec.decode_tensor(dtype, shape, b"\x00" * nbytes, INPUT)


def test_encode_map_grid_tensor_is_exact(chelsea: np.ndarray) -> None:
    img = codec.decode_encoded(encode(chelsea, ".png"), INPUT)
    heat = np.random.default_rng(0).random((8, 8), dtype=np.float32)
    out = codec.encode_map(heat, OutputSpec(png=True), img)
    assert out.tensor_shape == (8, 8) and out.overlay == b""
    assert np.array_equal(np.frombuffer(out.tensor, "<f4").reshape(8, 8), heat)
    png = cv2.imdecode(np.frombuffer(out.png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint8 and np.array_equal(png, np.rint(heat * 255).astype(np.uint8))


def test_encode_map_sizes_and_overlay(chelsea: np.ndarray) -> None:
    img = codec.decode_encoded(encode(chelsea, ".png"), INPUT)
    heat = np.zeros((8, 8), np.float32)
    heat[2:4, 5:7] = 1.0
    out = codec.encode_map(heat, OutputSpec(size="original", overlay="png", alpha=0.5), img)
    assert out.tensor_shape == (300, 451)
    full = np.frombuffer(out.tensor, "<f4").reshape(300, 451)
    ref = cv2.resize(heat, (451, 300), interpolation=cv2.INTER_LINEAR)
    assert np.allclose(full, np.clip(ref, 0, 1), atol=1e-6) and full.min() >= 0.0 and full.max() <= 1.0
    over = cv2.imdecode(np.frombuffer(out.overlay, np.uint8), cv2.IMREAD_COLOR_RGB)
    heat_rgb = cv2.cvtColor(cv2.applyColorMap((full * 255).astype(np.uint8), cv2.COLORMAP_JET),
                            cv2.COLOR_BGR2RGB)
    ref_over = (0.5 * heat_rgb.astype(float) + 0.5 * chelsea.astype(float))
    assert np.abs(over.astype(float) - ref_over).max() <= 1.0
    spec = OutputSpec(size="input", tensor=False, overlay="jpeg", colormap="viridis")
    out = codec.encode_map(heat, spec, img)
    assert out.tensor_shape == (64, 64) and out.tensor == b""
    assert cv2.imdecode(np.frombuffer(out.overlay, np.uint8), cv2.IMREAD_COLOR).shape == (64, 64, 3)
    out = codec.encode_map(heat, OutputSpec(size="grid", overlay="png"), img)
    assert cv2.imdecode(np.frombuffer(out.overlay, np.uint8), cv2.IMREAD_COLOR).shape == (64, 64, 3)
    # The tensor at its own size (the grid: exact, a few bytes) beside an overlay at the original size.
    spec = OutputSpec(size="original", overlay="png", alpha=0.5, tensor_size="grid")
    out = codec.encode_map(heat, spec, img)
    assert out.tensor_shape == (8, 8)
    assert np.array_equal(np.frombuffer(out.tensor, "<f4").reshape(8, 8), heat)
    assert cv2.imdecode(np.frombuffer(out.overlay, np.uint8), cv2.IMREAD_COLOR_RGB).shape == (300, 451, 3)


def test_large_jpeg_decodes_at_reduced_scale_only_when_allowed(chelsea: np.ndarray) -> None:
    """A JPEG >= 2x the input on both sides may decode at 1/2, 1/4 or 1/8 scale (never below the input)
    when nothing is drawn at its original size; the model's pixels stay close to a full decode."""
    big = cv2.resize(chelsea, (1804, 1200), interpolation=cv2.INTER_CUBIC)
    data = encode(big, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    full = codec.decode_encoded(data, INPUT)
    fast = codec.decode_encoded(data, INPUT, full_size=False)
    assert full.original.shape[:2] == (1200, 1804) and full.original_size == (1200, 1804)
    assert fast.original_size == (1200, 1804)  # the size sent, whatever was decoded
    assert 64 <= fast.original.shape[0] < 1200 / 2 and fast.original.shape[1] >= 64  # reduced, >= input
    assert fast.pixels.shape == full.pixels.shape == INPUT
    assert np.abs(fast.pixels.astype(int) - full.pixels.astype(int)).mean() < 3.0
    small = codec.decode_encoded(encode(chelsea[:100, :100], ".jpg"), INPUT, full_size=False)
    assert small.original.shape[:2] == (100, 100)  # under 2x the input: decoded whole


def test_jpeg_with_exif_orientation_is_rotated(chelsea: np.ndarray) -> None:
    """Exif orientation 6 (rotate 90 cw) is applied, as OpenCV does: width and height swap."""
    data = encode(chelsea, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    # An APP1 Exif segment (big-endian TIFF, one IFD entry: Orientation = 6) right after SOI.
    entry = b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"  # tag 0x0112, SHORT, 1 value: 6
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + entry + b"\x00\x00\x00\x00"
    app1 = b"Exif\x00\x00" + tiff
    data = data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]
    img = codec.decode_encoded(data, INPUT)
    assert img.original.shape[:2] == (451, 300)

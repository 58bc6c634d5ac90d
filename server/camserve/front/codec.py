"""Image decoding and heatmap encoding for the front (NumPy + OpenCV only, never TensorFlow).

Why this module exists apart from the service: everything here is CPU work on bytes a caller sent,
so large images are decoded in a thread pool (OpenCV releases the GIL; tiny ones inline, see
``camserve.front.service``), and everything here can be attacked. What an image claims (its header,
a tensor's shape) is checked by ``camserve.front.headers`` *before* OpenCV sees it, so a 40-byte PNG
that claims 100 000 x 100 000 pixels (a decompression bomb) is refused without allocating anything;
the front runs those checks before admission, and decoding runs them again for library callers.
Every refusal is an :class:`ImageError` (an ``INVALID_INPUT`` :class:`~camserve.records.Failure`,
also a ``ValueError``) whose message says what was wrong and what is valid. Heatmaps are drawn by
the engine's ``overlay`` module.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg

from camserve.engine import overlay as render  # NumPy + cv2 only, no TensorFlow
from camserve.engine.pixels import display_pixels  # NumPy only
from camserve.front.headers import (  # re-exported: what codec's callers check and catch
    DEFAULT_MAX_PIXELS,
    FORMATS,
    MAX_SIDE,
    ImageError,
    check_size,
    image_header,
    probe_encoded,
    probe_tensor,
)

__all__ = ["DEFAULT_MAX_PIXELS", "FORMATS", "MAX_SIDE", "DecodedImage", "EncodedMap", "ImageError",
           "OutputSpec", "check_size", "decode_encoded", "decode_tensor", "encode_map", "image_header",
           "inline", "map_size", "probe_encoded", "probe_tensor", "resize", "tensor_image"]

INLINE_PIXELS = 512 * 512  # images up to this many pixels are decoded on the event loop (see inline)


@dataclass(frozen=True)
class DecodedImage:
    """An image ready for the model, plus what the reply needs to draw heatmaps at the original size.

    pixels:   (H, W, C) at the model's input size; uint8 RGB, or float32 already preprocessed.
    original: (h, w, 3) uint8 RGB as sent, for ORIGINAL-size heatmaps and overlays.
    """

    pixels: np.ndarray
    original: np.ndarray
    sent_size: tuple[int, int] | None = None  # when ``original`` was decoded at reduced scale

    @property
    def original_size(self) -> tuple[int, int]:
        """(height, width) of the image as the caller sent it."""
        if self.sent_size is not None:
            return self.sent_size
        return int(self.original.shape[0]), int(self.original.shape[1])


def inline(height: int, width: int) -> bool:
    """Whether to decode an image of this size (as sent; checked by ``headers``) on the event loop
    rather than in the codec pool.

    Measured: the hop to the pool and back costs ~150 us of CPU, more than half of what a 224x224 JPEG
    takes to decode (~250 us), and front ends scale across processes (``--frontends``), not codec
    threads. Large images (a few ms each) still go to the pool so one of them does not stall every
    other call of the process."""
    return width * height <= INLINE_PIXELS


# ---------------------------------------------------------------------------------------------
# Decoding


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize with INTER_AREA when shrinking (no aliasing) and INTER_LINEAR when enlarging."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    interp = cv2.INTER_AREA if height * width < h * w else cv2.INTER_LINEAR
    out = cv2.resize(image, (width, height), interpolation=interp)
    if out.ndim == 2 and image.ndim == 3:  # cv2 drops a trailing channel axis of 1
        out = out[:, :, None]
    return out


def _to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """(h, w, 3) uint8 RGB -> the model's channel count (1 = luminance, 3 = RGB)."""
    if channels == 3:
        return rgb
    if channels == 1:
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
    raise ImageError(f"the model takes {channels} channels; only 1 or 3 channel models accept images")


def _model_pixels(rgb: np.ndarray, input_shape: tuple[int, int, int]) -> np.ndarray:
    height, width, channels = input_shape
    return np.ascontiguousarray(_to_channels(resize(rgb, height, width), channels))


def _decode_jpeg(data: bytes, at_least: tuple[int, int] | None = None) -> np.ndarray | None:
    """JPEG through libjpeg-turbo's own API (simplejpeg): measured ~250 us for a 224x224 q90 image
    against ~330 us for cv2.imdecode, same pixels; ``at_least`` (h, w) decodes at the smallest DCT
    scale still covering it. None when simplejpeg cannot read it (e.g. CMYK or corrupt data): OpenCV
    tries then, and refuses what neither can read."""
    try:
        if at_least is None:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=at_least[0], min_width=at_least[1])
    except (ValueError, RuntimeError):
        return None


def decode_encoded(data: bytes, input_shape: tuple[int, int, int],
                   max_pixels: int = DEFAULT_MAX_PIXELS, *, full_size: bool = True) -> DecodedImage:
    """Decode JPEG/PNG/WebP/BMP bytes to RGB, resized to the input. Gray becomes RGB; an alpha channel
    is dropped (never composited), the one rule for alpha that :func:`decode_tensor` follows too.

    ``full_size=False`` (nothing will be drawn at the size the image was sent) lets a JPEG at least
    twice the input's size on both sides decode at reduced scale (libjpeg's DCT scaling: 1/2, 1/4 or
    1/8, never below the input size) before the usual INTER_AREA resize: measured 3.5x less CPU for
    a 640x480 photo going to 224x224. ``original`` is then that reduced image; ``original_size``
    stays the size sent.
    """
    fmt, width, height = probe_encoded(data, max_pixels)
    rgb = None
    reduce = False
    # A JPEG with an Exif segment may carry an orientation, which OpenCV applies and simplejpeg does not.
    if fmt == "JPEG" and data.find(b"Exif\x00\x00", 0, 1 << 16) < 0:
        h, w = input_shape[0], input_shape[1]
        reduce = not full_size and height >= 2 * h and width >= 2 * w
        rgb = _decode_jpeg(data, (h, w) if reduce else None)
    if rgb is None:
        rgb = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR_RGB)
    if rgb is None or rgb.size == 0:
        raise ImageError(f"the {fmt} image could not be decoded (truncated or corrupt data)")
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    return DecodedImage(pixels=_model_pixels(rgb, input_shape), original=rgb,
                        sent_size=(height, width) if reduce else None)


def decode_tensor(dtype: str, shape: list[int] | tuple[int, ...], data: bytes,
                  input_shape: tuple[int, int, int], max_pixels: int = DEFAULT_MAX_PIXELS,
                  preprocessing: str = "none") -> DecodedImage:
    """Check (:func:`probe_tensor`) and convert a raw tensor: UINT8 (H,W,C)/(1,H,W,C) any size, or
    FLOAT32 at the input size.

    FLOAT32 is taken as already preprocessed for the model (with its ``preprocessing``, which overlays
    undo to draw on the pixels it came from), so it must match the input shape exactly, be finite and
    hold only values that preprocessing gives (float pixels 0..255 for a tf model are refused);
    UINT8 is gray (C=1), gray + alpha (2), RGB (3) or RGBA (4) pixels of any size,
    resized like decoded images. Alpha is dropped, never composited: the rule for encoded images with
    alpha (OpenCV's decoder drops it), and what Keras' ``load_img`` and PIL's ``convert("RGB")`` do
    to the images a model is trained on.
    """
    return tensor_image(dtype, probe_tensor(dtype, shape, data, input_shape, max_pixels, preprocessing), data,
                        input_shape, preprocessing)


def tensor_image(dtype: str, hwc: tuple[int, int, int], data: bytes,
                 input_shape: tuple[int, int, int], preprocessing: str = "none") -> DecodedImage:
    """A tensor :func:`probe_tensor` passed (its ``hwc``) as the model's image (UINT8 resized; FLOAT32
    shown in overlays as the pixels the model's ``preprocessing`` made it from)."""
    h, w, c = hwc
    if dtype == "UINT8":
        img = np.frombuffer(data, dtype=np.uint8).reshape(h, w, c)
        rgb = np.ascontiguousarray(np.repeat(img[:, :, :1], 3, axis=2) if c <= 2 else img[:, :, :3])
        return DecodedImage(pixels=_model_pixels(rgb, input_shape), original=rgb)
    arr = np.frombuffer(data, dtype="<f4").reshape(h, w, c).astype(np.float32)
    return DecodedImage(pixels=arr, original=_display_from_float(arr, preprocessing))


def _display_from_float(arr: np.ndarray, preprocessing: str) -> np.ndarray:
    """The uint8 RGB pixels a preprocessed float image came from, for overlays only (caffe's BGR back
    to RGB; a min-max stretch for 'none', whose scale only the model knows)."""
    rgb = display_pixels(arr, preprocessing)
    return np.ascontiguousarray(np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb)


# ---------------------------------------------------------------------------------------------
# Encoding


@dataclass(frozen=True)
class OutputSpec:
    """What one explanation carries back (already validated; names from ``camserve_proto.vocabulary``).

    size: ``grid`` (the target layer's grid), ``input`` (the model's input size) or ``original``
    (the image as sent), for every output; tensor_size: the float32 map's own size when it differs
    (None = ``size``). tensor: the float32 map; png: an 8-bit PNG of it; overlay: None, ``png``
    or ``jpeg``, drawn with ``colormap`` at weight ``alpha``.
    """

    size: str = "grid"
    tensor: bool = True
    png: bool = False
    overlay: str | None = None
    alpha: float = 0.4
    colormap: str = "jet"
    jpeg_quality: int = 90
    tensor_size: str | None = None

    @property
    def tensor_at(self) -> str:
        """The size the float32 map comes back at."""
        return self.tensor_size or self.size

    @property
    def draws_original(self) -> bool:
        """Whether an overlay is drawn on the image at the size it was sent (needs its full pixels;
        every other output needs only that size, so a large JPEG may decode at reduced scale)."""
        return self.overlay is not None and self.size == "original"

    @property
    def costly(self) -> bool:
        """Whether encoding a map is real CPU work (resizing or drawing; worth the codec pool) rather
        than a memcpy of a grid-size float map."""
        return (self.tensor and self.tensor_at != "grid") or self.png or self.overlay is not None


@dataclass(frozen=True)
class EncodedMap:
    """One heatmap ready for the wire: the float32 tensor's (h, w), and the bytes asked for (empty if not)."""

    tensor_shape: tuple[int, int]
    tensor: bytes
    png: bytes
    overlay: bytes


def map_size(size: str, grid: tuple[int, ...], input_size: tuple[int, ...],
             original_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) a map of ``grid`` (h, w) comes back at for ``size``: grid, input (the model's, ``input_size``
    (H, W, ...)) or original (the image as sent, ``original_size`` (h, w): known from its header before
    it is decoded)."""
    if size == "grid":
        return int(grid[0]), int(grid[1])
    if size == "input":
        return int(input_size[0]), int(input_size[1])
    return int(original_size[0]), int(original_size[1])


def encode_map(heatmap: np.ndarray, spec: OutputSpec, image: DecodedImage) -> EncodedMap:
    """Resize the map to the requested sizes and produce the float32 tensor, PNG and overlay asked for.

    ``heatmap``: (h, w) float32 in [0, 1] at the target layer's grid. The float32 tensor is
    little-endian, row-major. Overlays are drawn on the image at the requested size; for the conv grid
    (a few pixels wide) they are drawn at the model's input size instead, which is what a person can
    look at. Nothing is resized that no output needs (a 12-megapixel resize costs tens of ms).
    """
    resized: dict[str, np.ndarray] = {}

    def size_of(size: str) -> tuple[int, int]:
        return map_size(size, heatmap.shape, image.pixels.shape, image.original_size)

    def at(size: str) -> np.ndarray:
        if size not in resized:
            h, w = size_of(size)
            if heatmap.shape == (h, w) and heatmap.dtype == np.float32:
                resized[size] = heatmap  # the engine's map as it is: float32 in [0, 1] (the common case)
            else:
                resized[size] = render.resize_heatmap(heatmap, h, w)
        return resized[size]

    tensor, shape = b"", size_of(spec.tensor_at)
    if spec.tensor:
        tensor = np.ascontiguousarray(at(spec.tensor_at), dtype="<f4").tobytes()
    png = render.heatmap_png(at(spec.size)) if spec.png else b""
    over = b""
    if spec.overlay:
        drawn_at = "input" if spec.size == "grid" else spec.size
        base = image.original if drawn_at == "original" else resize(
            image.original, *size_of(drawn_at))
        over = render.overlay_bytes(base, at(spec.size), spec.alpha, spec.colormap, spec.overlay,
                                    spec.jpeg_quality)
    return EncodedMap(tensor_shape=shape, tensor=tensor, png=png, overlay=over)

"""Image decoding and heatmap encoding for the front (NumPy + OpenCV only, never TensorFlow).

Why this module exists apart from the service: everything here is CPU work on bytes a caller sent,
so large images are decoded in a thread pool (OpenCV releases the GIL; tiny ones inline, see
``camserve.front.service``), and everything here can be attacked. The header of an encoded image is
parsed by hand *before* OpenCV sees it, so a 40-byte PNG that claims 100 000 x 100 000 pixels (a
decompression bomb) is refused without allocating anything. Every refusal is an :class:`ImageError`
(an ``INVALID_INPUT`` :class:`~camserve.records.Failure`, also a ``ValueError``) whose message says
what was wrong and what is valid. Heatmaps are drawn by the engine's ``overlay`` module.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg

from camserve.engine import overlay as render  # NumPy + cv2 only, no TensorFlow
from camserve.engine.pixels import display_pixels  # NumPy only
from camserve.records import ErrorKind, Failure

#: Default bound on the decoded pixel count of one image (about 25 megapixels, 75 MB as RGB).
DEFAULT_MAX_PIXELS = 25_000_000
#: No side may be longer than this, whatever the pixel budget (keeps cv2 buffers sane).
MAX_SIDE = 32_768

FORMATS = ("JPEG", "PNG", "WebP", "BMP")

INLINE_PIXELS = 512 * 512  # images up to this many pixels are decoded on the event loop (see inline)


class ImageError(Failure, ValueError):
    """The caller's image (encoded bytes or raw tensor) cannot be used; the message says why."""

    kind = ErrorKind.INVALID_INPUT

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (ImageError, (self.message,))


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


# ---------------------------------------------------------------------------------------------
# Header parsing: dimensions without decoding


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk JPEG marker segments up to the first SOFn and read its height/width."""
    i = 2
    n = len(data)
    while i < n:
        if data[i] != 0xFF:
            raise ImageError("corrupt JPEG: expected a marker while looking for the frame header")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        if i + 2 > n:
            break
        (length,) = struct.unpack(">H", data[i:i + 2])
        if length < 2:
            raise ImageError("corrupt JPEG: a segment has an invalid length")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if i + 7 > n:
                break
            height, width = struct.unpack(">HH", data[i + 3:i + 7])
            return width, height
        i += length
    raise ImageError("truncated or corrupt JPEG: no frame header (SOF) found")


def _webp_size(data: bytes) -> tuple[int, int]:
    """Read the canvas size from the first WebP chunk (VP8, VP8L or VP8X)."""
    if len(data) < 30:
        raise ImageError("truncated WebP: the header is incomplete")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageError("corrupt WebP: bad VP8 start code")
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise ImageError("corrupt WebP: bad VP8L signature")
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    raise ImageError(f"unsupported WebP chunk {chunk!r}")


def image_header(data: bytes) -> tuple[str, int, int]:
    """Return (format, width, height) from the header alone; refuse anything but JPEG/PNG/WebP/BMP."""
    if len(data) == 0:
        raise ImageError("the encoded image is empty; send JPEG, PNG, WebP or BMP bytes")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageError("truncated or corrupt PNG: no IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return "PNG", width, height
    if data[:3] == b"\xff\xd8\xff":
        width, height = _jpeg_size(data)
        return "JPEG", width, height
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        width, height = _webp_size(data)
        return "WebP", width, height
    if data[:2] == b"BM":
        if len(data) < 26:
            raise ImageError("truncated BMP: the header is incomplete")
        (dib,) = struct.unpack("<I", data[14:18])
        if dib == 12:
            width, height = struct.unpack("<hh", data[18:22])
        else:
            width, height = struct.unpack("<ii", data[18:26])
        return "BMP", abs(width), abs(height)
    raise ImageError(f"not a supported image: the bytes start with {data[:8]!r}; "
                     f"send {', '.join(FORMATS)} (or a raw tensor)")


def check_size(width: int, height: int, max_pixels: int, what: str = "image") -> None:
    """Refuse empty, over-long or over-budget images before any buffer is allocated."""
    if width <= 0 or height <= 0:
        raise ImageError(f"the {what} has no pixels ({width}x{height})")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ImageError(f"the {what} is {width}x{height}; each side must be at most {MAX_SIDE} pixels")
    if width * height > max_pixels:
        raise ImageError(f"the {what} is {width}x{height} = {width * height} pixels; "
                         f"at most {max_pixels} are accepted (resize it before sending)")


def inline(data: bytes) -> bool:
    """Whether to decode these encoded bytes on the event loop rather than in the codec pool.

    Measured: the hop to the pool and back costs ~150 us of CPU, more than half of what a 224x224 JPEG
    takes to decode (~250 us), and front ends scale across processes (``--frontends``), not codec
    threads. Large images (a few ms each) still go to the pool so one of them does not stall every
    other call of the process. Undecodable headers count as inline: they are refused at once."""
    try:
        _, width, height = image_header(data)
    except ImageError:
        return True
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
    fmt, width, height = image_header(data)
    check_size(width, height, max_pixels, f"{fmt} image")
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
    """Check and convert a raw tensor: UINT8 (H,W,C)/(1,H,W,C) any size, or FLOAT32 at the input size.

    FLOAT32 is taken as already preprocessed for the model (with its ``preprocessing``, which overlays
    undo to draw on the pixels it came from), so it must match the input shape exactly and be finite;
    UINT8 is gray (C=1), gray + alpha (2), RGB (3) or RGBA (4) pixels of any size, resized like
    decoded images. Alpha is dropped, never composited: the rule for encoded images with
    alpha (OpenCV's decoder drops it), and what Keras' ``load_img`` and PIL's ``convert("RGB")`` do
    to the images a model is trained on.
    """
    dims = [int(d) for d in shape]
    expected_desc = "(H, W, C) or (1, H, W, C) with C = 1 (gray), 2 (gray, alpha), 3 (RGB) or 4 (RGBA)"
    if len(dims) == 4:
        if dims[0] != 1:
            raise ImageError(f"tensor shape {dims}: one image per request, the batch axis must be 1; "
                             "use ExplainBatch for several images")
        dims = dims[1:]
    if len(dims) != 3:
        raise ImageError(f"tensor shape {list(shape)} is not an image; expected {expected_desc}")
    h, w, c = dims
    if c not in (1, 2, 3, 4):
        raise ImageError(f"tensor shape {list(shape)} has {c} channels; expected {expected_desc}")
    check_size(w, h, max_pixels, "tensor image")
    model_h, model_w, model_c = input_shape
    if dtype == "UINT8":
        itemsize = 1
    elif dtype == "FLOAT32":
        itemsize = 4
    else:
        raise ImageError(f"tensor dtype {dtype} is not accepted; send UINT8 pixels or FLOAT32 "
                         "already preprocessed at the model's input size")
    need = h * w * c * itemsize
    if len(data) != need:
        raise ImageError(f"tensor data has {len(data)} bytes; a {dtype} tensor of shape {list(shape)} "
                         f"needs exactly {need} (raw little-endian, row-major)")
    if dtype == "UINT8":
        img = np.frombuffer(data, dtype=np.uint8).reshape(h, w, c)
        rgb = np.ascontiguousarray(np.repeat(img[:, :, :1], 3, axis=2) if c <= 2 else img[:, :, :3])
        return DecodedImage(pixels=_model_pixels(rgb, input_shape), original=rgb)
    if (h, w, c) != (model_h, model_w, model_c):
        raise ImageError(f"a FLOAT32 tensor must already be preprocessed at the model's input shape "
                         f"{[model_h, model_w, model_c]}, got {[h, w, c]}; send UINT8 pixels to have "
                         "the server resize them")
    arr = np.frombuffer(data, dtype="<f4").reshape(h, w, c).astype(np.float32)
    if not np.isfinite(arr).all():
        raise ImageError("the FLOAT32 tensor contains NaN or infinite values")
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


def map_size(size: str, grid: tuple[int, int], image: DecodedImage) -> tuple[int, int]:
    """(h, w) a map of ``grid`` comes back at for ``size`` (grid, input or original)."""
    if size == "grid":
        return int(grid[0]), int(grid[1])
    if size == "input":
        return int(image.pixels.shape[0]), int(image.pixels.shape[1])
    return image.original_size


def encode_map(heatmap: np.ndarray, spec: OutputSpec, image: DecodedImage) -> EncodedMap:
    """Resize the map to the requested sizes and produce the float32 tensor, PNG and overlay asked for.

    ``heatmap``: (h, w) float32 in [0, 1] at the target layer's grid. The float32 tensor is
    little-endian, row-major. Overlays are drawn on the image at the requested size; for the conv grid
    (a few pixels wide) they are drawn at the model's input size instead, which is what a person can
    look at. Nothing is resized that no output needs (a 12-megapixel resize costs tens of ms).
    """
    resized: dict[str, np.ndarray] = {}

    def at(size: str) -> np.ndarray:
        if size not in resized:
            h, w = map_size(size, heatmap.shape, image)
            if heatmap.shape == (h, w) and heatmap.dtype == np.float32:
                resized[size] = heatmap  # the engine's map as it is: float32 in [0, 1] (the common case)
            else:
                resized[size] = render.resize_heatmap(heatmap, h, w)
        return resized[size]

    tensor, shape = b"", map_size(spec.tensor_at, heatmap.shape, image)
    if spec.tensor:
        tensor = np.ascontiguousarray(at(spec.tensor_at), dtype="<f4").tobytes()
    png = render.heatmap_png(at(spec.size)) if spec.png else b""
    over = b""
    if spec.overlay:
        drawn_at = "input" if spec.size == "grid" else spec.size
        base = image.original if drawn_at == "original" else resize(
            image.original, *map_size(drawn_at, heatmap.shape, image))
        over = render.overlay_bytes(base, at(spec.size), spec.alpha, spec.colormap, spec.overlay,
                                    spec.jpeg_quality)
    return EncodedMap(tensor_shape=shape, tensor=tensor, png=png, overlay=over)

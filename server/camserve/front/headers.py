"""What an image claims, checked before anything is decoded: encoded headers and raw tensors.

Why a module of its own: these checks read a few bytes (a header) or a shape, so the front runs them
on every image before the in-flight limit and the queue are consulted. A malformed image is then
refused for what it is (INVALID_ARGUMENT) whether or not the server is busy, and a decompression
bomb (a 40-byte PNG that claims 100 000 x 100 000 pixels) is refused without allocating anything.
``codec`` decodes what passed. Every refusal is an :class:`ImageError` (an ``INVALID_INPUT``
:class:`~camserve.records.Failure`, also a ``ValueError``) whose message says what was wrong and what
is valid.
"""

from __future__ import annotations

import base64
import struct

import numpy as np

from camserve.engine.errors import InvalidInputError  # NumPy-free, no TensorFlow
from camserve.engine.pixels import check_preprocessed  # NumPy only
from camserve.records import ErrorKind, Failure

__all__ = ["DEFAULT_MAX_PIXELS", "FORMATS", "MAX_SIDE", "ImageError", "check_size", "image_header",
           "probe_encoded", "probe_tensor"]

#: Default bound on the decoded pixel count of one image (about 25 megapixels, 75 MB as RGB).
DEFAULT_MAX_PIXELS = 25_000_000
#: No side may be longer than this, whatever the pixel budget (keeps cv2 buffers sane).
MAX_SIDE = 32_768

FORMATS = ("JPEG", "PNG", "WebP", "BMP")


class ImageError(Failure, ValueError):
    """The caller's image (encoded bytes or raw tensor) cannot be used; the message says why."""

    kind = ErrorKind.INVALID_INPUT

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (ImageError, (self.message,))


# ---------------------------------------------------------------------------------------------
# Encoded images: dimensions from the header, without decoding


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
    encoded = _base64_image(data)
    if encoded is not None:
        raise ImageError(f"the bytes are base64 text of a {encoded} image (they start with {data[:12]!r}); "
                         "send the image's bytes themselves: gRPC carries bytes, base64 is JSON's form "
                         "(KServe/Triton REST)")
    raise ImageError(f"not a supported image: the bytes start with {data[:8]!r}; "
                     f"send {', '.join(FORMATS)} (or a raw tensor)")


#: Each format's first bytes, for naming what base64 text holds.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"RIFF", "WebP"), (b"BM", "BMP"))


def _base64_image(data: bytes) -> str | None:
    """The format of the image whose base64 text (or ``data:`` URI) ``data`` starts with, else None: the
    mistake of a caller used to JSON APIs, which would otherwise read as "not a supported image"."""
    head = data[:256]
    if head.startswith(b"data:") and b"," in head:
        head = head[head.index(b",") + 1:]
    head = head[:64]
    try:
        decoded = base64.b64decode(head[:len(head) // 4 * 4], validate=True)
    except ValueError:  # binascii.Error is a ValueError
        return None
    return next((fmt for signature, fmt in _SIGNATURES if decoded.startswith(signature)), None)


def check_size(width: int, height: int, max_pixels: int, what: str = "image") -> None:
    """Refuse empty, over-long or over-budget images before any buffer is allocated."""
    if width <= 0 or height <= 0:
        raise ImageError(f"the {what} has no pixels ({width}x{height})")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ImageError(f"the {what} is {width}x{height}; each side must be at most {MAX_SIDE} pixels")
    if width * height > max_pixels:
        raise ImageError(f"the {what} is {width}x{height} = {width * height} pixels; "
                         f"at most {max_pixels} are accepted (resize it before sending)")


def probe_encoded(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) of encoded image bytes, from the header alone, checked against the limits
    (:func:`check_size`); raises :class:`ImageError` for anything ``codec.decode_encoded`` would refuse
    before decoding. Microseconds: the front runs it before the in-flight limit and the queue are
    consulted, so a malformed image is refused for what it is whether or not the server is busy."""
    fmt, width, height = image_header(data)
    check_size(width, height, max_pixels, f"{fmt} image")
    return fmt, width, height


def probe_tensor(dtype: str, shape: list[int] | tuple[int, ...], data: bytes,
                 input_shape: tuple[int, int, int], max_pixels: int = DEFAULT_MAX_PIXELS,
                 preprocessing: str = "none") -> tuple[int, int, int]:
    """Every check of ``codec.decode_tensor``, without converting anything: the image's (H, W, C)
    or raises :class:`ImageError`. The front runs it before the in-flight limit and the queue are
    consulted, like :func:`probe_encoded` (a FLOAT32 tensor's values are read here: it is at the
    model's small input size, and a non-finite value, or one the model's ``preprocessing`` cannot
    give, such as pixels 0..255 for a tf model, is as malformed as a wrong shape: see
    ``engine.pixels.check_preprocessed``)."""
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
    if dtype == "FLOAT32":
        if (h, w, c) != tuple(input_shape):
            raise ImageError(f"a FLOAT32 tensor must already be preprocessed at the model's input shape "
                             f"{list(input_shape)}, got {[h, w, c]}; send UINT8 pixels to have "
                             "the server resize them")
        values = np.frombuffer(data, dtype="<f4").reshape(h, w, c)
        if not np.isfinite(values).all():
            raise ImageError("the FLOAT32 tensor contains NaN or infinite values")
        try:
            check_preprocessed(values, preprocessing)
        except InvalidInputError as exc:
            raise ImageError(exc.message) from None
    return h, w, c

"""Hostile inputs for the fuzz suite: hypothesis strategies and hand-made image files.

Every generator here returns what a buggy or malicious caller could put on the wire; none of it knows
how the server parses images, so a refusal has to come from the server's own checks.
"""

from __future__ import annotations

import math
import struct
import zlib
from functools import cache

import numpy as np
from camserve_proto import explain_pb2
from hypothesis import strategies as st
from relkit import encode, photo

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


# ------------------------------------------------------------------------------------- files

def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with a correct CRC (so only the content is hostile, not the framing)."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_with_header(width: int, height: int, raw: bytes = b"", bit_depth: int = 8,
                    color_type: int = 2) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` over an IDAT holding ``raw`` (deflated)."""
    ihdr = struct.pack(">IIBBBBB", width & 0xFFFFFFFF, height & 0xFFFFFFFF, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw, 9))
            + png_chunk(b"IEND", b""))


@cache
def png_bomb(side: int) -> bytes:
    """A real decompression bomb: a valid ``side`` x ``side`` grayscale PNG of zeros (~side²/1000 bytes)."""
    row = b"\x00" * (side + 1)  # filter byte + pixels
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body)
            + png_chunk(b"IEND", b""))


def jpeg_with_dims(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its SOF0 frame header patched to claim ``width`` x ``height`` (data unchanged)."""
    i = jpeg.find(b"\xff\xc0")
    assert i > 0, "baseline JPEG expected"
    b = bytearray(jpeg)
    b[i + 5:i + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
    return bytes(b)


def bmp_with_dims(bmp: bytes, width: int, height: int) -> bytes:
    """``bmp`` with its BITMAPINFOHEADER width/height patched (signed 32-bit, negative = top-down)."""
    b = bytearray(bmp)
    b[18:26] = struct.pack("<ii", max(min(width, INT32[1]), INT32[0]), max(min(height, INT32[1]), INT32[0]))
    return bytes(b)


@cache
def seeds() -> dict[str, bytes]:
    """Valid encodings of real photographs in every accepted format and a few sizes."""
    out: dict[str, bytes] = {}
    for size in (1, 7, 64, 200):
        img = photo(max(size, 8), seed=size)[:size, :size]
        out[f"jpeg{size}"] = encode(img, ".jpg")
        out[f"png{size}"] = encode(img, ".png")
        out[f"bmp{size}"] = encode(img, ".bmp")
        out[f"webp{size}"] = encode(img, ".webp")
    out["png_gray"] = encode(photo(64)[..., :1].repeat(3, axis=2), ".png")
    out["jpeg_progressive"] = encode(photo(64), ".jpg", IMWRITE_JPEG_PROGRESSIVE=1)
    return out


MAGICS = [b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xc0", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
          b"BM", b"GIF89a", b"II*\x00", b""]


# ------------------------------------------------------------------------------------- strategies

@st.composite
def mutated_image(draw: st.DrawFn) -> bytes:
    """A valid encoding, then truncated, bit-flipped, spliced with noise, or its dimensions rewritten."""
    name = draw(st.sampled_from(sorted(seeds())))
    data = bytearray(seeds()[name])
    op = draw(st.sampled_from(["truncate", "flip", "insert", "overwrite", "dims", "double"]))
    if op == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif op == "flip":
        for _ in range(draw(st.integers(1, 16))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif op == "insert":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=64))
    elif op == "overwrite":
        i = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=32))
        data[i:i + len(chunk)] = chunk
    elif op == "dims":
        w = draw(st.one_of(st.integers(0, 70_000), st.sampled_from([0, 1, 65_535, 32_768, 32_769])))
        h = draw(st.one_of(st.integers(0, 70_000), st.sampled_from([0, 1, 65_535, 32_768, 32_769])))
        if name.startswith("jpeg") and b"\xff\xc0" in data:
            return jpeg_with_dims(bytes(data), w, h)
        if name.startswith("bmp"):
            sign = draw(st.sampled_from([1, -1]))
            return bmp_with_dims(bytes(data), w, sign * h)
        return png_with_header(w, h, draw(st.binary(max_size=256)))
    else:
        data = data + data
    return bytes(data)


@st.composite
def junk_image(draw: st.DrawFn) -> bytes:
    """Random bytes, often behind a real format's magic number, so the parser goes past the sniffing."""
    return draw(st.sampled_from(MAGICS)) + draw(st.binary(max_size=2048))


@st.composite
def crafted_png(draw: st.DrawFn) -> bytes:
    """Structurally valid PNGs with hostile headers: huge/zero sides, odd bit depths and colour types."""
    w = draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 9000)))
    h = draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 9000)))
    depth = draw(st.sampled_from([1, 2, 4, 8, 16, 0, 3, 255]))
    ctype = draw(st.sampled_from([0, 2, 3, 4, 6, 1, 7, 255]))
    raw = draw(st.binary(max_size=512))
    return png_with_header(w, h, raw, depth, ctype)


def _tensor_bytes(draw: st.DrawFn, dtype: int, shape: list[int]) -> bytes:
    itemsize = 4 if dtype == explain_pb2.FLOAT32 else 1
    n = math.prod(shape) if shape and all(s >= 0 for s in shape) else -1
    mode = draw(st.sampled_from(["exact", "exact", "short", "long", "random"]))
    if 0 <= n * itemsize <= 300_000 and mode != "random":
        delta = {"exact": 0, "short": -draw(st.integers(1, 7)), "long": draw(st.integers(1, 7))}[mode]
        size = n * itemsize + delta
        size = max(size, 0)
        if dtype == explain_pb2.FLOAT32 and mode == "exact":
            vals = draw(st.sampled_from(["uniform", "special", "huge"]))
            rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
            arr = rng.uniform(-3, 3, n).astype("<f4")
            if vals == "special":
                idx = rng.integers(0, max(n, 1), max(1, n // 50)) if n else []
                arr[idx] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype="<f4"), len(idx))
            elif vals == "huge":
                arr *= np.float32(1e37)
            return arr.tobytes()
        return np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    return draw(st.binary(max_size=1024))


@st.composite
def tensor_image(draw: st.DrawFn, input_shape: tuple[int, int, int]) -> explain_pb2.Tensor:
    """Raw tensors: valid and near-valid shapes, wrong dtypes, wrong byte counts, NaN/Inf floats."""
    H, W, C = input_shape
    known = [explain_pb2.UINT8, explain_pb2.FLOAT32, explain_pb2.DTYPE_UNSPECIFIED]
    dtype = draw(st.one_of(st.sampled_from(known), st.integers(3, INT32[1])))
    shape = draw(st.one_of(
        st.just([H, W, C]),
        st.just([1, H, W, C]),
        st.tuples(st.integers(0, 300), st.integers(0, 300), st.sampled_from([0, 1, 2, 3, 4])).map(list),
        st.tuples(st.integers(1, 4), st.just(H), st.just(W), st.just(C)).map(list),
        st.lists(st.integers(*INT64), max_size=7),
        st.lists(st.sampled_from([0, 1, -1, H, W, C, 2**31, 2**62]), max_size=5),
    ))
    return explain_pb2.Tensor(dtype=dtype, shape=shape, data=_tensor_bytes(draw, dtype, shape))


@st.composite
def float_pixels(draw: st.DrawFn, input_shape: tuple[int, int, int]) -> explain_pb2.Tensor:
    """FLOAT32 at exactly the model's input size, with NaN, +-Inf, huge and subnormal values mixed in."""
    n = math.prod(input_shape)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arr = rng.uniform(-1, 1, n).astype("<f4")
    specials = np.array([np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, 0.0], dtype="<f4")
    frac = draw(st.sampled_from([0.0, 0.001, 0.1, 1.0]))
    k = int(frac * n)
    if k:
        arr[rng.choice(n, k, replace=False)] = rng.choice(specials, k)
    return explain_pb2.Tensor(dtype=explain_pb2.FLOAT32, shape=list(input_shape), data=arr.tobytes())


def hostile_text() -> st.SearchStrategy[str]:
    """Names that are empty, long, unicode, path-like or control-character laden."""
    return st.one_of(st.text(max_size=40), st.sampled_from(["", "/", "../../etc/passwd", "a/b/c", "\x00", " ",
                                                            "x" * 5000, "demo/", "%s%n", "demo\n"]))


@st.composite
def request_fields(draw: st.DrawFn, image: bytes, models: list[str],
                   layers: list[str]) -> explain_pb2.ExplainRequest:
    """A decodable image with hostile everything-else: method, class, top_k, model, layer, output."""
    req = explain_pb2.ExplainRequest(image=explain_pb2.Image(encoded=image))
    # Mostly valid model/version/method so that the other fields reach their own checks.
    req.model = draw(st.one_of(st.sampled_from([*models, ""]), st.sampled_from([*models, ""]),
                               st.sampled_from([*models, ""]), hostile_text()))
    req.model_version = draw(st.one_of(st.just(0), st.just(0), st.just(0), st.sampled_from([1, 2, -1]),
                                       st.integers(*INT64)))
    req.method = draw(st.one_of(st.integers(0, 7), st.integers(0, 7), st.integers(0, 7),
                                st.integers(8, INT32[1]), st.integers(INT32[0], -1)))
    if draw(st.booleans()):
        req.class_index = draw(st.one_of(st.integers(-3, 12), st.integers(*INT32)))
    req.top_k = draw(st.one_of(st.integers(-2, 12), st.integers(*INT32)))
    req.target_layer = draw(st.one_of(st.sampled_from(["", *layers]), hostile_text()))
    o = req.output
    o.size = draw(st.one_of(st.integers(0, 3), st.integers(4, INT32[1]), st.just(-1)))
    o.omit_tensor = draw(st.booleans())
    o.heatmap_png = draw(st.booleans())
    o.overlay = draw(st.one_of(st.integers(0, 2), st.integers(3, 1000), st.just(-5)))
    o.overlay_alpha = draw(st.floats(width=32, allow_nan=True, allow_infinity=True))
    o.colormap = draw(st.one_of(st.integers(0, 4), st.integers(5, INT32[1])))
    o.jpeg_quality = draw(st.one_of(st.integers(-1, 101), st.integers(*INT32)))
    req.request_id = draw(hostile_text())
    return req

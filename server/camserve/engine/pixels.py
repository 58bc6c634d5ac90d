"""Pixels and the preprocessing modes in NumPy alone (no Keras, so the front end may use it): the
ImageNet statistics, the NumPy twin of the step's preprocessing (``preprocess``), and its inverse, the
pixels a float image preprocessed for a model came from, to draw overlays on.

Modes (as ``keras.applications.imagenet_utils.preprocess_input``): caffe = RGB -> BGR, then minus the
ImageNet BGR means; tf = x / 127.5 - 1; torch = (x / 255 - ImageNet RGB means) / their stds; none.

Float images are taken as already preprocessed, so ``check_preprocessed`` refuses the values a mode
cannot give (the most common mistake: float pixels 0..255 from ``img_to_array`` sent to a model whose
preprocessing is tf, [-1, 1]); the library and the server both run it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from camserve.engine.errors import InvalidInputError
from camserve.vocabulary import OWN_PREPROCESSOR

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess_numpy(images: np.ndarray, mode: str) -> np.ndarray:
    """float32 model input from uint8 pixels (..., H, W, C), as the step computes it."""
    x = np.asarray(images, dtype=np.float32)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x / 255.0 - TORCH_MEAN) / TORCH_STD
    if mode == "caffe":
        return x[..., ::-1] - CAFFE_MEAN_BGR
    return x


#: How far outside its exact range preprocessed input may stray, as a fraction of that range: resampling
#: a preprocessed image (bicubic, Lanczos) overshoots its extremes by up to about a tenth of a step.
RANGE_SLACK = 0.125


def preprocessed_range(mode: str, channels: int, slack: float = RANGE_SLACK
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """(low, high) per channel, in the model's channel order (caffe's BGR), of what ``mode`` gives
    from pixels 0..255, each widened by ``slack`` of its span; None when any float can be input
    ("none", a model's own preprocessor, or a channel count the mode does not apply to)."""
    if mode not in ("tf", "torch", "caffe") or (mode != "tf" and channels != 3):
        return None
    lo = preprocess_numpy(np.zeros((1, channels), np.float32), mode)[0].astype(np.float64)
    hi = preprocess_numpy(np.full((1, channels), 255, np.float32), mode)[0].astype(np.float64)
    return lo - slack * (hi - lo), hi + slack * (hi - lo)


def check_preprocessed(x: np.ndarray, mode: str) -> None:
    """Raise ``InvalidInputError`` when float images ``x`` (..., H, W, C), which are taken as input
    already preprocessed with ``mode``, hold values that preprocessing cannot give (beyond
    :data:`RANGE_SLACK`).

    tf gives [-1, 1] and torch about [-2.1, 2.6], so float pixels 0..255 (or input preprocessed for
    another mode) are out of range on any image that is not nearly black: they are refused, saying
    what to send, never guessed at (a guess would be silently wrong for an image whose values merely
    strayed, and a refusal costs the caller one cast). caffe gives [-124, 151] per channel (pixels
    minus the ImageNet means), which overlaps pixels 0..255: pixels of a bright image are refused,
    but a dark image's pixels (every value below about 150) are indistinguishable from preprocessed
    input and pass. Send uint8 pixels to avoid the question: the step preprocesses them.
    """
    bounds = preprocessed_range(mode, x.shape[-1])
    if bounds is None or x.size == 0:
        return
    flat = x.reshape(-1, x.shape[-1])
    got_lo, got_hi = flat.min(axis=0), flat.max(axis=0)
    if (got_lo >= bounds[0]).all() and (got_hi <= bounds[1]).all():
        return
    exact_lo, exact_hi = preprocessed_range(mode, x.shape[-1], slack=0.0)  # type: ignore[misc]
    low, high = float(got_lo.min()), float(got_hi.max())
    looks = ("it looks like pixels 0..255" if low >= -0.5 and high <= 255.5
             else "neither pixels 0..255 nor input preprocessed this way hold that")
    raise InvalidInputError(
        f"float input is taken as already preprocessed (here {mode!r}, which gives values "
        f"{exact_lo.min():.4g}..{exact_hi.max():.4g}), but this holds {low:.4g}..{high:.4g}: {looks}. "
        f"Send pixels as uint8 (a UINT8 tensor on the wire; from floats, np.clip(x, 0, 255).round()"
        f".astype(np.uint8)) and the model's {mode!r} preprocessing runs on them, or preprocess them "
        f"first ({PREPROCESS_FORMULA[mode]})")


#: Each mode's arithmetic in words, for messages.
PREPROCESS_FORMULA = {
    "tf": "x / 127.5 - 1",
    "torch": "(x / 255 - ImageNet RGB means) / ImageNet RGB stds",
    "caffe": "RGB -> BGR, then minus the ImageNet BGR means",
}


def display_pixels(x: np.ndarray, mode: str) -> np.ndarray:
    """uint8 pixels (H, W, C) of a float image ``x`` preprocessed with ``mode``: the inverse of
    ``preprocess_numpy`` (caffe's BGR back to RGB), rounded and clipped to 0..255. For "none", whose
    scale only the model knows, a min-max stretch to 0..255; for a model's own preprocessor
    (``own:<class>``), which takes pixels, the values as they are."""
    x = np.asarray(x, dtype=np.float64)
    if mode.startswith(f"{OWN_PREPROCESSOR}:"):
        pixels = x
    elif mode == "tf":
        pixels = (x + 1.0) * 127.5
    elif mode == "torch":
        pixels = (x * TORCH_STD + TORCH_MEAN) * 255.0
    elif mode == "caffe":
        pixels = (x + CAFFE_MEAN_BGR)[..., ::-1]
    else:
        lo, hi = float(x.min()), float(x.max())
        pixels = np.zeros_like(x) if hi <= lo else (x - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def image_array(images: Any) -> np.ndarray:
    """``images`` (an array, a tensor, or a list of images) as one NumPy array.

    Raises ``InvalidInputError`` when a list holds images of different shapes (NumPy alone says
    "inhomogeneous shape"), naming them: a batch is of one size, the model's.
    """
    try:
        return np.asarray(images)
    except ValueError as exc:
        try:
            shapes = sorted({tuple(np.shape(im)) for im in images}, key=str)
        except Exception:  # whatever the object is, NumPy's own reason is the one left to give
            raise InvalidInputError(f"images cannot be read as an array: {exc}") from exc
        raise InvalidInputError(
            f"images of different shapes {shapes} cannot form one batch: resize them to the model's "
            "input size first"
        ) from exc

"""Input preprocessing applied inside the compiled step (backend-neutral, keras.ops).

Images travel as uint8 RGB (4x fewer bytes than float32); the step converts them on the device with the
same arithmetic as ``keras.applications.imagenet_utils.preprocess_input``:
- caffe: RGB -> BGR, then subtract the ImageNet BGR means (no scaling);
- tf: x / 127.5 - 1;
- torch: x / 255, then subtract the ImageNet RGB means and divide by their std;
- none: cast only.
Float inputs are taken as already preprocessed and pass through unchanged (``pixels.check_preprocessed``
refuses values the mode cannot give before they get here). The NumPy twin, its inverse and that check
live in ``pixels`` (no Keras there, for the front end).
"""

from __future__ import annotations

from typing import Any

import keras

from camserve.engine.errors import InvalidInputError
from camserve.engine.pixels import CAFFE_MEAN_BGR, TORCH_MEAN, TORCH_STD, preprocess_numpy
from camserve.vocabulary import PREPROCESSING

__all__ = ["RGB_MODES", "check_channels", "check_mode", "preprocess", "preprocess_numpy"]


def check_mode(mode: str) -> str:
    """Validate a preprocessing name."""
    if mode not in PREPROCESSING:
        raise InvalidInputError(f"unknown preprocessing {mode!r}; valid: {', '.join(PREPROCESSING)}")
    return mode


#: Modes whose arithmetic is per RGB channel (ImageNet means and stds): they need 3-channel images.
RGB_MODES = ("caffe", "torch")


def check_channels(mode: str, channels: int) -> None:
    """Raise ``InvalidInputError`` when ``mode`` cannot apply to images of ``channels`` channels.

    caffe and torch subtract (and divide by) one ImageNet value per RGB channel, so they need 3
    channels; tf (x / 127.5 - 1) and none apply to any count.
    """
    if mode in RGB_MODES and channels != 3:
        raise InvalidInputError(
            f"preprocessing {mode!r} applies ImageNet per-channel RGB statistics and needs 3 channels, "
            f"but the model takes {channels}; use 'tf' (x / 127.5 - 1) or 'none' (preprocess yourself, "
            "or inside the model)"
        )


def preprocess(images: Any, mode: str, *, raw: bool) -> Any:
    """float32 model input from ``images`` (B, H, W, C); ``raw`` = uint8 pixels that need ``mode``."""
    ops = keras.ops
    x = ops.cast(images, "float32")
    if not raw or mode == "none":
        return x
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x / 255.0 - TORCH_MEAN) / TORCH_STD
    if mode == "caffe":
        return ops.flip(x, axis=-1) - CAFFE_MEAN_BGR
    raise InvalidInputError(f"unknown preprocessing {mode!r}; valid: {', '.join(PREPROCESSING)}")

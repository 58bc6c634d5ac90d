"""Pixels and the preprocessing modes in NumPy alone (no Keras, so the front end may use it): the
ImageNet statistics, the NumPy twin of the step's preprocessing (``preprocess``), and its inverse, the
pixels a float image preprocessed for a model came from, to draw overlays on.

Modes (as ``keras.applications.imagenet_utils.preprocess_input``): caffe = RGB -> BGR, then minus the
ImageNet BGR means; tf = x / 127.5 - 1; torch = (x / 255 - ImageNet RGB means) / their stds; none.
"""

from __future__ import annotations

import numpy as np

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


def display_pixels(x: np.ndarray, mode: str) -> np.ndarray:
    """uint8 pixels (H, W, C) of a float image ``x`` preprocessed with ``mode``: the inverse of
    ``preprocess_numpy`` (caffe's BGR back to RGB), rounded and clipped to 0..255. For "none", whose
    scale only the model knows, a min-max stretch to 0..255."""
    x = np.asarray(x, dtype=np.float64)
    if mode == "tf":
        pixels = (x + 1.0) * 127.5
    elif mode == "torch":
        pixels = (x * TORCH_STD + TORCH_MEAN) * 255.0
    elif mode == "caffe":
        pixels = (x + CAFFE_MEAN_BGR)[..., ::-1]
    else:
        lo, hi = float(x.min()), float(x.max())
        pixels = np.zeros_like(x) if hi <= lo else (x - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)

"""Small models for the engine tests: fixed-weight toys and briefly trained digit classifiers.

Trained models use scikit-learn's digits (shipped with the package, nothing downloaded) upscaled to
24x24 RGB, so that the maps are not degenerate; each trains in about 10-15 CPU-s, once per test run:
the first test process that needs one trains it and saves it where the run's other pytest-xdist
processes load it (training is deterministic, so a loaded model is the model they would have trained).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import keras
import numpy as np
import pytest

SIZE = 24


def digits_rgb(n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as (N, 24, 24, 3) float32 in [-1, 1] ('tf' preprocessing) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = d.images[:n] if n else d.images
    up = np.stack(
        [
            cv2.resize(im.astype(np.float32) / 16.0, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
            for im in imgs
        ]
    )
    x = np.repeat(up[..., None], 3, axis=-1) * 2.0 - 1.0
    return x.astype(np.float32), d.target[: len(imgs)].astype(np.int32)


def _plain(inp: keras.KerasTensor) -> keras.KerasTensor:
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="target")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.layers.Dense(10, activation="softmax")(x)


def _residual(inp: keras.KerasTensor) -> keras.KerasTensor:
    x = keras.layers.Conv2D(12, 3, padding="same", use_bias=False)(inp)
    x = keras.layers.BatchNormalization(momentum=0.8)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    y = keras.layers.Conv2D(12, 3, padding="same", use_bias=False)(x)
    y = keras.layers.BatchNormalization(momentum=0.8)(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(12, 3, padding="same", use_bias=False)(y)
    y = keras.layers.BatchNormalization(momentum=0.8)(y)
    x = keras.layers.Add(name="target")([x, y])
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    return keras.layers.Dense(10, activation="softmax")(x)


def _flatten_fc(inp: keras.KerasTensor) -> keras.KerasTensor:
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu", name="target")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    return keras.layers.Dense(10, activation="softmax")(x)


ARCHITECTURES = {"plain_gap": _plain, "residual_bn": _residual, "flatten_fc": _flatten_fc}


def train(name: str, epochs: int = 10) -> keras.Model:
    """Build and briefly train one architecture on the digits (deterministic seeds)."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inp, ARCHITECTURES[name](inp), name=name)
    x, y = digits_rgb()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x[:1500], y[:1500], epochs=epochs, batch_size=64, verbose=0)
    return model


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every test process of this pytest run shares (pytest-xdist workers' base temp
    folders are siblings under one per-run folder; without xdist, the run's own base temp)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def trained_once(name: str, folder: Path) -> keras.Model:
    """``train(name)`` once per ``folder``: the first caller trains and saves, under an exclusive
    lock on ``name``.lock, and every later caller (another process included) loads the saved file."""
    path = folder / f"trained-{name}.keras"
    with open(folder / f"trained-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if path.is_file():
            return keras.saving.load_model(path, compile=False)
        model = train(name)
        model.save(path.with_suffix(".tmp.keras"))
        path.with_suffix(".tmp.keras").rename(path)  # a crash never leaves a half-written model
        return model


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, keras.Model]:
    """The three trained architectures (trained lazily, once per run: ``trained_once``)."""
    folder = run_folder(tmp_path_factory)

    class Lazy(dict):
        def __missing__(self, key: str) -> keras.Model:
            self[key] = trained_once(key, folder)
            return self[key]

    return Lazy()


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Held-out digits (not used for training)."""
    x, y = digits_rgb()
    return x[1500:], y[1500:]

"""Small models shared by the TensorFlow side (pytest process) and the JAX side (subprocess).

Backend-neutral: only ``keras`` is imported, so the same builder gives the same architecture on
either backend; weights are random but seeded, with non-trivial BatchNorm statistics.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

L = keras.layers


def small_bn_model(seed: int = 3) -> keras.Model:
    """A residual net with BatchNorm (non-trivial moving statistics) and Dropout, random weights."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    y = keras.layers.Conv2D(8, 3, padding="same")(x)
    x = keras.layers.Add(name="target")([x, y])
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.5)(x)
    model = keras.Model(inp, keras.layers.Dense(6, activation="softmax")(x), name="residual_bn")
    bn = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    rng = np.random.default_rng(seed)
    gamma, beta, _, _ = bn.get_weights()
    bn.set_weights([gamma, beta, rng.normal(0, 0.3, 8), rng.uniform(0.5, 2.0, 8)])
    return model


def _chain(name: str, *layers: Any) -> keras.Model:
    """A Functional model applying ``layers`` in order to a (16, 16, 3) input.

    The callers set the seed before they construct the layers: an unseeded Keras initializer draws its
    seed when its layer is constructed, so the weights depend on the seed and that order.
    """
    inp = keras.Input((16, 16, 3))
    x = inp
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, x, name=name)


def small_gap_model(seed: int = 11) -> keras.Model:
    """conv -> pool -> conv("target") -> GAP -> Dense(softmax): the CAM-able shape."""
    keras.utils.set_random_seed(seed)
    return _chain("gap", L.Conv2D(8, 3, padding="same", activation="relu"), L.MaxPooling2D(),
                  L.Conv2D(16, 3, padding="same", activation="relu", name="target"),
                  L.GlobalAveragePooling2D(), L.Dense(6, activation="softmax"))


def flatten_fc_model(seed: int = 13) -> keras.Model:
    """A Flatten -> Dense head (no CAM) with a depthwise conv: Grad-CAM family only."""
    keras.utils.set_random_seed(seed)
    return _chain("flatten_fc", L.Conv2D(8, 3, padding="same", activation="relu"),
                  L.DepthwiseConv2D(3, padding="same", activation="relu"),
                  L.Conv2D(8, 1, activation="relu", name="target"), L.MaxPooling2D(), L.Flatten(),
                  L.Dense(16, activation="relu"), L.Dense(6, activation="softmax"))


def flat_and_nested(seed: int = 5) -> tuple[keras.Model, keras.Model]:
    """A flat Functional model and a ``Sequential([base, GAP, Dense])`` twin with the same weights."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3))
    c1 = keras.layers.Conv2D(6, 3, activation="relu", name="c1")
    c2 = keras.layers.Conv2D(8, 3, activation="relu", name="c2")
    base = keras.Model(inp, c2(c1(inp)), name="base")
    head = keras.layers.Dense(5, activation="softmax", name="head")
    nested = keras.Sequential([base, keras.layers.GlobalAveragePooling2D(), head], name="outer")
    nested.build((None, 12, 12, 3))
    f_in = keras.Input((12, 12, 3))
    f1 = keras.layers.Conv2D(6, 3, activation="relu", name="c1")
    f2 = keras.layers.Conv2D(8, 3, activation="relu", name="c2")
    fd = keras.layers.Dense(5, activation="softmax", name="head")
    flat = keras.Model(f_in, fd(keras.layers.GlobalAveragePooling2D()(f2(f1(f_in)))), name="flat")
    for src, dst in ((c1, f1), (c2, f2), (head, fd)):
        dst.set_weights(src.get_weights())
    return flat, nested


def policy_copy(model: keras.Model, policy: str) -> keras.Model:
    """The same layers and weights under another dtype policy (e.g. mixed_bfloat16)."""
    inp = keras.Input(model.input_shape[1:])
    x = inp
    for layer in model.layers[1:]:
        cfg = layer.get_config()
        cfg["dtype"] = policy
        x = type(layer).from_config(cfg)(x)
    out = keras.Model(inp, x)
    for src, dst in zip(model.layers[1:], out.layers[1:], strict=True):
        dst.set_weights(src.get_weights())
    return out


def binary_model(seed: int = 17) -> keras.Model:
    """One sigmoid unit after conv -> GAP: a binary logit (two classes in the engine)."""
    keras.utils.set_random_seed(seed)
    return _chain("binary", L.Conv2D(6, 3, activation="relu", name="target"), L.GlobalAveragePooling2D(),
                  L.Dense(1, activation="sigmoid"))

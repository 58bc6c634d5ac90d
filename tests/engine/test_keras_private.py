"""The Keras internals the engine relies on (``camserve.engine.keras_private``), checked directly: a
Keras upgrade that changes them fails here, loudly, rather than giving wrong maps."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from camserve.engine.keras_private import call_inference, children, intercept, ops_node_kind, walk


class Block(keras.layers.Layer):
    """A custom layer owning sublayers in a list, called from its own call() (like keras-hub's encoders)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.convs = [keras.layers.Conv2D(3, 3, padding="same", name=f"inner{i}") for i in range(2)]

    def call(self, x):
        for conv in self.convs:
            x = conv(x)
        return x + 1.0


class Sub(keras.Model):
    """A subclassed model whose call() chains layers and raw ops."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.block = Block(name="block")
        self.dense = keras.layers.Dense(2, name="dense")

    def call(self, x):
        return self.dense(keras.ops.mean(self.block(x), axis=(1, 2)))


def _functional() -> keras.Model:
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.ops.mean(x, axis=(1, 2))
    return keras.Model(inp, keras.layers.Dense(2, name="dense")(x))


def test_children_and_walk() -> None:
    f = _functional()
    assert [type(o).__name__ for o in children(f)] == ["Conv2D", "BatchNormalization", "Mean", "Dense"]
    seq = keras.Sequential([keras.layers.Conv2D(2, 3, name="c"), keras.layers.Flatten(name="f")])
    assert [o.name for o in children(seq)] == ["c", "f"]
    seq.build((None, 5, 5, 1))  # a built Sequential has an internal Functional: not listed
    assert [o.name for o in children(seq)] == ["c", "f"]
    sub = Sub(name="sub")
    assert [o.name for o in children(sub)] == ["block", "dense"]
    assert [o.name for o in walk(sub)] == ["block", "inner0", "inner1", "dense"]
    outer = keras.Sequential([f, keras.layers.Dense(1, name="top")])
    assert [getattr(o, "name", "") for o in walk(outer)][-1] == "top" and len(walk(outer)) == 6


def test_intercept_sees_every_call_and_restores() -> None:
    sub = Sub(name="sub")
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 1)).astype(np.float32)
    sub(x)  # built first: building traces call() symbolically, which the wrappers would see too
    seen: list[str] = []

    def make(op, original):
        def wrapper(*args, **kwargs):
            seen.append(op.name)
            out = original(*args, **kwargs)
            return out * 0.0 if op.name == "inner1" else out

        return wrapper

    with intercept(walk(sub), make):
        y = keras.ops.convert_to_numpy(sub(x))
    # every call, in call order, each through its instance attribute
    assert seen == ["block", "inner0", "inner1", "dense"]
    dense_w, dense_b = sub.dense.get_weights()
    np.testing.assert_allclose(y, np.broadcast_to(np.ones(3) @ dense_w + dense_b, (2, 2)), atol=1e-5)
    assert all("call" not in vars(op) for op in walk(sub)), "the wrappers must be removed on exit"
    # and the model computes as before once restored
    assert not np.allclose(keras.ops.convert_to_numpy(sub(x)), y)

    with pytest.raises(RuntimeError, match="boom"), intercept(walk(sub), lambda op, orig: _raise):
        sub(x)
    assert all("call" not in vars(op) for op in walk(sub))


def _raise(*args, **kwargs):
    raise RuntimeError("boom")


def test_intercept_functional_nodes_and_nested() -> None:
    f = _functional()
    outer = keras.Sequential([f, keras.layers.Dense(1, name="top")])
    x = np.zeros((1, 6, 6, 2), np.float32)
    seen: list[str] = []

    def make(op, original):
        def wrapper(*args, **kwargs):
            seen.append(type(op).__name__)
            return original(*args, **kwargs)

        return wrapper

    with intercept(walk(outer), make):
        outer(x)
    assert seen == ["Functional", "Conv2D", "BatchNormalization", "Mean", "Dense", "Dense"]


def test_ops_node_kind() -> None:
    inp = keras.Input((4,))
    ops = [
        keras.ops.softmax,
        keras.ops.log_softmax,
        keras.ops.sigmoid,
        lambda t: keras.ops.cast(t, "float16"),
        lambda t: keras.ops.reshape(t, (-1, 2, 2)),
        lambda t: keras.ops.exp(t),
    ]
    kinds = []
    for fn in ops:
        m = keras.Model(inp, fn(inp))
        kinds.append(ops_node_kind(m.operations[-1]))
    assert kinds == [("softmax", -1), ("log_softmax", -1), ("sigmoid", -1), ("pass", 0), ("pass", 0), None]


def test_call_inference_uses_moving_statistics() -> None:
    bn = keras.layers.BatchNormalization()
    bn.build((None, 3))
    bn.set_weights([np.full(3, 2.0), np.full(3, 0.5), np.full(3, 0.1), np.full(3, 4.0)])
    x = np.ones((2, 3), np.float32)
    out = keras.ops.convert_to_numpy(call_inference(bn, (x,), {}))
    np.testing.assert_allclose(out, 2.0 * (1 - 0.1) / np.sqrt(4.0 + bn.epsilon) + 0.5, rtol=1e-5)

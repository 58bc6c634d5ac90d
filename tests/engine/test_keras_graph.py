"""The private Keras APIs the engine relies on, checked directly: a Keras upgrade that changes them
fails here, loudly, rather than giving wrong maps."""

from __future__ import annotations

import keras
import numpy as np
from camserve.engine.keras_graph import call_inference, functional_of, graph_nodes, run_functional


def _model() -> keras.Model:
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dropout(0.9, name="drop")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, keras.layers.Dense(2, name="dense")(x))


def test_functional_of() -> None:
    m = _model()
    assert functional_of(m) is m
    seq = keras.Sequential([keras.layers.Dense(2)])
    assert functional_of(seq) is None  # never called: no graph yet
    seq.build((None, 3))
    assert functional_of(seq) is not None and hasattr(functional_of(seq), "_run_through_graph")


def test_graph_nodes_in_execution_order() -> None:
    m = _model()
    nodes = graph_nodes(m)
    assert [n.operation.name for n in nodes] == ["conv", "bn", "drop", "gap", "dense"]
    assert nodes[1].inputs[0] is nodes[0].outputs[0]
    assert tuple(nodes[0].outputs[0].shape) == (None, 4, 4, 3)


def test_run_functional_hooks_every_layer_and_matches_predict() -> None:
    m = _model()
    m.get_layer("bn").set_weights([np.full(3, 2.0), np.full(3, 0.5), np.full(3, 0.1), np.full(3, 4.0)])
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype(np.float32)
    seen: list[str] = []

    def call(op, args, kwargs):
        seen.append(op.name)
        return call_inference(op, args, kwargs)

    out = keras.ops.convert_to_numpy(run_functional(m, [x], call))
    assert seen == ["conv", "bn", "drop", "gap", "dense"]
    # inference mode: BatchNorm uses moving statistics and Dropout is off, as predict does
    np.testing.assert_allclose(out, m.predict(x, verbose=0), rtol=1e-5, atol=1e-6)

    def replace(op, args, kwargs):
        y = call_inference(op, args, kwargs)
        return y * 0.0 if op.name == "gap" else y

    out0 = keras.ops.convert_to_numpy(run_functional(m, [x], replace))
    np.testing.assert_allclose(
        out0, np.broadcast_to(m.get_layer("dense").get_weights()[1], (2, 2)), atol=1e-6
    )

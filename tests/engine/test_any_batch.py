"""TF graph mode: one trace runs every batch size and a batch runs unpadded (``Step.any_batch``);
XLA pads to its buckets; a model whose call needs a static batch size falls back to one trace per
bucket in graph mode too. Small random-weight models: what is checked is shapes, traces and equality
between modes, not map quality."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from camserve.engine import Explainer
from camserve.records import ItemSpec
from keras import layers, ops

SIZE = 12


class Rows:
    """The step, noting how many rows each call gives it."""

    def __init__(self, step: Any) -> None:
        self.step, self.any_batch, self.rows = step, step.any_batch, []

    def __call__(self, images: np.ndarray, *rest: Any) -> Any:
        self.rows.append(len(images))
        return self.step(images, *rest)

    def trace_count(self) -> int:
        return self.step.trace_count()


def _functional() -> keras.Model:
    keras.utils.set_random_seed(0)
    x = keras.Input((SIZE, SIZE, 3))
    h = layers.Conv2D(6, 3, activation="relu", name="target")(x)
    return keras.Model(x, layers.Dense(4)(layers.GlobalAveragePooling2D()(h)))


class StaticBatch(keras.Model):
    """User code that reads the batch size from the tensor: fails on an unknown batch dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = layers.Conv2D(6, 3, activation="relu")
        self.fc = layers.Dense(4)

    def call(self, x: Any) -> Any:
        h = ops.mean(self.conv(x), axis=(1, 2))
        return self.fc(ops.reshape(h, (h.shape[0], -1)))


def _explain(model: keras.Model, mode: str, n: int) -> tuple[Rows, list]:
    e = Explainer(model, None, preprocessing="none", compile_mode=mode, max_batch_size=4,
                  input_shape=(SIZE, SIZE, 3))
    e.step = spy = Rows(e.step)
    x = np.random.default_rng(1).uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)
    return spy, e.explain_batch(x, [ItemSpec("gradcam")] * n)


def _maps(results: list) -> np.ndarray:
    return np.stack([m.heatmap for r in results for m in r.maps])


def test_graph_mode_runs_a_batch_unpadded_and_xla_pads_it_to_its_bucket() -> None:
    """3 images compute 3 rows in graph mode (one trace), 4 under XLA (bucket 4); same maps."""
    graph, a = _explain(_functional(), "graph", 3)
    xla, b = _explain(_functional(), "xla", 3)
    assert (graph.any_batch, graph.rows, graph.trace_count()) == (True, [3], 1)
    assert (xla.any_batch, xla.rows) == (False, [4])
    np.testing.assert_allclose(_maps(a), _maps(b), atol=1e-5)


def test_a_call_that_needs_a_static_batch_gets_a_trace_per_bucket_in_graph_mode() -> None:
    """``ops.reshape(h, (h.shape[0], -1))`` cannot trace with the batch unknown: graph mode pads to
    buckets and traces each, as XLA does, with the same maps as XLA's."""
    model = StaticBatch()
    model(np.zeros((1, SIZE, SIZE, 3), np.float32))
    graph, a = _explain(model, "graph", 3)
    xla, b = _explain(model, "xla", 3)
    assert (graph.any_batch, graph.rows, xla.rows) == (False, [4], [4])
    np.testing.assert_allclose(_maps(a), _maps(b), atol=1e-5)

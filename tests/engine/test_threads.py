"""The library used from several threads at once (a threaded web server, a thread pool): the engine
patches a model's layers while it records and traces them, and those patches are attributes every
thread sees. Another thread's own calls of the model meanwhile must get the model's result (and
stay out of the engine's recording), and two engine threads must not interleave their patches.

The interleaving is made deterministic: a layer of the model runs a hook while the engine is inside
its forward pass (``Classifier.call`` on the main thread), and the hook runs the other thread then.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from camserve import GradCAM
from camserve.engine.keras_private import exclusive


class Classifier(keras.layers.Layer):
    """Dense + softmax written as one custom layer whose ``call`` runs ``hook`` between the two, on
    the main thread only: at that moment the engine has every layer's call patched and, recording
    or tracing the head, this layer's softmax activation set to linear."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.softmax
        self.hook: Callable[[], None] | None = None

    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], self.units), initializer="glorot_uniform")

    def call(self, x):
        z = keras.ops.matmul(x, self.kernel)
        if self.hook is not None and threading.current_thread() is threading.main_thread():
            self.hook()
        return self.activation(z)


def _model() -> tuple[keras.Model, Classifier]:
    keras.utils.set_random_seed(21)
    inp = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inp)
    b = keras.layers.Conv2D(5, 3, activation="relu", name="c2")(a)
    head = Classifier(3, name="head")
    return keras.Model(inp, head(keras.layers.GlobalAveragePooling2D()(b))), head


def _in_thread(fn: Callable[[], object]) -> object:
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_other_threads_get_the_models_own_result_while_the_engine_patches_it() -> None:
    model, head = _model()
    x = np.random.default_rng(22).normal(size=(2, 8, 8, 3)).astype(np.float32)
    want = keras.ops.convert_to_numpy(model(x))  # softmax probabilities
    seen: list[np.ndarray] = []
    locked_out: list[bool] = []

    def other_thread_runs_the_model() -> None:
        seen.append(_in_thread(lambda: keras.ops.convert_to_numpy(model(x))))
        # and another thread's engine work waits: patches of two threads never interleave
        locked_out.append(not _in_thread(lambda: exclusive().acquire(blocking=False)))

    head.hook = other_thread_runs_the_model
    gradcam = GradCAM(model, "c1")  # records the model (eager run): the hook fires inside it
    assert gradcam.target_layer == "c1"
    maps = gradcam.compute_heatmaps(x, class_idx=2)  # traces the step: fires again
    head.hook = None
    assert len(seen) >= 2  # once while recording, once while tracing
    for got in seen:  # the layers' own calls, the softmax included (not the engine's linear head)
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert all(locked_out)
    assert not any("call" in vars(layer) for layer in model.layers)  # every patch undone
    assert head.activation is keras.activations.softmax

    with tf.GradientTape() as tape:  # the reference: Grad-CAM of class 2's logit at c1, by hand
        a = model.get_layer("c1")(x)
        tape.watch(a)
        z = keras.ops.matmul(keras.ops.mean(model.get_layer("c2")(a), axis=(1, 2)), head.kernel)[:, 2]
    g = tape.gradient(z, a).numpy()
    raw = np.maximum(np.einsum("bijc,bc->bij", a.numpy(), g.mean(axis=(1, 2))), 0)
    lo, hi = raw.min(axis=(1, 2), keepdims=True), raw.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(maps, (raw - lo) / (hi - lo), atol=1e-5)


def test_two_threads_explaining_one_model_at_once() -> None:
    """Two GradCAMs on one model, first used from two threads at the same moment (each records and
    traces the model): each gets its own layer's map, and the model is left unpatched."""
    model, _ = _model()
    x = np.random.default_rng(23).normal(size=(8, 8, 3)).astype(np.float32)
    twin, _ = _model()  # same seed, same weights: explained alone, for the reference maps
    want = {t: GradCAM(twin, t).compute_heatmap(x, 1) for t in ("c1", "c2")}
    start = threading.Barrier(2)
    got: dict[str, np.ndarray] = {}

    def explain(target: str) -> None:
        start.wait()
        got[target] = GradCAM(model, target).compute_heatmap(x, 1)

    threads = [threading.Thread(target=explain, args=(t,)) for t in ("c1", "c2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for t in ("c1", "c2"):
        np.testing.assert_allclose(got[t], want[t], atol=1e-6, err_msg=t)
    assert not any("call" in vars(layer) for layer in model.layers)

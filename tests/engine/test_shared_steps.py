"""Library instances share compiled steps per model: ``GradCAM(model, layer)`` built anew for every
image (the Keras example's and pytorch-grad-cam users' loop) traces once, not once per image, and a
shared step never answers for a model that changed since it was traced."""

from __future__ import annotations

import keras
import numpy as np
from camserve import GradCAM, GradCAMPlusPlus
from camserve.engine import Explainer
from camserve.records import ItemSpec


def _model() -> keras.Model:
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="head")(x))


def _fresh(model: keras.Model, x: np.ndarray, method: str = "gradcam") -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, map) from an Explainer built now, bypassing what instances share."""
    r = Explainer(model, "conv", preprocessing="none").explain_batch(x[None], [ItemSpec(method)])[0]
    return r.probabilities, r.maps[0].heatmap


def test_new_instances_reuse_the_step_and_give_the_same_maps() -> None:
    model, x = _model(), np.random.default_rng(0).random((16, 16, 3), np.float32)
    first = GradCAM(model, "conv")
    heat = first.compute_heatmap(x)
    again = GradCAM(model, target_layer="conv")
    plus = GradCAMPlusPlus(model, "conv")  # another method, same step
    assert again.explainer is first.explainer and plus.explainer is first.explainer
    np.testing.assert_array_equal(again.compute_heatmap(x), heat)
    np.testing.assert_allclose(plus.compute_heatmap(x), _fresh(model, x, "gradcam++")[1], atol=1e-6)
    # other settings are other steps
    assert GradCAM(model, "conv", max_batch_size=4).explainer is not first.explainer
    assert GradCAM(model, "conv", preprocessing="tf").explainer is not first.explainer


def test_a_shared_step_sees_new_weights() -> None:
    model, x = _model(), np.random.default_rng(1).random((16, 16, 3), np.float32)
    GradCAM(model, "conv").compute_heatmap(x)
    model.set_weights([w * 0.5 + 0.1 for w in model.get_weights()])  # as training would
    cam = GradCAM(model, "conv")
    probs, heat = _fresh(model, x)
    np.testing.assert_allclose(cam.predict(x[None])[0], probs, atol=1e-6)
    np.testing.assert_allclose(cam.compute_heatmap(x), heat, atol=1e-6)


def test_a_changed_model_gets_a_new_step() -> None:
    """Keras' Grad-CAM example removes the softmax (``model.layers[-1].activation = None``) after the
    model exists; a step traced before must not be reused for the changed model."""
    model, x = _model(), np.random.default_rng(2).random((16, 16, 3), np.float32)
    before = GradCAM(model, "conv")
    before.compute_heatmap(x)
    model.layers[-1].activation = None
    after = GradCAM(model, "conv")
    assert after.explainer is not before.explainer
    probs, heat = _fresh(model, x)
    np.testing.assert_allclose(after.predict(x[None])[0], probs, atol=1e-6)
    np.testing.assert_allclose(after.compute_heatmap(x), heat, atol=1e-6)


def test_a_model_with_shared_steps_still_saves(tmp_path) -> None:
    model, x = _model(), np.random.default_rng(3).random((16, 16, 3), np.float32)
    heat = GradCAM(model, "conv").compute_heatmap(x)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(GradCAM(loaded, "conv").compute_heatmap(x), heat, atol=1e-6)

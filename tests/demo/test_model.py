"""The shipped demo model: agreed config, GAP head, held-out accuracy, localisation through the engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
from camserve.demo import MODEL_DIR, REPOSITORY_DIR
from camserve.demo.digits import CANVAS, generate, preprocess
from camserve.demo.localization import score_maps
from camserve.demo.train import HELDOUT_SAMPLES, HELDOUT_SEED, TARGET_LAYER, build_model, config_dict
from camserve.records import ItemSpec

AGREED_FIELDS = {
    "name",
    "version",
    "model_file",
    "application",
    "weights",
    "input_shape",
    "preprocessing",
    "target_layer",
    "labels_file",
    "score",
    "batching",
}
BATCHING_FIELDS = {"max_batch_size", "max_queue_delay_ms", "max_queue_size"}


@pytest.fixture(scope="module")
def model():
    import keras

    return keras.models.load_model(MODEL_DIR / "model.keras", compile=False)


@pytest.fixture(scope="module")
def heldout():
    return generate(HELDOUT_SAMPLES, "heldout", seed=HELDOUT_SEED)


def test_config_has_the_agreed_fields_and_matches_the_training_script() -> None:
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert set(config) == AGREED_FIELDS
    assert set(config["batching"]) == BATCHING_FIELDS
    assert config["name"] == MODEL_DIR.name == "demo" and MODEL_DIR.parent == REPOSITORY_DIR
    assert config["input_shape"] == [CANVAS, CANVAS, 3]
    assert config["preprocessing"] == "tf" and config["score"] == "logits"
    assert config["target_layer"] == TARGET_LAYER
    assert (MODEL_DIR / config["model_file"]).is_file()
    assert (MODEL_DIR / config["labels_file"]).read_text().split() == [str(d) for d in range(10)]
    assert config == config_dict()


def test_model_file_is_small() -> None:
    assert (MODEL_DIR / "model.keras").stat().st_size < 1024 * 1024


def test_shipped_model_is_the_training_architecture_with_a_gap_head(model) -> None:
    fresh = build_model()
    assert [(w.path, w.shape) for w in model.weights] == [(w.path, w.shape) for w in fresh.weights]
    names = [layer.name for layer in model.layers]
    i = names.index(TARGET_LAYER)
    assert names[i + 1 : i + 3] == ["gap", "predictions"] and i + 3 == len(names)
    assert tuple(model.get_layer(TARGET_LAYER).output.shape[1:3]) == (8, 8)
    assert model.get_layer("predictions").activation.__name__ == "softmax"
    assert model.count_params() < 250_000


def test_held_out_accuracy_is_at_least_97_percent(model, heldout) -> None:
    probs = model.predict(preprocess(heldout.images), batch_size=250, verbose=0)
    accuracy = float(np.mean(np.argmax(probs, axis=1) == heldout.labels))
    assert accuracy >= 0.97, f"held-out accuracy {accuracy:.4f}"


def test_gradcam_points_at_the_digit_through_the_engine(model, heldout) -> None:
    """Engine on raw uint8 pixels (preprocessing inside its step): Grad-CAM pointing game >= 90%."""
    engine = pytest.importorskip("camserve.engine")
    explainer = engine.Explainer(model, target_layer=TARGET_LAYER, preprocessing="tf", max_batch_size=32)
    images, boxes = heldout.images[:128], heldout.boxes[:128]
    results = explainer.explain_batch(images, [ItemSpec(method="gradcam")] * len(images))
    score = score_maps([r.maps[0].heatmap for r in results], boxes, (CANVAS, CANVAS))
    assert score.pointing_game >= 0.9, score
    # The engine's predictions agree with the model run on the same pixels preprocessed here.
    probs = model.predict(preprocess(images), batch_size=128, verbose=0)
    np.testing.assert_allclose(np.stack([r.probabilities for r in results]), probs, atol=1e-5)


def test_bundled_repository_loads_through_the_repository_module() -> None:
    repository = pytest.importorskip("camserve.repository")
    configs = repository.load_repository(None)
    demo = configs["demo"]
    assert demo.target_layer == TARGET_LAYER and demo.preprocessing == "tf"
    assert list(demo.input_shape) == [CANVAS, CANVAS, 3] and list(demo.labels) == [str(d) for d in range(10)]

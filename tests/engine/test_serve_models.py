"""The models users bring, through ``camserve serve`` with no target layer: the issue's two
reproductions, a subclassed model, a ViT-like token model, keras-hub's ViT (carrying its own
preprocessor), a stock architecture whose classifier is a 1x1 convolution and a grayscale fully
convolutional model (input (batch, H, W), output (batch, 1, 1, classes)), from a repository written
here (.keras and .h5).

Each served map must equal the library's map for the same file and image (the library's maps are
checked against independent references in test_zoo / test_heads), the default target must have a
grid larger than 1x1, and the tf.nn.softmax model must report its own probability (hand-computed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from camserve.engine import Explainer, load_model
from camserve.records import ItemSpec
from camserve_client import Client, InvalidArgument
from serverproc import start_server

from engine import zoo_models as zoo

TESTS = Path(__file__).resolve().parent.parent


def _one_by_one() -> keras.Model:
    """Issue reproduction 1: the 1x1 classifier convolution after pooling."""
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(2, 3),
            keras.layers.GlobalAveragePooling2D(keepdims=True),
            keras.layers.Conv2D(2, 1),
            keras.layers.Flatten(),
            keras.layers.Softmax(),
        ]
    )


def _tf_softmax() -> keras.Model:
    """Issue reproduction 2: Dense(2, activation=tf.nn.softmax); z = (f, -0.75 f) for GAP feature f."""
    inp = keras.Input((3, 3, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(1, 1, use_bias=False, name="features")(inp))
    dense = keras.layers.Dense(2, activation=tf.nn.softmax, name="probs")
    model = keras.Model(inp, dense(x))
    model.get_layer("features").set_weights([np.ones((1, 1, 1, 1))])
    dense.set_weights([np.array([[1.0, -0.75]]), np.zeros(2)])
    return model


def _gray_fully_convolutional() -> keras.Model:
    """Input((H, W)) with no channel axis, and a head that ends (batch, 1, 1, classes)."""
    keras.utils.set_random_seed(6)
    layers = keras.layers
    inp = keras.Input((8, 8))
    a = layers.Conv2D(3, 3, activation="relu", name="features")(layers.Reshape((8, 8, 1))(inp))
    pooled = layers.GlobalAveragePooling2D(keepdims=True)(a)
    return keras.Model(inp, layers.Conv2D(2, 1, activation="softmax", name="classes")(pooled))


def _non_square_rescaling() -> keras.Model:
    """A 6x10 input scaled inside the model (Rescaling: it takes 0..255 pixels), a Dropout that must be
    off at inference, and a 3x5 grid: orientation kept from input to grid to every size."""
    keras.utils.set_random_seed(7)
    layers = keras.layers
    inp = keras.Input((6, 10, 3))
    a = layers.Conv2D(4, 3, padding="same", activation="relu")(layers.Rescaling(1 / 255)(inp))
    a = layers.Conv2D(4, 3, padding="same", activation="relu", name="features")(layers.MaxPooling2D()(a))
    pooled = layers.Dropout(0.5)(layers.GlobalAveragePooling2D()(a))
    return keras.Model(inp, layers.Dense(3, activation="softmax")(pooled))


def _logits_in_a_dict() -> keras.Model:
    """Its one output in a dict (outputs={"logits": z}), with no softmax: the output is the logits;
    an exp after the features overflows on inputs far outside a normal image's range."""
    keras.utils.set_random_seed(8)
    layers = keras.layers
    inp = keras.Input((6, 6, 1))
    a = keras.ops.exp(layers.Conv2D(3, 3, name="features")(inp))
    return keras.Model(inp, {"logits": layers.Dense(2)(layers.GlobalAveragePooling2D()(a))})


MODELS = {
    # name: (factory, file, input shape, image)
    "one_by_one": (_one_by_one, "model.h5", (8, 8, 1), None),
    "tf_softmax": (_tf_softmax, "model.keras", (3, 3, 1), np.ones((3, 3, 1), np.float32)),
    "subclassed": (zoo.subclassed, "model.keras", (32, 32, 3), None),
    "vit_like": (zoo.vit_like, "model.keras", (32, 32, 3), None),
    # with its own preprocessor (pixels -> [-1, 1]), which predict() applies and call() does not
    "keras_hub_vit": (lambda: zoo.keras_hub_vit(preprocessor=True), "model.keras", (32, 32, 3),
                      np.random.default_rng(9).integers(0, 256, (32, 32, 3), dtype=np.uint8)),
    "mobilenet_v3": (lambda: zoo.APPLICATIONS["mobilenet_v3"][0](64), "model.keras", (64, 64, 3), None),
    "gray_fully_convolutional": (_gray_fully_convolutional, "model.keras", (8, 8, 1), None),
    "non_square_rescaling": (_non_square_rescaling, "model.keras", (6, 10, 3),
                             np.random.default_rng(5).integers(0, 256, (6, 10, 3), dtype=np.uint8)),
    "logits_in_a_dict": (_logits_in_a_dict, "model.keras", (6, 6, 1), None),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("repo")
    images = {}
    for name, (factory, file, shape, image) in MODELS.items():
        folder = root / name
        folder.mkdir()
        model = factory()
        if not model.built:  # the subclassed one was never called
            model(np.zeros((1, *shape), np.float32))
        model.save(folder / file)
        # custom classes are registered by importing the module that defines them
        imports = ["engine.zoo_models"] if name in ("subclassed", "vit_like") else []
        config = {"model_file": file, "input_shape": list(shape), "preprocessing": "none", "imports": imports,
                  "batching": {"max_batch_size": 1}}
        (folder / "config.json").write_text(json.dumps(config))
        images[name] = (
            image
            if image is not None
            else (np.random.default_rng(len(name)).normal(size=shape).astype(np.float32))
        )
    # the worker imports engine.zoo_models (config "imports") from the tests folder
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    server = start_server(repository=root, env=env, timeout=600)
    with server as srv, Client(srv.target, timeout=120) as client:
        yield root, images, client


@pytest.fixture(scope="module")
def library(served) -> dict[str, tuple[keras.Model, Explainer]]:
    """name -> (the model loaded from the served file, its library Explainer with defaults), built
    on first use and shared by this module's tests (loading and recording a model once)."""
    root = served[0]

    class Lazy(dict):
        def __missing__(self, name: str) -> tuple[keras.Model, Explainer]:
            _, file, shape, _ = MODELS[name]
            model = load_model(root / name / file, input_shape=shape)
            self[name] = model, Explainer(model, preprocessing="none", max_batch_size=1)
            return self[name]

    return Lazy()


@pytest.mark.parametrize("name", list(MODELS))
def test_served_with_defaults_equals_the_library(served, library, name: str) -> None:
    _, images, client = served
    model, lib = library[name]
    want = lib.explain_batch(images[name][None], [ItemSpec("gradcam")])[0]
    info = client.get_model(name)
    assert info.default_target_layer == lib.info.target_layer
    # GetModel says which target and why, and how the head was read (what the scores are).
    assert info.default_target_reason == lib.info.target_reason != ""
    assert (info.score_kind, info.head_kind, info.head) == (lib.info.score, lib.info.head_kind, lib.info.head)
    # ... and what preprocessing runs: a keras-hub task's own preprocessor, not its config's "none"
    assert info.preprocessing == lib.info.preprocessing == (
        "own:ViTImageClassifierPreprocessor" if name == "keras_hub_vit" else "none")
    assert lib.info.grid[0] * lib.info.grid[1] > 1, lib.info.target_reason
    r = client.explain(images[name], model=name, output={"size": "grid"})  # no target layer
    assert r.target_layer == lib.info.target_layer and r.score_kind == lib.info.score
    got = r.explanations[0]
    assert got.class_index == want.maps[0].class_index
    assert got.probability == pytest.approx(float(want.probabilities[got.class_index]), abs=1e-5)
    assert got.score == pytest.approx(want.maps[0].score, abs=1e-4)
    np.testing.assert_allclose(got.heatmap, want.maps[0].heatmap, atol=1e-4)
    if name == "one_by_one":
        assert lib.info.target_layer != "conv2d_1" and got.heatmap.shape == (6, 6) and not got.all_zero
    if name == "tf_softmax":  # its own probability: 1 / (1 + e^-1.75), not softmax applied twice (0.669)
        assert got.class_index == 0 and got.probability == pytest.approx(0.8519528, abs=1e-6)
        assert got.score == pytest.approx(1.0, abs=1e-6) and r.score_kind == "logits"  # the logit
        assert info.head_kind == "softmax"
    if name in ("vit_like", "keras_hub_vit"):
        assert got.heatmap.shape == (4, 4)
    if name == "keras_hub_vit":  # the probabilities of the task's predict(), its preprocessor applied
        predicted = model.predict(images[name][None].astype(np.float32), verbose=0)[0]
        assert got.probability == pytest.approx(float(predicted[got.class_index]), abs=1e-5)
        best = [p.class_index for p in r.top_predictions]
        assert best == list(np.argsort(-predicted)[: len(best)])
    if name == "non_square_rescaling":  # (h, w) = (3, 5) at the grid, (6, 10) at the input size
        assert lib.info.target_layer == "features" and got.heatmap.shape == (3, 5) and not got.all_zero
        assert got.probability == pytest.approx(float(model.predict(images[name][None], verbose=0)[0][
            got.class_index]), abs=1e-5)  # uint8 pixels reach Rescaling as they are; Dropout is off
        at_input = client.explain(images[name], model=name, output={"size": "input"}).heatmap
        want = cv2.resize(got.heatmap, (10, 6), interpolation=cv2.INTER_LINEAR)  # OpenCV: (width, height)
        np.testing.assert_allclose(at_input, np.clip(want, 0, 1), atol=1e-6)
        sent = cv2.resize(images[name], (15, 9), interpolation=cv2.INTER_LINEAR)  # 9x15, back at 9x15
        assert client.explain(sent, model=name, output={"size": "original"}).heatmap.shape == (9, 15)
    if name == "gray_fully_convolutional":  # its (H, W, 1) image reaches it as (B, H, W)
        assert lib.info.target_layer == "features" and lib.info.cam_supported and not got.all_zero


def test_a_layer_the_listing_leaves_out_is_still_a_target(served, library) -> None:
    """keras-hub's encoder is one layer holding every block: not listed (its output is the class
    token's sequence), yet a named target the engine resolves; a name the model never calls is refused
    at the front with the listed layers."""
    _, images, client = served
    info = client.get_model("keras_hub_vit")
    listed = {la.name for la in info.layers}
    assert listed and all(la.kind == "tokens" for la in info.layers if "encoder" in la.name)
    _, lib = library["keras_hub_vit"]
    unlisted = next(c.name for c in lib.graph.rec.calls
                    if c.name not in listed and lib.graph._grid_of(c) is not None)
    want = lib.with_target(unlisted).explain_batch(images["keras_hub_vit"][None], [ItemSpec("gradcam")])[0]
    r = client.explain(images["keras_hub_vit"], model="keras_hub_vit", target_layer=unlisted,
                       output={"size": "grid"})
    assert r.target_layer == unlisted
    np.testing.assert_allclose(r.heatmap, want.maps[0].heatmap, atol=1e-4)
    with pytest.raises(InvalidArgument, match="has no target layer 'no_such_layer'"):
        client.explain(images["keras_hub_vit"], model="keras_hub_vit", target_layer="no_such_layer")


def test_an_image_the_model_cannot_answer_finitely_is_invalid_argument(served) -> None:
    """A float32 tensor the model overflows on (exp of its features is infinite): INVALID_ARGUMENT
    saying so, never a reply of NaN maps; the next image is answered as before."""
    _, images, client = served
    with pytest.raises(InvalidArgument, match="the model's output for this image is not finite"):
        client.explain(np.full((6, 6, 1), 1e4, np.float32), model="logits_in_a_dict")
    assert np.isfinite(client.explain(images["logits_in_a_dict"], model="logits_in_a_dict").heatmap).all()

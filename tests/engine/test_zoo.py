"""The zoo: models no one here built, explained with defaults, each map against an independent reference.

Every ``keras.applications`` family (random weights, small inputs), a subclassed model, a functional
ViT-like token model and a keras-hub ViT classifier (built from its classes, nothing downloaded).
For each: the automatic target has a grid larger than 1x1, ``info`` says why it was chosen, and the
Grad-CAM maps of the two best classes equal the float64 reference computed on that target without
the engine (``zoo_models``), within 1e-3 on normalised maps. One image, one compiled step each.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from camserve.engine import Explainer, InvalidInputError
from camserve.records import ItemSpec

from engine import zoo_models as zoo

TOL = 1e-3
#: Targets whose names are stable (explicit in the family's code); the rest are auto-named.
EXPECTED = {
    "vgg16": "block5_conv3",  # today's rule gave it; the new one must too
    "vgg19": "block5_conv4",
    "xception": "block14_sepconv2_act",
    "mobilenet": "conv_pw_13_relu",
    "mobilenet_v2": "out_relu",
    "resnet_v2": "post_relu",
    "inception_resnet_v2": "conv_7b_ac",
    "efficientnet": "top_activation",
    "efficientnet_v2": "top_activation",
    "densenet": "relu",
}


def _check(model: keras.Model, x: np.ndarray, reference, **kwargs) -> Explainer:
    e = Explainer(model, preprocessing="none", max_batch_size=1, **kwargs)
    info = e.info
    assert info.grid[0] * info.grid[1] > 1, (info.target_layer, info.grid)
    assert info.target_reason.startswith("the last layer on the way to the output"), info.target_reason
    assert info.target_layer in [layer.name for layer in info.layers]
    res = e.explain_batch(x, [ItemSpec("gradcam", top_k=2)])[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras' input-structure warnings from the reference's sub-models
        a, g = reference(model, x, info.target_layer)
    want = zoo.reference_gradcam(a, g, prefix=info.prefix_tokens)
    for m in res.maps:
        np.testing.assert_allclose(m.heatmap, want[0, m.class_index], atol=TOL, err_msg=info.target_layer)
    return e


@pytest.mark.parametrize("family", list(zoo.APPLICATIONS))
def test_application_family(family: str) -> None:
    build, size, _ = zoo.APPLICATIONS[family]
    keras.utils.set_random_seed(11)
    model = build(size)
    x = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype(np.float32)
    e = _check(model, x, zoo.functional_reference)
    assert e.info.head_kind == "softmax" and e.info.score == "logits", e.info.head
    if family in EXPECTED:
        assert e.info.target_layer == EXPECTED[family], e.info.target_reason
    if family == "mobilenet_v3":  # its classifier is a 1x1 conv after pooling: never the default
        assert e.info.target_layer != "logits" and "1x1 grid" in e.info.target_reason


def test_subclassed_model_never_called() -> None:
    model = zoo.subclassed()
    assert not model.built
    x = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype(np.float32)
    e = _check(model, x, zoo.subclassed_reference, input_shape=(32, 32, 3))
    assert e.info.target_layer == "conv2" and e.info.grid == (16, 16)
    assert e.info.head_kind == "softmax" and "outside any layer" in e.info.head


def test_vit_like_token_model() -> None:
    model = zoo.vit_like()
    x = np.random.default_rng(2).normal(size=(1, 32, 32, 3)).astype(np.float32)
    e = _check(model, x, zoo.functional_reference)
    # the final LayerNorm's patch tokens never reach the class-token head: the last block's first
    # LayerNorm is the last place where patches feed the output (through the attention)
    assert e.info.target_layer == f"b{zoo.VIT_BLOCKS - 1}_norm1", e.info.target_reason
    assert e.info.target_kind == "tokens" and e.info.prefix_tokens == 1 and e.info.grid == (4, 4)
    assert "final_norm (only its class/prefix tokens reach the output)" in e.info.target_reason
    layers = {layer.name: layer for layer in e.info.layers}
    assert layers["final_norm"].kind == "tokens" and layers["patchify"].kind == "conv"
    assert not any("query" in n for n in layers), "attention internals (batch, N, heads, dim) are not grids"


def test_keras_hub_vit_classifier() -> None:
    model = zoo.keras_hub_vit()
    x = np.random.default_rng(3).normal(size=(1, 32, 32, 3)).astype(np.float32)
    e = _check(model, x, zoo.keras_hub_vit_reference)
    # the last block's first LayerNorm (keras-hub names it ln_1), as for the ViT-like model
    last = model.backbone.get_layer("vit_encoder").encoder_layers[-1]
    assert e.info.target_layer == f"{model.backbone.name}/vit_encoder/{last.name}/{last.layer_norm_1.name}"
    assert e.info.target_kind == "tokens" and e.info.grid == (4, 4) and e.info.prefix_tokens == 1

    # The same classifier carrying its own preprocessor (pixels -> [-1, 1]), as a preset's does: its
    # predict() applies it and its call() does not; the engine explains what predict() computes.
    own = zoo.keras_hub_vit(preprocessor=True)
    pixels = np.random.default_rng(4).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with_own = Explainer(own, preprocessing="none", max_batch_size=2)
    assert with_own.info.preprocessing == "own:ViTImageClassifierPreprocessor"  # what runs, not "none"
    got = with_own.explain_batch(pixels, [ItemSpec("gradcam", top_k=2)] * 2)
    np.testing.assert_allclose(np.stack([r.probabilities for r in got]),
                               own.predict(pixels.astype(np.float32), verbose=0), atol=1e-5)
    want = e.explain_batch(pixels / np.float32(127.5) - 1, [ItemSpec("gradcam", top_k=2)] * 2)
    for r, w in zip(got, want, strict=True):
        assert [m.class_index for m in r.maps] == [m.class_index for m in w.maps]
        for m, n in zip(r.maps, w.maps, strict=True):
            np.testing.assert_allclose(m.heatmap, n.heatmap, atol=1e-5)
    with pytest.raises(InvalidInputError, match=r"own preprocessor \(ViTImageClassifierPreprocessor.*twice"):
        Explainer(own, preprocessing="tf")
    with pytest.raises(InvalidInputError, match=r"resizes images to \(24, 24\).*input_shape=\(24, 24, 3\)"):
        Explainer(zoo.keras_hub_vit(preprocessor=True, image_size=24), preprocessing="none")

"""The library API of the original README, and the import-time promise (no TensorFlow on import)."""

from __future__ import annotations

import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from camserve.engine import CamNotSupportedError, ClassIndexError, Explainer, InvalidInputError
from camserve.records import ItemSpec


def test_import_camserve_does_not_load_tensorflow() -> None:
    code = (
        "import sys, camserve, camserve.engine, camserve.engine.overlay, camserve.engine.errors\n"
        "from camserve.records import ItemSpec, ModelSummary\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'heavy import'\n"
        "from camserve import GradCAM, CAM, EigenCAM\n"
        "assert GradCAM.method == 'gradcam'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_readme_api(trained: dict, digits: tuple) -> None:
    from camserve import GradCAM

    model = trained["plain_gap"]
    x = digits[0][:3]
    gradcam = GradCAM(model, target_layer="target")
    one = gradcam.compute_heatmap(x[0])
    assert one.shape == (12, 12) and one.dtype == np.float32 and one.min() >= 0.0 and one.max() == 1.0
    np.testing.assert_array_equal(gradcam.compute_heatmap(x[:1]), one)
    many = gradcam.compute_heatmaps(x, class_idx=[3, None, 7])
    assert many.shape == (3, 12, 12)
    e = Explainer(model, preprocessing="none", max_batch_size=4)
    ref = e.explain_batch(x, [ItemSpec("gradcam", c) for c in (3, None, 7)])
    np.testing.assert_allclose(many, np.stack([r.maps[0].heatmap for r in ref]), atol=1e-6)
    np.testing.assert_allclose(
        gradcam.compute_heatmaps(x, class_idx=2)[1], gradcam.compute_heatmap(x[1], 2), atol=1e-6
    )
    big = gradcam.compute_heatmap(x[0], size=(24, 24))
    assert big.shape == (24, 24) and big.min() >= 0 and big.max() <= 1
    wide = gradcam.compute_heatmap(x[0], size=(18, 30))  # (height, width): OpenCV takes (width, height)
    np.testing.assert_allclose(wide, cv2.resize(one, (30, 18), interpolation=cv2.INTER_LINEAR), atol=1e-6)
    # A class index as NumPy and tensor scalars: np.argmax, Keras' Grad-CAM example's
    # tf.argmax(preds[0]), keras.ops.argmax; per image as a 1-D array or tensor.
    scores = np.eye(10, dtype=np.float32)[3]
    for ci in (np.int64(3), np.array(3), np.argmax(scores), tf.argmax(scores), keras.ops.argmax(scores)):
        np.testing.assert_array_equal(gradcam.compute_heatmap(x[0], class_idx=ci), many[0], err_msg=repr(ci))
    np.testing.assert_array_equal(gradcam.compute_heatmaps(x, class_idx=tf.constant([3, 3, 3])),
                                  gradcam.compute_heatmaps(x, class_idx=tf.constant(3)))
    np.testing.assert_array_equal(gradcam.compute_heatmaps(x, class_idx=np.array([3, 0, 7]))[[0, 2]],
                                  many[[0, 2]])
    for bad in (3.0, True, np.array([3]), tf.constant(3.0), "3"):
        with pytest.raises(InvalidInputError, match="class_idx must be an int or None"):
            gradcam.compute_heatmap(x[0], class_idx=bad)
    with pytest.raises(InvalidInputError, match="class_idx entries must be an int or None"):
        gradcam.compute_heatmaps(x, class_idx=[3, 0.5, None])
    res = gradcam.explain(x, top_k=2)
    assert [len(r.maps) for r in res] == [2, 2, 2]
    np.testing.assert_allclose(gradcam.predict(x), model.predict(x, verbose=0), atol=1e-5)
    # Every class's maps against its method's float64 reference: test_reference.py.
    with pytest.raises(ClassIndexError):
        gradcam.compute_heatmap(x[0], class_idx=10)
    with pytest.raises(InvalidInputError, match="3 images"):
        gradcam.compute_heatmaps(x, class_idx=[1, 2])
    with pytest.raises(InvalidInputError, match="one image"):
        gradcam.compute_heatmap(x)
    with pytest.raises(InvalidInputError, match=r"different shapes \[\(20, 24, 3\), \(24, 24, 3\)\]"):
        gradcam.compute_heatmaps([x[0], x[1, :20]])  # a list of images of several sizes


def test_cam_class_refuses_flatten_fc(trained: dict) -> None:
    from camserve import CAM

    with pytest.raises(CamNotSupportedError, match="Flatten"):
        CAM(trained["flatten_fc"])


def test_never_called_sequential_built_from_first_input() -> None:
    from camserve import GradCAM

    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ]
    )
    g = GradCAM(model)
    heat = g.compute_heatmap(np.random.default_rng(0).normal(size=(10, 10, 3)).astype(np.float32))
    assert heat.shape == (8, 8) and g.target_layer == "conv"


def test_a_model_of_any_size_takes_every_size() -> None:
    """Input((None, None, C)) (fully convolutional): each image size is explained at its own grid,
    as that size's Explainer does; a size seen before reuses its compiled step."""
    from camserve import HiResCAM

    keras.utils.set_random_seed(3)
    inp = keras.Input((None, None, 2))
    a = keras.layers.Conv2D(3, 3, activation="relu", name="conv")(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(a)))
    lib = HiResCAM(model)
    rng = np.random.default_rng(4)
    seen = []
    for h, w in ((8, 8), (7, 11), (8, 8)):
        x = rng.normal(size=(2, h, w, 2)).astype(np.float32)
        maps = lib.compute_heatmaps(x, class_idx=1)
        e = Explainer(model, preprocessing="none", max_batch_size=2, input_shape=(h, w, 2))
        want = [r.maps[0].heatmap for r in e.explain_batch(x, [ItemSpec("hirescam", 1)] * 2)]
        assert maps.shape == (2, h - 2, w - 2) and lib.target_layer == "conv"
        np.testing.assert_allclose(maps, np.stack(want), atol=1e-6)
        seen.append(lib.explainer)
    assert seen[2] is seen[0] and seen[1] is not seen[0]  # (8, 8) again: its first Explainer


def test_float_values_a_preprocessing_cannot_give_are_refused() -> None:
    """Float input is taken as already preprocessed; float pixels 0..255 (Keras' ``img_to_array``)
    given to a model whose preprocessing is tf ([-1, 1]) or torch are refused, saying what to send,
    never silently explained as if preprocessed; so is input preprocessed for another mode. caffe
    overlaps pixels: bright pixels are caught, a dark image's pixels cannot be told apart and pass."""
    from camserve import GradCAM
    from camserve.engine.pixels import preprocess_numpy

    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    pixels = np.random.default_rng(6).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    as_float = pixels.astype(np.float32)  # what img_to_array gives
    for mode in ("tf", "torch", "caffe"):
        g = GradCAM(model, preprocessing=mode, max_batch_size=1)
        refused = rf"here {mode!r}, which gives .*but this holds 0\.\.25\d: it looks like pixels 0\.\.255"
        with pytest.raises(InvalidInputError, match=refused):
            g.compute_heatmaps(as_float)
        # input preprocessed for another mode, where that mode's range is not inside this one's
        for other in {"tf": ("torch", "caffe"), "torch": ("caffe",), "caffe": ()}[mode]:
            with pytest.raises(InvalidInputError, match=r"neither pixels 0\.\.255 nor input preprocessed"):
                g.compute_heatmaps(preprocess_numpy(pixels, other))
        g.explainer._check_images(preprocess_numpy(pixels, mode))  # its own preprocessing: taken
    g = GradCAM(model, preprocessing="tf", max_batch_size=1)
    np.testing.assert_allclose(g.compute_heatmaps(preprocess_numpy(pixels, "tf")), g.compute_heatmaps(pixels),
                               atol=1e-5)  # preprocessed floats and uint8 pixels: one map
    dark = (pixels // 4).astype(np.float32)  # every value < 64: inside caffe's range, cannot be told apart
    GradCAM(model, preprocessing="caffe", max_batch_size=1).explainer._check_images(dark)
    GradCAM(model, preprocessing="none", max_batch_size=1).explainer._check_images(as_float)  # any float

"""The batch engine: buckets, consistency across batching and compile modes, models, inputs, errors."""

from __future__ import annotations

import pickle

import keras
import numpy as np
import pytest
import tensorflow as tf
from camserve.engine import (
    CamNotSupportedError,
    ClassIndexError,
    Explainer,
    InvalidInputError,
    UnknownLayerError,
)
from camserve.engine.preprocess import preprocess_numpy
from camserve.records import ErrorKind, ItemSpec

from engine.test_reference import ALL_METHODS, GRADIENT_METHODS


def _maps(results: list) -> np.ndarray:
    return np.stack([m.heatmap for r in results for m in r.maps])


@pytest.fixture(scope="module")
def plain4(trained: dict) -> Explainer:
    """The trained plain_gap model, preprocessing 'none', buckets 1, 2, 4: one Explainer (one
    recording, one compile per bucket) for the tests that read it and need none of their own."""
    return Explainer(trained["plain_gap"], preprocessing="none", max_batch_size=4)


def test_batch_equals_one_by_one(trained: dict, digits: tuple) -> None:
    model = trained["residual_bn"]
    x = digits[0][:5]  # padded to bucket 8
    e = Explainer(model, preprocessing="none", max_batch_size=8)  # auto: the final ReLU (CAM head)
    for method in ALL_METHODS:
        specs = [ItemSpec(method, c) for c in (None, 3, None, 7, 0)]
        batch = e.explain_batch(x, specs)
        single = [e.explain_batch(x[i : i + 1], [specs[i]])[0] for i in range(len(x))]
        np.testing.assert_allclose(_maps(batch), _maps(single), atol=1e-5, err_msg=method)
        np.testing.assert_allclose(
            np.stack([r.probabilities for r in batch]), np.stack([r.probabilities for r in single]), atol=1e-6
        )


def test_chunks_larger_than_max_batch(trained: dict, digits: tuple) -> None:
    e = Explainer(trained["plain_gap"], preprocessing="none", max_batch_size=3)
    x = digits[0][:7]
    big = e.explain_batch(x, [ItemSpec()] * 7)
    single = [e.explain_batch(x[i : i + 1], [ItemSpec()])[0] for i in range(7)]
    np.testing.assert_allclose(_maps(big), _maps(single), atol=1e-5)
    assert e.buckets == [1, 2, 3]


def test_xla_equals_graph(trained: dict, digits: tuple, plain4: Explainer) -> None:
    x = digits[0][:4]
    xla = Explainer(trained["plain_gap"], preprocessing="none", compile_mode="xla", max_batch_size=4)
    graph = plain4  # compile_mode "auto": graph on CPU (asserted below and by the next test)
    assert xla.info.compile_mode == "xla" and graph.info.compile_mode == "graph"
    for method in ALL_METHODS:
        specs = [ItemSpec(method, top_k=2)] * 4
        a, b = xla.explain_batch(x, specs), graph.explain_batch(x, specs)
        np.testing.assert_allclose(_maps(a), _maps(b), atol=1e-5, err_msg=method)
        assert [m.class_index for r in a for m in r.maps] == [m.class_index for r in b for m in r.maps]


def test_auto_mode_is_graph_on_cpu(trained: dict) -> None:
    assert Explainer(trained["plain_gap"], preprocessing="none").info.compile_mode == "graph"


def test_warmup_compiles_every_bucket_and_nothing_recompiles(trained: dict, digits: tuple) -> None:
    e = Explainer(trained["plain_gap"], preprocessing="tf", max_batch_size=6)
    e.warmup()
    count = e.step.trace_count()
    assert e.buckets == [1, 2, 4, 6] and e.info.compile_mode == "graph"
    assert count == 1  # graph mode: one trace runs every batch size
    pixels = np.uint8((digits[0][:6] + 1) * 127.5)
    for b in range(1, 7):
        e.explain_batch(pixels[:b], [ItemSpec("gradcam")] * b)
        e.explain_batch(pixels[:b], [ItemSpec("cam", class_index=b)] * b)
    assert e.step.trace_count() == count


def test_top_k_and_class_index(digits: tuple, plain4: Explainer) -> None:
    e = plain4
    x = digits[0][:3]
    res = e.explain_batch(
        x, [ItemSpec("gradcam", top_k=3), ItemSpec("gradcam", class_index=4), ItemSpec("cam")]
    )
    order = np.argsort(-res[0].probabilities)
    assert [m.class_index for m in res[0].maps] == list(order[:3])
    assert [m.class_index for m in res[1].maps] == [4]
    assert [m.class_index for m in res[2].maps] == [int(np.argmax(res[2].probabilities))]
    # Each of the top-k maps equals the map asked for that class directly.
    for m in res[0].maps:
        direct = e.explain_batch(x[:1], [ItemSpec("gradcam", class_index=m.class_index)])[0].maps[0]
        np.testing.assert_allclose(m.heatmap, direct.heatmap, atol=1e-5)
        assert m.score == pytest.approx(direct.score, abs=1e-5)
    for r in res:
        assert r.probabilities.shape == (10,) and abs(float(r.probabilities.sum()) - 1) < 1e-5


def test_preprocessing_inside_the_step(trained: dict, plain4: Explainer) -> None:
    """uint8 pixels + in-step preprocessing == keras' own preprocess_input applied outside."""
    from keras.applications import imagenet_utils

    model = trained["plain_gap"]
    ref = plain4  # preprocessing "none": takes the preprocessed floats as they are
    pixels = np.random.default_rng(3).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    for mode in ("tf", "torch", "caffe"):
        outside = imagenet_utils.preprocess_input(pixels.astype(np.float32), mode=mode)
        np.testing.assert_allclose(preprocess_numpy(pixels, mode), outside, atol=1e-4)
        inside = Explainer(model, preprocessing=mode, max_batch_size=4)
        a = inside.explain_batch(pixels, [ItemSpec("gradcam")] * 3)
        b = ref.explain_batch(outside, [ItemSpec("gradcam")] * 3)
        np.testing.assert_allclose(_maps(a), _maps(b), atol=1e-5, err_msg=mode)
        # float input to an Explainer with preprocessing is taken as already preprocessed
        c = inside.explain_batch(outside, [ItemSpec("gradcam")] * 3)
        np.testing.assert_allclose(_maps(c), _maps(b), atol=1e-5, err_msg=mode)
        # integer pixels of other dtypes (np.array(img, dtype=int), a cast, a 16-bit file) are pixels
        for dtype in (np.int64, np.int32, np.uint16):
            d = inside.explain_batch(pixels.astype(dtype), [ItemSpec("gradcam")] * 3)
            np.testing.assert_allclose(_maps(d), _maps(a), atol=1e-6, err_msg=f"{mode} {dtype}")
        with pytest.raises(InvalidInputError, match=rf"uint16 images hold values 15..4095.*'{mode}'.*0..255"):
            inside.explain_batch((pixels.astype(np.uint16) * 16 + 15)[:1], [ItemSpec()])
    # with no preprocessing any integer range is the model's own business: cast, as uint8 is
    wide = pixels.astype(np.uint16) * 16
    np.testing.assert_allclose(_maps(ref.explain_batch(wide, [ItemSpec()] * 3)),
                               _maps(ref.explain_batch(wide.astype(np.float32), [ItemSpec()] * 3)), atol=1e-6)


def _flat_and_nested(called: bool) -> tuple[keras.Model, keras.Model]:
    """A flat Functional model and the same weights as Sequential([base, GAP, Dense])."""
    keras.utils.set_random_seed(5)
    conv1 = keras.layers.Conv2D(6, 3, activation="relu", name="c1")
    conv2 = keras.layers.Conv2D(8, 3, activation="relu", name="c2")
    gap = keras.layers.GlobalAveragePooling2D()
    dense = keras.layers.Dense(5, activation="softmax", name="head")
    if called:
        inp = keras.Input((12, 12, 3))
        base = keras.Model(inp, conv2(conv1(inp)), name="base")
    else:
        base = keras.Sequential([conv1, conv2], name="base")
    nested = keras.Sequential([base, gap, dense], name="outer")
    if called:
        nested.build((None, 12, 12, 3))
    else:
        assert not nested.built
    # The flat twin gets copies of the weights (built after, so nested weights exist first).
    flat_in = keras.Input((12, 12, 3))
    f1 = keras.layers.Conv2D(6, 3, activation="relu", name="c1")
    f2 = keras.layers.Conv2D(8, 3, activation="relu", name="c2")
    fd = keras.layers.Dense(5, activation="softmax", name="head")
    flat = keras.Model(flat_in, fd(keras.layers.GlobalAveragePooling2D()(f2(f1(flat_in)))))
    if not called:
        nested.build((None, 12, 12, 3))
    for src, dst in ((conv1, f1), (conv2, f2), (dense, fd)):
        dst.set_weights(src.get_weights())
    return flat, nested


@pytest.mark.parametrize("called", [True, False])
def test_nested_submodel_targets(called: bool) -> None:
    flat, nested = _flat_and_nested(called)
    if not called:  # never called: rebuild a fresh never-called twin to exercise input_shape
        nested = keras.Sequential([nested.layers[0], nested.layers[1], nested.layers[2]])
    x = np.random.default_rng(1).normal(size=(3, 12, 12, 3)).astype(np.float32)
    ref = Explainer(flat, "c1", preprocessing="none", max_batch_size=4)
    ref2 = Explainer(flat, "c2", preprocessing="none", max_batch_size=4)
    kwargs = {} if called else {"input_shape": (12, 12, 3)}
    for name in ("c1", "base/c1"):
        e = Explainer(nested, name, preprocessing="none", max_batch_size=4, **kwargs)
        assert e.info.target_layer == "base/c1"
        for method in GRADIENT_METHODS:
            np.testing.assert_allclose(
                _maps(e.explain_batch(x, [ItemSpec(method)] * 3)),
                _maps(ref.explain_batch(x, [ItemSpec(method)] * 3)),
                atol=1e-5,
            )
    auto = Explainer(nested, preprocessing="none", max_batch_size=4, **kwargs)
    assert auto.info.target_layer == "base/c2" and auto.info.cam_supported
    cam = auto.explain_batch(x, [ItemSpec("cam")] * 3)
    np.testing.assert_allclose(_maps(cam), _maps(ref2.explain_batch(x, [ItemSpec("cam")] * 3)), atol=1e-5)
    names = [layer.name for layer in auto.info.layers]
    assert names == ["base/c1", "base/c2"]


def test_never_called_sequential_needs_input_shape() -> None:
    model = keras.Sequential(
        [keras.layers.Conv2D(2, 3), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)]
    )
    with pytest.raises(InvalidInputError, match="never called"):
        Explainer(model)
    e = Explainer(model, input_shape=(8, 8, 3), preprocessing="none", max_batch_size=2)
    assert e.info.grid == (6, 6)


def test_float16_model(trained: dict, digits: tuple) -> None:
    """mixed_float16 copy of a trained model: float32 outputs, no NaN, maps close to the float32 ones."""
    ref_model = trained["plain_gap"]
    inp = keras.Input((24, 24, 3))
    x = inp
    for layer in ref_model.layers[1:]:
        cfg = layer.get_config()
        cfg["dtype"] = "mixed_float16"
        x = type(layer).from_config(cfg)(x)
    half = keras.Model(inp, x)
    for src, dst in zip(ref_model.layers[1:], half.layers[1:], strict=True):
        dst.set_weights(src.get_weights())
    assert half.get_layer("target").compute_dtype == "float16"
    xs = digits[0][:4]
    a = Explainer(half, preprocessing="none", max_batch_size=4)
    b = Explainer(ref_model, preprocessing="none", max_batch_size=4)
    for method in ALL_METHODS:
        ra = a.explain_batch(xs, [ItemSpec(method)] * 4)
        rb = b.explain_batch(xs, [ItemSpec(method)] * 4)
        ma = _maps(ra)
        assert ma.dtype == np.float32 and np.isfinite(ma).all()
        np.testing.assert_allclose(ma, _maps(rb), atol=0.03, err_msg=method)
        assert ra[0].probabilities.dtype == np.float32
        np.testing.assert_allclose(ra[0].probabilities, rb[0].probabilities, atol=5e-3)


def test_caller_errors(trained: dict, digits: tuple) -> None:
    e = Explainer(trained["plain_gap"], preprocessing="none", max_batch_size=2)
    x = digits[0][:1]
    with pytest.raises(ClassIndexError, match=r"out of range.*10 classes \(0\.\.9\)"):
        e.explain_batch(x, [ItemSpec("gradcam", class_index=10)])
    with pytest.raises(ValueError, match="out of range"):
        e.explain_batch(x, [ItemSpec("gradcam", class_index=-1)])
    with pytest.raises(ClassIndexError, match="top_k"):
        e.explain_batch(x, [ItemSpec("gradcam", top_k=11)])
    with pytest.raises(InvalidInputError, match=r"unknown method 'gradcam\+'.*valid"):
        e.explain_batch(x, [ItemSpec("gradcam+")])
    with pytest.raises(InvalidInputError, match=r"shape \(batch, 24, 24, 3\)"):
        e.explain_batch(x[:, :20], [ItemSpec()])
    with pytest.raises(InvalidInputError, match="2 item specs"):
        e.explain_batch(x, [ItemSpec(), ItemSpec()])
    with pytest.raises(InvalidInputError, match="NaN"):
        e.explain_batch(np.full_like(x, np.nan), [ItemSpec()])
    with pytest.raises(UnknownLayerError, match=r"no layer named 'nope'.*target"):
        Explainer(trained["plain_gap"], "nope")
    with pytest.raises(UnknownLayerError, match="not \\(batch, h, w, channels\\)"):
        Explainer(trained["plain_gap"], trained["plain_gap"].layers[-1].name)
    with pytest.raises(InvalidInputError, match="unknown preprocessing"):
        Explainer(trained["plain_gap"], preprocessing="imagenet")
    mixed = e.explain_batch(
        np.concatenate([x, x]), [ItemSpec(class_index=99), ItemSpec()], return_errors=True
    )
    assert mixed[0].error is ErrorKind.CLASS_INDEX and "99" in mixed[0].message and not mixed[0].maps
    assert mixed[1].error is None and mixed[1].maps[0].class_index >= 0


def test_cam_refused_on_flatten_fc(trained: dict, digits: tuple) -> None:
    e = Explainer(trained["flatten_fc"], preprocessing="none", max_batch_size=2)
    assert e.info.target_layer == "target"  # auto: last 4-D layer that is not pooling
    assert not e.info.cam_supported and "Flatten" in e.info.cam_reason
    with pytest.raises(CamNotSupportedError, match=r"GlobalAveragePooling2D.*MaxPooling2D.*Flatten.*Dense"):
        e.explain_batch(digits[0][:1], [ItemSpec("cam")])
    assert e.explain_batch(digits[0][:1], [ItemSpec("gradcam")])[0].maps[0].heatmap.shape == (12, 12)


def test_info_is_plain_data(trained: dict) -> None:
    e = Explainer(trained["residual_bn"], preprocessing="tf", max_batch_size=4)
    info = e.info
    assert pickle.loads(pickle.dumps(info)) == info  # crosses the worker's pipe as it is
    assert info.input_shape == (24, 24, 3) and info.num_classes == 10 and info.max_top_k == 10
    assert info.grid == (12, 12) and info.channels == 12
    assert info.buckets == (1, 2, 4) and info.backend == "tensorflow" and info.preprocessing == "tf"
    names = [layer.name for layer in info.layers]
    assert "target" in names and all(layer.grid and layer.channels > 0 for layer in info.layers)
    assert [layer.cam_supported for layer in info.layers].count(True) == 1


def _tiny(inp: keras.KerasTensor, conv: keras.layers.Layer) -> keras.KerasTensor:
    x = keras.layers.GlobalAveragePooling2D(data_format=conv.data_format)(conv(inp))
    return keras.layers.Dense(2, activation="softmax")(x)


def test_models_the_engine_cannot_run_are_refused_saying_what_to_do() -> None:
    """Each refusal names the cause and the way out, before any trace (not a backend traceback)."""
    gray = keras.Input((8, 8, 1))
    gray_model = keras.Model(gray, _tiny(gray, keras.layers.Conv2D(2, 3)))
    for mode in ("caffe", "torch"):  # per-channel ImageNet RGB statistics on one channel
        with pytest.raises(InvalidInputError, match=rf"preprocessing '{mode}'.*needs 3 channels.*takes 1"):
            Explainer(gray_model, preprocessing=mode)
    rgba = keras.Input((8, 8, 4))
    rgba_model = keras.Model(rgba, _tiny(rgba, keras.layers.Conv2D(2, 3)))
    with pytest.raises(InvalidInputError, match=r"needs 3 channels.*takes 4"):
        Explainer(rgba_model, preprocessing="caffe")
    for model, mode in ((gray_model, "tf"), (rgba_model, "none")):  # any channel count
        e = Explainer(model, preprocessing=mode, max_batch_size=1)
        images = np.random.default_rng(0).integers(0, 256, (1, *e.input_shape), dtype=np.uint8)
        assert e.explain_batch(images, [ItemSpec()])[0].maps[0].heatmap.shape == (6, 6)

    first = keras.Input((3, 8, 8))  # (C, H, W): its grids are not (h, w, C)
    conv = keras.layers.Conv2D(2, 3, data_format="channels_first", name="cf")
    with pytest.raises(InvalidInputError, match=r"layer 'cf'.*channels_first.*data_format='channels_last'"):
        Explainer(keras.Model(first, _tiny(first, conv)), preprocessing="none")

    inp = keras.Input((8, 8, 3))
    a = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inp))
    two = keras.Model(inp, [keras.layers.Dense(2)(a), keras.layers.Dense(3)(a)])
    way_out = r"keras.Model\(model.inputs, model.outputs\[i\]\)"
    with pytest.raises(InvalidInputError, match=rf"2 outputs.*{way_out}"):
        Explainer(two, preprocessing="none")
    e = Explainer(keras.Model(two.inputs, two.outputs[1]), preprocessing="none", max_batch_size=1)
    assert e.num_classes == 3

    class LogitsAndFeatures(keras.Model):
        """A subclassed model has no model.outputs to pick from: the way out is another call()."""

        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = keras.layers.Conv2D(2, 3), keras.layers.Dense(3)

        def call(self, x):
            features = keras.ops.mean(self.conv(x), axis=(1, 2))
            return self.head(features), features

    with pytest.raises(InvalidInputError, match=r"2 outputs.*subclass whose call\(image\) returns that one"):
        Explainer(LogitsAndFeatures(), preprocessing="none", input_shape=(8, 8, 3))

    # Refused by the library classes too, at construction: not "the input shape is unknown until the
    # first image", which no image can fix.
    from camserve import GradCAM

    meta = keras.Input((5,))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3, name="conv")(inp))
    two_in = keras.Model([inp, meta], keras.layers.Dense(2)(keras.layers.Concatenate()([pooled, meta])))
    frames = keras.Input((4, 8, 8, 3))
    per_frame = keras.layers.TimeDistributed(keras.layers.Conv2D(2, 3))(frames)
    clip = keras.Model(frames, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling3D()(per_frame)))
    vector = keras.Input((10,))
    steps = keras.Input((16, 16))  # 16 steps of 16 features: not a 16x16 gray image folded into 4x4
    signal = keras.Model(steps, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(
        keras.layers.Conv1D(4, 3, padding="same", name="c1d")(steps))))
    recurrent = keras.Model(steps, keras.layers.Dense(2)(keras.layers.LSTM(3)(steps)))
    for model, why in (
        (signal, r"takes \(None, 16, 16\), not images.*sequences \(batch, steps, features\) \(Conv1D 'c1d'"),
        (recurrent, r"takes \(None, 16, 16\), not images.*sequences.*LSTM"),
        (two_in, r"2 inputs.*one image input.*call\(image\) returns model\(\[image, other\]\)"),
        (clip, r"takes \(None, 4, 8, 8, 3\), not images.*TimeDistributed"),
        (keras.Model(vector, keras.layers.Dense(2)(vector)), r"takes \(None, 10\), not images"),
    ):
        for build in (lambda m: Explainer(m, preprocessing="none"), GradCAM):
            with pytest.raises(InvalidInputError, match=why) as refused:
                build(model)
            assert "input_shape" not in str(refused.value)

    class ImageOnly(keras.Model):
        """The way out the two-input refusal names: the other input supplied by the model itself."""

        def __init__(self, model: keras.Model, other: np.ndarray) -> None:
            super().__init__()
            self.model, self.other = model, keras.ops.convert_to_tensor(other)

        def call(self, image):
            other = keras.ops.broadcast_to(self.other, (keras.ops.shape(image)[0], self.other.shape[-1]))
            return self.model([image, other])

    image = np.random.default_rng(0).normal(size=(8, 8, 3)).astype(np.float32)
    extra = np.linspace(-1, 1, 5, dtype=np.float32)[None]
    heat = GradCAM(ImageOnly(two_in, extra), input_shape=(8, 8, 3)).compute_heatmap(image, 1)
    with tf.GradientTape() as tape:  # the reference: the model run by hand from the conv
        a = two_in.get_layer("conv")(image[None])
        tape.watch(a)
        z = two_in.layers[-1](keras.ops.concatenate([keras.ops.mean(a, axis=(1, 2)), extra], axis=-1))[:, 1]
    g = tape.gradient(z, a).numpy()[0]
    raw = np.maximum(np.einsum("ijc,c->ij", a.numpy()[0], g.mean(axis=(0, 1))), 0)
    np.testing.assert_allclose(heat, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-5)


def test_an_input_named_as_target_is_called_an_input() -> None:
    """model.summary() lists the Input among the layers; naming it says what it is."""
    inp = keras.Input((8, 8, 3), name="pixels")
    model = keras.Model(inp, _tiny(inp, keras.layers.Conv2D(2, 3, name="conv")))
    with pytest.raises(UnknownLayerError, match=r"'pixels' is an Input of model .*, not a layer call.*conv"):
        Explainer(model, "pixels", preprocessing="none")
    with pytest.raises(UnknownLayerError, match="no layer named 'pixel'"):
        Explainer(model, "pixel", preprocessing="none")



def test_an_answer_that_would_hold_nan_is_refused_for_that_image_alone() -> None:
    """A model whose output (log of 0) or whose gradient (sqrt at 0) is not finite for an image: that
    image is refused saying which, never answered with NaN maps; the others are explained.

    Hand reference: features A (4x4, one channel) -> f(A) -> GAP -> Dense kernel [[1, -1]], so for
    f = log or sqrt the gradient of z_0 is f'(A)/16 > 0 at every position and Grad-CAM of class 0 is
    mean(f'(A))/16 * A: the image itself, normalised."""
    good = np.linspace(0.5, 2.0, 16, dtype=np.float32).reshape(1, 4, 4, 1)
    zero = good.copy()
    zero[0, 1, 2, 0] = 0.0
    for f, fails in ((keras.ops.log, "the model's output for this image is not finite"),
                     (keras.ops.sqrt, "the gradient of class 0's score at layer 'features' is not finite")):
        inp = keras.Input((4, 4, 1))
        a = keras.layers.Identity(name="features")(inp)
        dense = keras.layers.Dense(2, name="head")
        model = keras.Model(inp, dense(keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(f)(a))))
        dense.set_weights([np.array([[1.0, -1.0]]), np.zeros(2)])
        e = Explainer(model, "features", preprocessing="none", max_batch_size=2)
        for method in ("gradcam", "hirescam", "gradcam++"):
            res = e.explain_batch(np.concatenate([zero, good]), [ItemSpec(method, 0)] * 2, return_errors=True)
            assert res[0].error is ErrorKind.INVALID_INPUT and fails in res[0].message and not res[0].maps
            assert res[1].error is None
            if method == "gradcam":
                np.testing.assert_allclose(res[1].maps[0].heatmap, (good[0, ..., 0] - 0.5) / 1.5, atol=1e-6)
        with pytest.raises(InvalidInputError, match=f"image 0 of the batch: {fails}"):
            e.explain_batch(np.concatenate([zero, good]), [ItemSpec("gradcam", 0)] * 2)


def test_a_model_xla_cannot_compile_is_refused_saying_to_use_graph_mode() -> None:
    """tf.numpy_function in a Lambda layer (tf.keras-era code) has no XLA kernel: under XLA (asked
    for, or 'auto' on a GPU) the step's first run says which operation and what to use instead, not
    TensorFlow's InvalidArgumentError; graph mode explains the same model."""
    keras.utils.set_random_seed(14)
    inp = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    host = keras.layers.Lambda(lambda t: t + 0.0 * tf.stop_gradient(tf.ensure_shape(
        tf.numpy_function(lambda v: v, [t], tf.float32, stateful=False), t.shape)), name="host")(a)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(host)))
    x = np.random.default_rng(15).normal(size=(1, 8, 8, 3)).astype(np.float32)
    xla = Explainer(model, "conv", preprocessing="none", max_batch_size=1, compile_mode="xla")
    refused = r"XLA cannot compile \(PyFuncStateless at .*host.*compile_mode='graph'"
    with pytest.raises(InvalidInputError, match=refused):
        xla.explain_batch(x, [ItemSpec()])
    graph = Explainer(model, "conv", preprocessing="none", max_batch_size=1, compile_mode="graph")
    assert graph.explain_batch(x, [ItemSpec()])[0].maps[0].heatmap.shape == (6, 6)

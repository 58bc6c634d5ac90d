"""Targets wherever the forward pass goes: custom layers owning sublayers, layers called several
times, never-called models, token grids and their overrides; one compiled step, no recompiles."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from camserve.engine import Explainer, GradCAM, InvalidInputError, UnknownLayerError
from camserve.records import ItemSpec

from engine import zoo_models as zoo


def _gradcam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Grad-CAM of one image in float64: a (h, w, C), g (h, w, C)."""
    raw = np.maximum(np.einsum("ijc,c->ij", a.astype(np.float64), g.astype(np.float64).mean(axis=(0, 1))), 0)
    rng = raw.max() - raw.min()
    return (raw - raw.min()) / rng if rng > 1e-6 * raw.max() else np.zeros_like(raw)


class Stage(keras.layers.Layer):
    """A custom layer owning its blocks (like a keras-hub encoder): conv, conv, then a raw residual add."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [
            keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=f"conv{i}") for i in range(2)
        ]

    def call(self, x):
        y = x
        for block in self.blocks:
            y = block(y)
        return x + y


class SharedRelu(keras.Model):
    """One ReLU layer called twice from call(): targets are relu@0 and relu@1."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.c1 = keras.layers.Conv2D(4, 3, padding="same", name="c1")
        self.c2 = keras.layers.Conv2D(4, 3, padding="same", name="c2")
        self.relu = keras.layers.ReLU(name="relu")
        self.gap = keras.layers.GlobalAveragePooling2D(name="gap")
        self.head = keras.layers.Dense(3, name="head")

    def call(self, x):
        return self.head(self.gap(self.relu(self.c2(self.relu(self.c1(x))))))


def _stage_model() -> keras.Model:
    keras.utils.set_random_seed(8)
    inp = keras.Input((8, 8, 4))
    x = Stage(name="stage")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(x))


X4 = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype(np.float32)


def test_custom_layer_sublayers_are_targets() -> None:
    model = _stage_model()
    stage = model.get_layer("stage")
    e = Explainer(model, preprocessing="none", max_batch_size=2)
    names = [layer.name for layer in e.info.layers]
    assert names == ["stage/conv0", "stage/conv1", "stage"]  # the stage ends in its own add: listed
    assert e.info.target_layer == "stage" and e.info.cam_supported
    for name in ("stage/conv1", "conv1"):
        inner = Explainer(model, name, preprocessing="none", max_batch_size=2)
        assert inner.info.target_layer == "stage/conv1" and not inner.info.cam_supported
        res = inner.explain_batch(X4, [ItemSpec("gradcam", class_index=1)] * 2)
        # reference: the stage run by hand, the tape watching conv1's output
        head = model.get_layer("head")
        with tf.GradientTape() as tape:
            a = stage.blocks[1](stage.blocks[0](tf.constant(X4)))
            tape.watch(a)
            z = tf.reduce_mean(tf.constant(X4) + a, axis=(1, 2)) @ head.kernel + head.bias
            s = tf.reduce_sum(z[:, 1])
        g = tape.gradient(s, a).numpy()
        for i in range(2):
            np.testing.assert_allclose(res[i].maps[0].heatmap, _gradcam(a.numpy()[i], g[i]), atol=1e-4)


def test_a_layer_called_twice_is_two_targets() -> None:
    model = SharedRelu()
    x = X4[..., :3]
    with pytest.raises(UnknownLayerError, match=r"'relu' is called 2 times.*relu@0, relu@1"):
        Explainer(model, "relu", preprocessing="none", max_batch_size=2, input_shape=(8, 8, 3))
    auto = Explainer(model, preprocessing="none", max_batch_size=2, input_shape=(8, 8, 3))
    assert auto.info.target_layer == "relu@1" and auto.info.cam_supported
    first = Explainer(model, "relu@0", preprocessing="none", max_batch_size=2, input_shape=(8, 8, 3))
    res = first.explain_batch(x, [ItemSpec("gradcam", class_index=2)] * 2)
    # The layer object itself, as pytorch-grad-cam users pass it: its one call, or the choice of calls
    assert first.with_target(model.c2).target.name == "c2"
    with pytest.raises(UnknownLayerError, match=r"'relu' is called 2 times.*relu@0, relu@1"):
        first.with_target(model.relu)
    with pytest.raises(UnknownLayerError, match=r"'stray' is not called when model .* runs"):
        first.with_target(keras.layers.ReLU(name="stray"))
    for wrong in (["relu@0"], -1):  # pytorch-grad-cam's target_layers list; tf-keras-vis' layer index
        with pytest.raises(UnknownLayerError, match=r"a layer's name or path, or the layer.*None chooses"):
            first.with_target(wrong)
    with tf.GradientTape() as tape:
        a = model.relu(model.c1(tf.constant(x)))
        tape.watch(a)
        z = model.head(model.gap(model.relu(model.c2(a))))
        s = tf.reduce_sum(z[:, 2])
    g = tape.gradient(s, a).numpy()
    np.testing.assert_allclose(res[1].maps[0].heatmap, _gradcam(a.numpy()[1], g[1]), atol=1e-4)
    # CAM on the second call is verified against the gradient (GAP -> Dense), and matches Grad-CAM
    cam = auto.explain_batch(x, [ItemSpec("cam", class_index=0)] * 2)
    gc = auto.explain_batch(x, [ItemSpec("gradcam", class_index=0)] * 2)
    np.testing.assert_allclose(cam[0].maps[0].heatmap, gc[0].maps[0].heatmap, atol=1e-5)


class ConvGapDense(keras.Model):
    """Layers conv (3 channels, ``conv_size`` square) -> GAP -> Dense(2), named conv, gap and head;
    a subclass writes call(): what the model does outside its layers (also used by test_heads)."""

    conv_size = 3

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(3, self.conv_size, name="conv")
        self.gap = keras.layers.GlobalAveragePooling2D(name="gap")
        self.head = keras.layers.Dense(2, name="head")


class SideUse(ConvGapDense):
    """conv -> GAP -> Dense, but the conv output also enters the logits outside any layer."""

    def call(self, x):
        a = self.conv(x)
        return self.head(self.gap(a)) + keras.ops.max(a, axis=(1, 2, 3))[:, None]


class SquaringDropout(keras.layers.Dropout):
    """Claims to be a Dropout (a pass-through at inference) but squares part of its input."""

    def call(self, x, training=None):
        return x + 0.5 * x * x


def test_cam_is_checked_on_the_gradient_not_only_the_layer_types() -> None:
    # code outside the layers adds a term that depends on the target: the head is not GAP -> Dense
    e = Explainer(SideUse(), preprocessing="none", max_batch_size=2, input_shape=(6, 6, 1))
    assert e.info.target_layer == "conv" and not e.info.cam_supported
    # the layer types say conv -> GAP -> "Dropout" -> Dense; the gradient says otherwise
    keras.utils.set_random_seed(9)
    inp = keras.Input((6, 6, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(3, 3, name="conv")(inp))
    model = keras.Model(inp, keras.layers.Dense(2)(SquaringDropout(0.1)(x)))
    e = Explainer(model, preprocessing="none", max_batch_size=2)
    assert e.info.target_layer == "conv" and not e.info.cam_supported
    assert "gradient is not that of GlobalAveragePooling2D -> Dense" in e.info.cam_reason


def test_never_called_subclassed_model() -> None:
    with pytest.raises(InvalidInputError, match=r"never called.*input_shape=\(H, W, C\)"):
        Explainer(zoo.subclassed())
    lib = GradCAM(zoo.subclassed())  # the library builds it from the first image
    with pytest.raises(InvalidInputError, match="input shape is unknown until the first image"):
        _ = lib.target_layer
    heat = lib.compute_heatmap(np.random.default_rng(0).normal(size=(32, 32, 3)).astype(np.float32))
    assert heat.shape == (16, 16) and lib.target_layer == "conv2"


def test_token_grid_found_and_overridden() -> None:
    model = zoo.vit_like()
    x = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype(np.float32)
    auto = Explainer(model, preprocessing="none", max_batch_size=2)
    given = Explainer(model, preprocessing="none", max_batch_size=2, token_grid=(4, 4), prefix_tokens=1)
    assert auto.info.target_layer == given.info.target_layer == "b1_norm1"
    a = auto.explain_batch(x, [ItemSpec("gradcam++", top_k=2)] * 2)
    b = given.explain_batch(x, [ItemSpec("gradcam++", top_k=2)] * 2)
    np.testing.assert_allclose(a[1].maps[1].heatmap, b[1].maps[1].heatmap, atol=1e-6)
    assert a[0].maps[0].heatmap.shape == (4, 4)
    # a layout that does not fit the token count: no token grid, so the layer cannot be a target
    with pytest.raises(UnknownLayerError, match=r"b1_norm1.*\(batch, 17, 16\).*token_grid/prefix_tokens"):
        Explainer(
            model, "b1_norm1", preprocessing="none", max_batch_size=2, token_grid=(3, 3), prefix_tokens=1
        )
    with pytest.raises(InvalidInputError, match="prefix_tokens must be an integer >= 0"):
        Explainer(model, preprocessing="none", prefix_tokens=-1)


def test_no_recompile_after_warmup_for_new_model_kinds() -> None:
    for model, kw in ((zoo.vit_like(), {}), (SharedRelu(), {"input_shape": (8, 8, 3)})):
        e = Explainer(model, preprocessing="tf", max_batch_size=4, **kw)
        e.warmup()
        count = e.step.trace_count()
        assert count == 1 and len(e.buckets) == 3  # graph mode: one trace runs every bucket
        h, w, c = e.input_shape
        pixels = np.random.default_rng(1).integers(0, 256, (4, h, w, c), dtype=np.uint8)
        for b in range(1, 5):
            e.explain_batch(pixels[:b], [ItemSpec("layercam")] * b)
        assert e.step.trace_count() == count


def test_issue_reproduction_one_by_one_classifier() -> None:
    """The 1x1 classifier convolution after pooling is not the default: the 6x6 conv is, with a real map."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, name="features"),
                              keras.layers.GlobalAveragePooling2D(keepdims=True),
                              keras.layers.Conv2D(2, 1, name="classifier"), keras.layers.Flatten(),
                              keras.layers.Softmax()])
    e = Explainer(model, preprocessing="none", max_batch_size=2)
    assert e.info.target_layer == "features" and e.info.grid == (6, 6)
    assert "classifier (1x1 grid)" in e.info.target_reason and e.info.head_kind == "softmax"
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 1)).astype(np.float32)
    res = e.explain_batch(x, [ItemSpec("gradcam", class_index=k) for k in (0, 1)])
    # hand reference: logits = W^T mean(A) + b, so d z_k / d A_ijc = W[c, k] / 36 everywhere
    a = keras.ops.convert_to_numpy(model.get_layer("features")(x))
    w = model.get_layer("classifier").get_weights()[0][0, 0]  # (C, classes)
    for i, k in enumerate((0, 1)):
        want = _gradcam(a[i], np.broadcast_to(w[:, k] / 36, a[i].shape))
        np.testing.assert_allclose(res[i].maps[0].heatmap, want, atol=1e-5)
        assert not res[i].maps[0].all_zero
    np.testing.assert_allclose(res[0].probabilities, model.predict(x, verbose=0)[0], atol=1e-6)


def test_grayscale_input_without_a_channel_axis() -> None:
    """Input((H, W)) then Reshape (the MNIST-tutorial spelling): images are (H, W, 1), the model gets
    (B, H, W); the library also takes (H, W) and (B, H, W) arrays for any one-channel model."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((6, 5))
    conv = keras.layers.Conv2D(3, 3, activation="relu", name="conv")
    head = keras.layers.Dense(2, activation="softmax", name="head")
    a = conv(keras.layers.Reshape((6, 5, 1))(inp))
    model = keras.Model(inp, head(keras.layers.GlobalAveragePooling2D()(a)))
    x = np.random.default_rng(6).normal(size=(2, 6, 5)).astype(np.float32)
    e = Explainer(model, preprocessing="none", max_batch_size=2)
    assert e.info.input_shape == (6, 5, 1) and e.info.target_layer == "conv" and e.info.grid == (4, 3)
    res = e.explain_batch(x[..., None], [ItemSpec("gradcam", class_index=1)] * 2)
    with tf.GradientTape() as tape:  # reference: the layers by hand, the tape watching conv's output
        a = conv(tf.reshape(tf.constant(x), (2, 6, 5, 1)))
        tape.watch(a)
        s = tf.reduce_sum((tf.reduce_mean(a, axis=(1, 2)) @ head.kernel + head.bias)[:, 1])
    g = tape.gradient(s, a).numpy()
    for i in range(2):
        np.testing.assert_allclose(res[i].maps[0].heatmap, _gradcam(a.numpy()[i], g[i]), atol=1e-5)
    lib = GradCAM(model)
    maps = np.stack([r.maps[0].heatmap for r in res])
    np.testing.assert_allclose(lib.compute_heatmaps(x, class_idx=1), maps)
    np.testing.assert_allclose(lib.compute_heatmap(x[1], class_idx=1), res[1].maps[0].heatmap)
    pixels = np.random.default_rng(7).integers(0, 256, (1, 6, 5, 1), dtype=np.uint8)
    assert Explainer(model, preprocessing="tf", max_batch_size=1).explain_batch(pixels, [ItemSpec()])[0].maps


def _one_by_one_head(kind: str) -> keras.Model:
    """features (4 channels) -> a GAP + linear classifier spelled ``kind`` (``cls``: the classifier)."""
    keras.utils.set_random_seed(12)
    layers = keras.layers
    inp = keras.Input((7, 6, 2))
    a = layers.Conv2D(4, 3, activation="relu", name="features")(inp)
    if kind == "keepdims_flatten_dense":
        out = layers.Dense(3, activation="softmax", name="cls")(
            layers.Flatten()(layers.GlobalAveragePooling2D(keepdims=True)(a))
        )
    elif kind == "keepdims_conv_flatten_softmax":  # MobileNetV3's classifier spelling, one layer
        pooled = layers.GlobalAveragePooling2D(keepdims=True)(a)
        out = layers.Softmax()(layers.Flatten()(layers.Conv2D(3, 1, name="cls")(pooled)))
    elif kind in ("conv_then_gap", "relu_conv_then_gap"):  # class maps, then pooled (NiN)
        act = "relu" if kind.startswith("relu") else None
        maps = layers.Conv2D(3, 1, activation=act, name="cls")(a)
        out = layers.Softmax()(layers.GlobalAveragePooling2D()(maps))
    elif kind == "binary_conv":
        pooled = layers.GlobalAveragePooling2D(keepdims=True)(a)
        out = layers.Flatten()(layers.Conv2D(1, 1, activation="sigmoid", name="cls")(pooled))
    else:  # a 3x3 classifier convolution mixes positions: not CAM
        out = layers.Softmax()(layers.GlobalAveragePooling2D()(layers.Conv2D(3, 3, name="cls")(a)))
    return keras.Model(inp, out)


@pytest.mark.parametrize(
    "kind, supported",
    [
        ("keepdims_flatten_dense", True),
        ("keepdims_conv_flatten_softmax", True),
        ("conv_then_gap", True),
        ("binary_conv", True),
        ("relu_conv_then_gap", False),
        ("conv3x3_then_gap", False),
    ],
)
def test_cam_through_any_linear_classifier_after_or_before_the_pooling(kind: str, supported: bool) -> None:
    """CAM M_k = sum_c W[c, k] A_c (Zhou et al. eq. 2) holds for GAP + one linear classifier however it
    is spelled: a Dense after pooling that keeps dims, or a 1x1 Conv2D after or before the pooling."""
    model = _one_by_one_head(kind)
    e = Explainer(model, "features", preprocessing="none", max_batch_size=2)
    assert e.info.cam_supported is supported, e.info.cam_reason
    if not supported:
        assert "CAM needs" in e.info.cam_reason
        return
    x = np.random.default_rng(13).normal(size=(2, 7, 6, 2)).astype(np.float32)
    cam = e.explain_batch(x, [ItemSpec("cam", class_index=k) for k in (0, 1)])
    a = keras.ops.convert_to_numpy(model.get_layer("features")(x)).astype(np.float64)
    w = model.get_layer("cls").get_weights()[0].reshape(4, -1).astype(np.float64)
    w = np.concatenate([-w, w], axis=1) if w.shape[1] == 1 else w  # one binary unit: class 0 = -z
    for i, k in enumerate((0, 1)):
        raw = np.maximum(np.einsum("ijc,c->ij", a[i], w[:, k]), 0.0)
        want = (raw - raw.min()) / (raw.max() - raw.min())
        np.testing.assert_allclose(cam[i].maps[0].heatmap, want, atol=1e-5)

"""Models no one here designed for camserve, and independent references for their maps.

- every ``keras.applications`` family at a small input with random weights (one member each; where the
  family's full member is slow to build on 2 cores, a smaller member built by the family's own
  constructor with fewer blocks: same layers, same head);
- a subclassed ``keras.Model`` (``call()`` chaining layers and raw ops, never called before);
- a functional ViT-like model (patchify conv, class token, position embedding, two pre-norm
  transformer blocks, class-token head) whose blocks output (batch, tokens, channels);
- a keras-hub ``ViTImageClassifier`` built from its classes (no preset, nothing downloaded).

The classes are registered serializable so that a server worker can re-open saved ``.keras`` files
when this folder is on its PYTHONPATH (Keras imports the module recorded in the file). TensorFlow is
imported only by the references, so the JAX checks can build these models too.

References (``*_reference``) never use the engine: Functional models are re-built by Keras' public
``clone_model(call_function=...)`` with a zero weight added after the target and differentiated
with a plain ``tf.GradientTape``; the subclassed model and keras-hub's ViT are run by hand, layer by
layer, with the tape watching the target's value. ``reference_gradcam`` then
computes Grad-CAM in float64 NumPy (Selvaraju et al. 2017, eq. 1-2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

# ---- keras.applications: one member per family ----------------------------------------------------


def _small(module: str, fn: str, **kw: Any) -> Callable[[int], keras.Model]:
    def build(size: int) -> keras.Model:
        import importlib

        mod = importlib.import_module(f"keras.src.applications.{module}")
        return getattr(mod, fn)(**kw, weights=None, input_shape=(size, size, 3), classes=3)

    return build


def _public(name: str, **kw: Any) -> Callable[[int], keras.Model]:
    def build(size: int) -> keras.Model:
        return getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=3, **kw)

    return build


def _resnet(preact: bool) -> Callable[[int], keras.Model]:
    def build(size: int) -> keras.Model:
        from keras.src.applications import resnet

        stack = resnet.stack_residual_blocks_v2 if preact else resnet.stack_residual_blocks_v1

        n = 2 if preact else 1  # the v2 stack needs two blocks (its first and last are separate)

        def stack_fn(x: Any) -> Any:  # ResNet50's (v2: ResNet50V2's) four stages with fewer blocks
            x = stack(x, 64, n, name="conv2")
            x = stack(x, 128, n, name="conv3")
            x = stack(x, 256, n, name="conv4")
            if preact:
                return stack(x, 512, n, stride1=1, name="conv5")
            return stack(x, 512, n, name="conv5")

        return resnet.ResNet(
            stack_fn,
            preact,
            not preact,
            weights=None,
            input_shape=(size, size, 3),
            classes=3,
            name="resnet_v2" if preact else "resnet",
        )

    return build


def _inception_resnet_v2(size: int) -> keras.Model:
    """``InceptionResNetV2`` as Keras writes it, with one block where it repeats 10/20/10 (stem,
    reductions, head and layer names unchanged; built from the module's own ``conv2d_bn`` and
    ``inception_resnet_block``): the full member takes ~35 s of CPU to build and trace on 2 cores."""
    from keras.src.applications.inception_resnet_v2 import conv2d_bn, inception_resnet_block

    layers = keras.layers
    inp = layers.Input((size, size, 3))
    x = conv2d_bn(inp, 32, 3, strides=2, padding="valid")
    x = conv2d_bn(x, 32, 3, padding="valid")
    x = conv2d_bn(x, 64, 3)
    x = layers.MaxPooling2D(3, strides=2)(x)
    x = conv2d_bn(x, 80, 1, padding="valid")
    x = conv2d_bn(x, 192, 3, padding="valid")
    x = layers.MaxPooling2D(3, strides=2)(x)
    b0 = conv2d_bn(x, 96, 1)
    b1 = conv2d_bn(conv2d_bn(x, 48, 1), 64, 5)
    b2 = conv2d_bn(conv2d_bn(conv2d_bn(x, 64, 1), 96, 3), 96, 3)
    bp = conv2d_bn(layers.AveragePooling2D(3, strides=1, padding="same")(x), 64, 1)
    x = layers.Concatenate(axis=3, name="mixed_5b")([b0, b1, b2, bp])
    x = inception_resnet_block(x, scale=0.17, block_type="block35", block_idx=1)
    b0 = conv2d_bn(x, 384, 3, strides=2, padding="valid")
    b1 = conv2d_bn(conv2d_bn(conv2d_bn(x, 256, 1), 256, 3), 384, 3, strides=2, padding="valid")
    bp = layers.MaxPooling2D(3, strides=2, padding="valid")(x)
    x = layers.Concatenate(axis=3, name="mixed_6a")([b0, b1, bp])
    x = inception_resnet_block(x, scale=0.1, block_type="block17", block_idx=1)
    b0 = conv2d_bn(conv2d_bn(x, 256, 1), 384, 3, strides=2, padding="valid")
    b1 = conv2d_bn(conv2d_bn(x, 256, 1), 288, 3, strides=2, padding="valid")
    b2 = conv2d_bn(conv2d_bn(conv2d_bn(x, 256, 1), 288, 3), 320, 3, strides=2, padding="valid")
    bp = layers.MaxPooling2D(3, strides=2, padding="valid")(x)
    x = layers.Concatenate(axis=3, name="mixed_7a")([b0, b1, b2, bp])
    x = inception_resnet_block(x, scale=0.2, block_type="block8", block_idx=1)
    x = inception_resnet_block(x, scale=1.0, activation=None, block_type="block8", block_idx=10)
    x = conv2d_bn(x, 1536, 1, name="conv_7b")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dense(3, activation="softmax", name="predictions")(x)
    return keras.Model(inp, x, name="inception_resnet_v2_zoo")


#: family (keras.applications module) -> (builder(size), input size, preprocessing)
APPLICATIONS: dict[str, tuple[Callable[[int], keras.Model], int, str]] = {
    "convnext": (
        _small(
            "convnext",
            "ConvNeXt",
            depths=[1, 1, 1, 1],
            projection_dims=[16, 32, 64, 128],
            name="convnext_small_zoo",
        ),
        64,
        "none",
    ),
    "densenet": (_small("densenet", "DenseNet", blocks=[1, 1, 1, 1], name="densenet_zoo"), 64, "torch"),
    "efficientnet": (
        _small(
            "efficientnet",
            "EfficientNet",
            width_coefficient=0.25,
            depth_coefficient=0.2,
            default_size=64,
            name="efficientnet_zoo",
        ),
        64,
        "none",
    ),
    "efficientnet_v2": (
        _small(
            "efficientnet_v2",
            "EfficientNetV2",
            width_coefficient=0.25,
            depth_coefficient=0.2,
            default_size=64,
            name="efficientnetv2-b0",
        ),
        64,
        "none",
    ),
    "inception_resnet_v2": (_inception_resnet_v2, 139, "tf"),  # 3x3 at the end
    "inception_v3": (_public("InceptionV3"), 75, "tf"),
    "mobilenet": (_public("MobileNet", alpha=0.25), 64, "tf"),
    "mobilenet_v2": (_public("MobileNetV2", alpha=0.35), 64, "tf"),
    # classifier: GAP(keepdims) -> Conv2D 1x1 -> Flatten -> softmax: the default must not be that 1x1 conv
    "mobilenet_v3": (_public("MobileNetV3Small", alpha=0.75, minimalistic=True), 64, "none"),
    "nasnet": (
        _small(
            "nasnet",
            "NASNet",
            penultimate_filters=96,
            num_blocks=1,
            stem_block_filters=8,
            skip_reduction=False,
            name="nasnet_zoo",
        ),
        64,
        "tf",
    ),
    "resnet": (_resnet(preact=False), 64, "caffe"),
    "resnet_v2": (_resnet(preact=True), 64, "tf"),
    "vgg16": (_public("VGG16"), 64, "caffe"),
    "vgg19": (_public("VGG19"), 64, "caffe"),
    "xception": (_public("Xception"), 71, "tf"),
}


# ---- a subclassed model --------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="camserve_zoo")
class SubclassedNet(keras.Model):
    """conv -> conv -> (raw ops: relu, mean) -> Dense with tf.nn.softmax applied in call()."""

    def __init__(self, classes: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.classes = classes
        self.conv1 = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv1")
        self.conv2 = keras.layers.Conv2D(12, 3, padding="same", name="conv2")
        self.head = keras.layers.Dense(classes, name="head")

    def call(self, x: Any) -> Any:
        a = self.conv2(self.conv1(x))
        return ops.softmax(self.head(ops.mean(ops.relu(a), axis=(1, 2))))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "classes": self.classes}


def subclassed(size: int = 32) -> keras.Model:
    keras.utils.set_random_seed(3)
    return SubclassedNet(name="subclassed")  # never called: the engine builds it


def subclassed_reference(model: keras.Model, x: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    assert target == "conv2", target
    with tf.GradientTape(persistent=True) as tape:
        a = model.conv2(model.conv1(tf.constant(x)))
        tape.watch(a)
        logits = model.head(ops.mean(ops.relu(a), axis=(1, 2)))
        per = [tf.reduce_sum(logits[:, k]) for k in range(logits.shape[1])]
    return a.numpy(), np.stack([tape.gradient(s, a).numpy() for s in per], axis=1)


# ---- a functional ViT-like token model -----------------------------------------------------------
@keras.saving.register_keras_serializable(package="camserve_zoo")
class ClassToken(keras.layers.Layer):
    """Prepends one learned token: (B, N, C) -> (B, N + 1, C)."""

    def build(self, shape: Any) -> None:
        self.token = self.add_weight(shape=(1, 1, shape[-1]), initializer="random_normal", name="token")

    def call(self, x: Any) -> Any:
        return ops.concatenate([ops.tile(self.token, (ops.shape(x)[0], 1, 1)), x], axis=1)


@keras.saving.register_keras_serializable(package="camserve_zoo")
class AddPosition(keras.layers.Layer):
    """Adds a learned position embedding (1, N, C)."""

    def build(self, shape: Any) -> None:
        self.pos = self.add_weight(shape=(1, shape[1], shape[2]), initializer="random_normal", name="pos")

    def call(self, x: Any) -> Any:
        return x + self.pos


VIT_BLOCKS = 2


def vit_like(size: int = 32, patch: int = 8, dim: int = 16, classes: int = 3) -> keras.Model:
    keras.utils.set_random_seed(4)
    inp = keras.Input((size, size, 3))
    grid = size // patch
    x = keras.layers.Conv2D(dim, patch, strides=patch, name="patchify")(inp)
    x = keras.layers.Reshape((grid * grid, dim), name="tokens")(x)
    x = AddPosition(name="pos")(ClassToken(name="cls")(x))
    for i in range(VIT_BLOCKS):
        y = keras.layers.LayerNormalization(name=f"b{i}_norm1")(x)
        y = keras.layers.MultiHeadAttention(2, dim // 2, name=f"b{i}_attn")(y, y)
        x = keras.layers.Add(name=f"b{i}_add1")([x, y])
        y = keras.layers.LayerNormalization(name=f"b{i}_norm2")(x)
        y = keras.layers.Dense(2 * dim, activation="gelu", name=f"b{i}_mlp1")(y)
        x = keras.layers.Add(name=f"b{i}_add2")([x, keras.layers.Dense(dim, name=f"b{i}_mlp2")(y)])
    x = keras.layers.LayerNormalization(name="final_norm")(x)
    out = keras.layers.Dense(classes, activation="softmax", name="head")(x[:, 0])
    return keras.Model(inp, out, name="vit_like")


# ---- keras-hub ViT --------------------------------------------------------------------------------
def keras_hub_vit(size: int = 32, preprocessor: bool = False, image_size: int | None = None) -> keras.Model:
    """keras-hub's ViT classifier; with ``preprocessor`` it carries the task's own preprocessor (pixels
    to [-1, 1], resized to ``image_size``, default ``size``), which its predict() applies and its call()
    does not, as a preset's classifier does."""
    import keras_hub

    keras.utils.set_random_seed(5)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(size, size, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    pre = None
    if preprocessor:
        side = image_size or size
        converter = keras_hub.layers.ViTImageConverter(image_size=(side, side), scale=1 / 127.5, offset=-1.0)
        pre = keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter)
    return keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=3, activation="softmax", preprocessor=pre
    )


def keras_hub_vit_reference(model: keras.Model, x: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """keras-hub's ViT run by hand (ViTEncoder.call / ViTEncoderBlock.call spelled out), watching
    ``target`` = ``<backbone>/vit_encoder/transformer_block_<n>/<its layer_norm_1's name>``."""
    import tensorflow as tf

    backbone = model.backbone
    encoder = backbone.get_layer("vit_encoder")
    parts = target.split("/")
    assert parts[-3] == "vit_encoder", target
    with tf.GradientTape(persistent=True) as tape:
        h = backbone.get_layer("vit_patching_and_embedding")(tf.constant(x))
        h = encoder.dropout(h, training=False) if hasattr(encoder, "dropout") else h
        a = None
        for block in encoder.encoder_layers:
            y = block.layer_norm_1(h)
            if block.name == parts[-2] and block.layer_norm_1.name == parts[-1]:
                a = y
                tape.watch(a)
            y = block.dropout(block.mha(y, y), training=False)
            h = h + y
            h = h + block.mlp(block.layer_norm_2(h))
        assert a is not None, target
        feats = encoder.layer_norm(h)[:, 0]
        dense = model.get_layer("predictions")
        logits = feats @ dense.kernel + dense.bias
        per = [tf.reduce_sum(logits[:, k]) for k in range(logits.shape[1])]
    return a.numpy(), np.stack([tape.gradient(s, a).numpy() for s in per], axis=1)


# ---- the generic reference for Functional models --------------------------------------------------
class _Probe(keras.layers.Layer):
    """Adds a zero weight of one image's output shape: d score / d weight = d score / d output (batch 1)."""

    def __init__(self, shape: tuple[int, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.value = self.add_weight(shape=(1, *shape), initializer="zeros", name="probe")

    def call(self, x: Any) -> Any:
        return x + ops.cast(self.value, x.dtype)


def functional_reference(model: keras.Model, x: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Any top-level ``target`` (a layer or a keras.ops node) of a Functional model: the graph is
    re-built with Keras' public ``clone_model(call_function=...)``, reusing the same layers, with a
    zero ``_Probe`` weight after the target and the last Dense/Activation replaced by its logits;
    a plain ``tf.GradientTape`` then gives d logit_k / d output per image."""
    import tensorflow as tf

    fast = _split_reference(model, x, target)
    if fast is not None:
        return fast
    captured: dict[str, Any] = {}
    last = model.layers[-1]

    def call_function(op: Any, *args: Any, **kwargs: Any) -> Any:
        if op is last and isinstance(op, (keras.layers.Activation, keras.layers.Softmax)):
            out = args[0]  # the logits feed the final activation
        elif op is last:
            assert isinstance(op, keras.layers.Dense), type(op)
            out = ops.matmul(args[0], op.kernel) + op.bias  # the Dense without its activation
        else:
            out = op(*args, **kwargs)
        if op.name == target:
            captured["probe"] = _Probe(tuple(out.shape[1:]))
            out = captured["probe"](out)
            captured["a"] = out
        return out

    clone = keras.models.clone_model(model, clone_function=lambda op: op, call_function=call_function)
    both = keras.Model(clone.inputs, [captured["a"], clone.outputs[0]])
    probe = captured["probe"].value.value  # the backend variable under the Keras one
    acts, grads = [], []
    for i in range(x.shape[0]):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(probe)
            a, z = both(tf.constant(x[i : i + 1]), training=False)
            z = tf.reshape(z, (1, -1))
            per = [z[0, k] for k in range(z.shape[1])]
        acts.append(a.numpy()[0])
        grads.append(np.stack([tape.gradient(s, probe).numpy()[0] for s in per]))
    return np.stack(acts), np.stack(grads)


def _split_reference(model: keras.Model, x: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray] | None:
    """When nothing after ``target`` reads tensors from before it: two public sub-models, cut there."""
    import tensorflow as tf

    layer = next(op for op in model.operations if op.name == target)
    last = model.layers[-1]
    logits_t = last.input
    try:
        features = keras.Model(model.inputs, layer.output)
        head = keras.Model(layer.output, logits_t)
    except ValueError:  # "not connected": a residual from before the target
        return None
    with tf.GradientTape(persistent=True) as tape:
        a = tf.convert_to_tensor(features(tf.constant(x), training=False))
        tape.watch(a)
        z = tf.reshape(head(a, training=False), (x.shape[0], -1))
        if isinstance(last, keras.layers.Dense):
            z = z @ last.kernel + last.bias  # the Dense without its activation
        per = [tf.reduce_sum(z[:, k]) for k in range(z.shape[1])]
    return a.numpy(), np.stack([tape.gradient(s, a).numpy() for s in per], axis=1)


def reference_gradcam(a: np.ndarray, g: np.ndarray, prefix: int = 0) -> np.ndarray:
    """Grad-CAM in float64 (maps (B, K, h, w) in [0, 1]); token outputs (B, N, C) are first put on
    their square patch grid after dropping ``prefix`` tokens."""
    a = a.astype(np.float64)
    g = g.astype(np.float64)
    if a.ndim == 3:
        n = a.shape[1] - prefix
        side = round(float(np.sqrt(n)))
        a = a[:, prefix:].reshape(a.shape[0], side, side, -1)
        g = g[:, :, prefix:].reshape(g.shape[0], g.shape[1], side, side, -1)
    weights = g.mean(axis=(2, 3))  # (B, K, C)
    raw = np.maximum(np.einsum("bijc,bkc->bkij", a, weights), 0.0)
    lo = raw.min(axis=(2, 3), keepdims=True)
    hi = raw.max(axis=(2, 3), keepdims=True)
    rng = hi - lo
    return np.where(rng > 1e-6 * hi, (raw - lo) / np.where(rng > 0, rng, 1.0), 0.0)

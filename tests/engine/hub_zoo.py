"""keras-hub's image classifiers, each built from its own classes with a small config and random
weights (nothing downloaded), and an independent Grad-CAM reference for any of them.

``HUB``: name -> (builder(size, preprocessor) -> task, input size). With ``preprocessor`` the task
carries its own ``XImageClassifierPreprocessor`` (pixels scaled by 1/255 at the task's size), as a
preset's task does: its ``predict()`` applies it, its ``call()`` does not. Used by
``sweep_keras_hub.py`` and ``sweep_model_files.py`` (scripts, not CI tests).

``hub_reference`` never uses the engine: the task runs eagerly under a plain ``tf.GradientTape``,
the target layer (found by its ``outer/inner`` path through ``_flatten_layers``) has its ``call``
wrapped on the instance to watch its output, and the task's output is the logits (tasks are built
with ``activation=None``, keras-hub's default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

SIZE = 32


def _task(task_name: str, backbone: Any, size: int, preprocessor: bool, **kw: Any) -> keras.Model:
    import keras_hub

    task_cls = getattr(keras_hub.models, task_name)
    pre = None
    if preprocessor:
        pcls = task_cls.preprocessor_cls or keras_hub.models.ImageClassifierPreprocessor  # generic task
        converter = pcls.image_converter_cls or keras_hub.layers.ImageConverter
        pre = pcls(image_converter=converter(image_size=(size, size), scale=1 / 255.0))
    return task_cls(backbone=backbone, preprocessor=pre, num_classes=3, **kw)


def _resnet_backbone(size: int | None, block: str, v2: bool = False) -> Any:
    import keras_hub

    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type=block,
        use_pre_activation=v2, image_shape=(size, size, 3),
    )


def resnet(block: str = "basic_block", v2: bool = False) -> Callable[[int, bool], keras.Model]:
    def build(size: int, pre: bool) -> keras.Model:
        return _task("ResNetImageClassifier", _resnet_backbone(size, block, v2), size, pre)

    return build


def resnet_any_size(size: int, pre: bool) -> keras.Model:
    """A ResNet task whose Input leaves H and W open, as keras-hub's presets have it."""
    return _task("ResNetImageClassifier", _resnet_backbone(None, "basic_block"), size, pre)


def vgg(pooling: str = "avg") -> Callable[[int, bool], keras.Model]:
    def build(size: int, pre: bool) -> keras.Model:
        import keras_hub

        bb = keras_hub.models.VGGBackbone(
            stackwise_num_repeats=[1, 1], stackwise_num_filters=[8, 16], image_shape=(size, size, 3)
        )
        return _task("VGGImageClassifier", bb, size, pre, pooling=pooling, pooling_hidden_dim=16)

    return build


def densenet(size: int, pre: bool) -> keras.Model:
    import keras_hub

    bb = keras_hub.models.DenseNetBackbone(
        stackwise_num_repeats=[1, 1], growth_rate=8, image_shape=(size, size, 3)
    )
    return _task("DenseNetImageClassifier", bb, size, pre)


def efficientnet(size: int, pre: bool) -> keras.Model:
    import keras_hub

    bb = keras_hub.models.EfficientNetBackbone(
        stackwise_width_coefficients=[0.25] * 3, stackwise_depth_coefficients=[0.5] * 3,
        stackwise_kernel_sizes=[3, 3, 3], stackwise_num_repeats=[1, 1, 1],
        stackwise_input_filters=[32, 16, 24], stackwise_output_filters=[16, 24, 40],
        stackwise_expansion_ratios=[1, 4, 4], stackwise_squeeze_and_excite_ratios=[0.25, 0.25, 0.0],
        stackwise_strides=[1, 2, 2], stackwise_block_types=["v1", "v1", "fused"],
        input_shape=(size, size, 3), num_features=64,
    )
    return _task("EfficientNetImageClassifier", bb, size, pre)


def mobilenet(size: int, pre: bool) -> keras.Model:
    import keras_hub

    bb = keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[16], [32, 32]], stackwise_num_blocks=[1, 2],
        stackwise_num_filters=[[8], [16, 16]], stackwise_kernel_size=[[3], [5, 5]],
        stackwise_num_strides=[[2], [2, 1]], stackwise_se_ratio=[[None], [0.25, 0.25]],
        stackwise_activation=[["relu"], ["hard_swish", "hard_swish"]], stackwise_padding=[[1], [2, 2]],
        output_num_filters=32, input_activation="hard_swish", output_activation="hard_swish",
        input_num_filters=8, depthwise_filters=8, depthwise_stride=2, depthwise_residual=False,
        last_layer_filter=32, squeeze_and_excite=0.5, image_shape=(size, size, 3),
    )
    return _task("MobileNetImageClassifier", bb, size, pre, num_features=32)


def cspnet(size: int, pre: bool) -> keras.Model:
    import keras_hub

    bb = keras_hub.models.CSPNetBackbone(
        stem_filters=8, stem_kernel_size=3, stem_strides=1, stackwise_depth=[1, 1, 1],
        stackwise_strides=[1, 2, 2], stackwise_num_filters=[8, 16, 32], block_type="dark_block",
        stage_type="dark", image_shape=(size, size, 3),
    )
    return _task("CSPNetImageClassifier", bb, size, pre)


def xception(size: int, pre: bool) -> keras.Model:
    import keras_hub

    bb = keras_hub.models.XceptionBackbone(
        stackwise_conv_filters=[[8, 16], [16, 32], [32, 32]], stackwise_pooling=[True, True, False],
        image_shape=(size, size, 3),
    )
    return _task("XceptionImageClassifier", bb, size, pre)


def deit(size: int, pre: bool) -> keras.Model:
    import keras_hub

    bb = keras_hub.models.DeiTBackbone(
        image_shape=(size, size, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32,
    )
    return _task("DeiTImageClassifier", bb, size, pre)


def vit(pooling: str = "token", class_token: bool = True) -> Callable[[int, bool], keras.Model]:
    def build(size: int, pre: bool) -> keras.Model:
        import keras_hub

        bb = keras_hub.models.ViTBackbone(
            image_shape=(size, size, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
            use_class_token=class_token,
        )
        return _task("ViTImageClassifier", bb, size, pre, pooling=pooling)

    return build


def mit(size: int, pre: bool) -> keras.Model:
    import keras_hub

    bb = keras_hub.models.MiTBackbone(
        layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2], layerwise_sr_ratios=[2, 1],
        max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2], hidden_dims=[8, 16],
        image_shape=(size, size, 3),
    )
    return _task("MiTImageClassifier", bb, size, pre)


def hgnetv2(size: int, pre: bool) -> keras.Model:
    import keras_hub

    bb = keras_hub.models.HGNetV2Backbone(
        depths=[1, 1], embedding_size=8, hidden_sizes=[16, 32], stem_channels=[3, 8, 8], hidden_act="relu",
        use_learnable_affine_block=False,
        stackwise_stage_filters=[(8, 8, 16, 1, 1, 3), (16, 8, 32, 1, 1, 3)],
        apply_downsample=[False, True], use_lightweight_conv_block=[False, False],
        image_shape=(size, size, 3),
    )
    return _task("HGNetV2ImageClassifier", bb, size, pre)


def swin(size: int, pre: bool) -> keras.Model:
    import keras_hub

    bb = keras_hub.models.SwinTransformerBackbone(
        image_shape=(size, size, 3), embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4,
        patch_size=4, drop_path=0.0,
    )
    return _task("SwinTransformerImageClassifier", bb, size, pre)


def mobilenetv5(size: int, pre: bool) -> keras.Model:
    import keras_hub

    per_block: dict[str, Any] = {
        "stackwise_block_types": [["er"], ["uir", "uir"]], "stackwise_num_filters": [[8], [16, 16]],
        "stackwise_strides": [[2], [2, 1]], "stackwise_act_layers": [["relu"], ["relu", "relu"]],
        "stackwise_exp_ratios": [[2.0], [2.0, 2.0]], "stackwise_se_ratios": [[0.0], [0.0, 0.0]],
        "stackwise_dw_kernel_sizes": [[0], [5, 5]], "stackwise_exp_kernel_sizes": [[3], [0, 0]],
        "stackwise_pw_kernel_sizes": [[1], [0, 0]], "stackwise_use_cpe": [[False], [False, False]],
    }
    for key in ("dw_start_kernel_sizes", "dw_end_kernel_sizes", "num_heads", "key_dims", "value_dims",
                "kv_strides"):
        per_block[f"stackwise_{key}"] = [[0], [0, 0]]
    bb = keras_hub.models.MobileNetV5Backbone(
        **per_block, stackwise_num_blocks=[1, 2], use_msfa=False, num_features=32, stem_size=8,
        image_shape=(size, size, 3),
    )
    return _task("MobileNetV5ImageClassifier", bb, size, pre, head_hidden_size=32)


def generic_resnet(size: int, pre: bool) -> keras.Model:
    """keras-hub's generic ``ImageClassifier`` over a ResNet-vd backbone."""
    return _task("ImageClassifier", _resnet_backbone(size, "bottleneck_block_vd"), size, pre)


def generic_dinov2(size: int, pre: bool) -> keras.Model:
    """The generic ``ImageClassifier`` over DINOv2 (keras-hub's own pooler refuses its tokens)."""
    import keras_hub

    bb = keras_hub.models.DINOV2Backbone(
        patch_size=8, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
        image_shape=(size, size, 3), position_embedding_shape=(size, size, 3),
    )
    return _task("ImageClassifier", bb, size, pre)


HUB: dict[str, tuple[Callable[[int, bool], keras.Model], int]] = {
    "resnet": (resnet(), SIZE),
    "resnet_v2": (resnet(v2=True), SIZE),
    "resnet_bottleneck_vd": (resnet("bottleneck_block_vd"), SIZE),
    "resnet_any_size": (resnet_any_size, SIZE),
    "vgg": (vgg(), 28),  # 7x7 out of the backbone, as VGG16 at 224: its head's 7x7 conv leaves 1x1
    "vgg_flatten": (vgg("flatten"), SIZE),
    "densenet": (densenet, SIZE),
    "efficientnet": (efficientnet, SIZE),
    "mobilenet": (mobilenet, SIZE),
    "cspnet": (cspnet, SIZE),
    "xception": (xception, SIZE),
    "deit": (deit, SIZE),
    "vit_token": (vit(), SIZE),
    "vit_gap": (vit("gap"), SIZE),
    "vit_gap_no_class_token": (vit("gap", class_token=False), SIZE),
    "mit": (mit, SIZE),
    "hgnetv2": (hgnetv2, SIZE),
    "swin": (swin, SIZE),
    "mobilenetv5": (mobilenetv5, SIZE),
    "generic_resnet": (generic_resnet, SIZE),
    "generic_dinov2": (generic_dinov2, SIZE),
}


def find_layer(model: keras.Model, path: str) -> Any:
    """The layer at ``outer/inner/leaf`` (an ``@k`` call suffix ignored)."""
    obj: Any = model
    for part in path.split("/"):
        name = part.split("@")[0]
        kids = [k for k in obj._flatten_layers(include_self=False, recursive=False) if k.name == name]
        kids = kids or [k for k in obj._flatten_layers(include_self=False, recursive=True) if k.name == name]
        if not kids:
            raise KeyError(f"{path}: no {name!r} under {obj.name!r}")
        obj = kids[0]
    return obj


def hub_reference(model: keras.Model, x: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(activations (B, *shape), d logit_k / d activations (B, K, *shape)) at ``target`` for images
    ``x`` as the task's call() takes them (already preprocessed)."""
    import tensorflow as tf

    layer = find_layer(model, target)
    original = layer.call
    seen: dict[str, Any] = {}
    with tf.GradientTape(persistent=True) as tape:

        def watched(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            tape.watch(out)
            seen["a"] = out
            return out

        layer.call = watched
        try:
            z = tf.reshape(model(tf.constant(x), training=False), (x.shape[0], -1))
        finally:
            del layer.call
        per = [tf.reduce_sum(z[:, k]) for k in range(z.shape[1])]
    a = seen["a"]
    return a.numpy(), np.stack([tape.gradient(s, a).numpy() for s in per], axis=1)

"""The server's words, defined once: what a model configuration and the engine accept.

Imported by every layer (the engine implements these names; the model repository and the CLI
validate against them; the front maps the wire enums onto them). Pure Python: importing it loads
neither TensorFlow nor gRPC. ``tests/test_vocabulary.py`` checks that the engine's registries
(methods, preprocessing, colormaps) have exactly these keys and that the wire enums
(``camserve_proto.vocabulary``) name exactly these methods and colormaps.
"""

from __future__ import annotations

from pathlib import Path

#: CAM-family methods, in the order the docs list them (the engine's registry keys).
METHODS: tuple[str, ...] = ("cam", "gradcam", "gradcam++", "layercam", "hirescam", "xgradcam", "eigencam")
#: Preprocessing applied inside the compiled step to uint8 RGB pixels (Keras applications' names).
PREPROCESSING: tuple[str, ...] = ("caffe", "tf", "torch", "none")
#: What a model reports as its preprocessing (``ModelSummary.preprocessing``, GetModel) when it carries
#: its own preprocessor, which the engine runs on pixels 0..255 (a keras-hub task's, whose config says
#: "none"): ``own:<the preprocessor's class>``, e.g. ``own:ViTImageClassifierPreprocessor``.
OWN_PREPROCESSOR = "own"
#: What the maps differentiate: the pre-softmax logit (default) or the probability.
SCORES: tuple[str, ...] = ("logits", "probability")
#: How the step is compiled: ``auto`` = graph on CPU, XLA on GPU (and always XLA on JAX).
COMPILE_MODES: tuple[str, ...] = ("auto", "xla", "graph")
#: Keras backends a worker can run.
BACKENDS: tuple[str, ...] = ("tensorflow", "jax")
#: Colormaps of heatmap overlays (OpenCV's of the same names).
COLORMAPS: tuple[str, ...] = ("jet", "turbo", "viridis", "inferno")
#: Model files the engine opens: Keras 3 native, and legacy HDF5 (tf.keras 2) through Keras 3's loader.
MODEL_SUFFIXES: tuple[str, ...] = (".keras", ".h5", ".hdf5")


def saved_model_refusal(path: Path) -> str:
    """The message for a TensorFlow SavedModel directory: why not, and the conversion that works.

    tf.keras 2 wrote ``keras_metadata.pb`` beside the graph, and tf.keras 2 can re-open its layers;
    Keras 3's ``model.export()`` (and ``tf.saved_model.save``) keep only the traced functions, so the
    only way out there is to save the Keras model itself."""
    why = (
        f"{path} is a TensorFlow SavedModel directory; Keras 3 cannot re-open a SavedModel as a model "
        "with layers (only as an inference-only TFSMLayer, which has nothing to put a target on). "
    )
    if (path / "keras_metadata.pb").is_file():
        return why + (
            "Convert it once where it was made (TensorFlow 2.x with tf.keras 2, e.g. tf_keras): "
            "`m = tf.keras.models.load_model(DIR); m.save('model.h5')` "
            "(or `m.save('model.keras')` with Keras 3), "
            "then point model_file at that file"
        )
    return why + (
        "It has no keras_metadata.pb, so it was written by Keras 3's model.export() or tf.saved_model.save, "
        "which keep the traced functions and no layers: nothing can turn it back into a Keras model. Save "
        "the model itself where it is built, `model.save('model.keras')` (export() is for serving "
        "predictions, not for explaining them), then point model_file at that file"
    )


SAVED_MODEL_FILES: tuple[str, ...] = ("saved_model.pb", "saved_model.pbtxt")


def saved_model_dir(path: Path) -> Path | None:
    """The TensorFlow SavedModel directory ``path`` is, or whose graph file it names (a user pointing
    at ``DIR/saved_model.pb``); None otherwise."""
    if path.name in SAVED_MODEL_FILES and path.is_file():
        return path.parent
    if path.is_dir() and any((path / n).is_file() for n in SAVED_MODEL_FILES):
        return path
    return None

"""The server's words, defined once: what a model configuration and the engine accept.

Imported by every layer (the engine implements these names; the model repository and the CLI
validate against them; the front maps the wire enums onto them). Pure Python: importing it loads
neither TensorFlow nor gRPC. ``tests/test_vocabulary.py`` checks that the engine's registries
(methods, preprocessing, colormaps) have exactly these keys and that the wire enums
(``camserve_proto.vocabulary``) name exactly these methods and colormaps.
"""

from __future__ import annotations

#: CAM-family methods, in the order the docs list them (the engine's registry keys).
METHODS: tuple[str, ...] = ("cam", "gradcam", "gradcam++", "layercam", "hirescam", "xgradcam", "eigencam")
#: Preprocessing applied inside the compiled step to uint8 RGB pixels (Keras applications' names).
PREPROCESSING: tuple[str, ...] = ("caffe", "tf", "torch", "none")
#: What the maps differentiate: the pre-softmax logit (default) or the probability.
SCORES: tuple[str, ...] = ("logits", "probability")
#: How the step is compiled: ``auto`` = graph on CPU, XLA on GPU (and always XLA on JAX).
COMPILE_MODES: tuple[str, ...] = ("auto", "xla", "graph")
#: Keras backends a worker can run.
BACKENDS: tuple[str, ...] = ("tensorflow", "jax")
#: Colormaps of heatmap overlays (OpenCV's of the same names).
COLORMAPS: tuple[str, ...] = ("jet", "turbo", "viridis", "inferno")

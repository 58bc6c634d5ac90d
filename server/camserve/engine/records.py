"""Plain data passed between the engine's parts and across the worker's pipe (no TF, no Keras).

Every record here is a dataclass of builtins and NumPy arrays, so ``dataclasses.asdict`` and pickle work
on it; the server's parent process imports these names without importing TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Method names accepted by the engine, in the order the docs list them.
METHODS: tuple[str, ...] = ("cam", "gradcam", "gradcam++", "layercam", "hirescam", "xgradcam", "eigencam")
#: Preprocessing modes applied inside the compiled step to uint8 RGB images.
PREPROCESSING: tuple[str, ...] = ("caffe", "tf", "torch", "none")
COMPILE_MODES: tuple[str, ...] = ("auto", "xla", "graph")
SCORES: tuple[str, ...] = ("logits", "probability")


@dataclass(frozen=True)
class ItemSpec:
    """What to explain for one image of a batch.

    ``class_index`` set: one map for that class (``top_k`` is then ignored). Unset: maps for the
    ``top_k`` best classes of the image, best first.
    """

    method: str = "gradcam"
    class_index: int | None = None
    top_k: int = 1


@dataclass
class ClassMap:
    """One explained class: its index, its score (logit or probability) and its normalised heatmap."""

    class_index: int
    score: float
    heatmap: np.ndarray  # (h, w) float32 in [0, 1]
    all_zero: bool  # the raw map had no positive contrast: heatmap is all zeros, not NaN


@dataclass
class ItemResult:
    """Result for one image: the model's class probabilities and one ClassMap per explained class."""

    probabilities: np.ndarray  # (N,) float32
    maps: list[ClassMap] = field(default_factory=list)


@dataclass
class LayerInfo:
    """A candidate target layer: path name ("outer/inner/sub"; "name@k" = the k-th call of a layer
    called several times), its grid and channels, and whether CAM applies there.

    ``kind`` "conv": the output is (B, h, w, C). "tokens": it is (B, N, C) with N = prefix_tokens +
    h * w; maps are on the patch grid (h, w) after dropping the ``prefix_tokens`` leading tokens.
    """

    name: str
    grid: list[int]  # [h, w]
    channels: int
    cam_supported: bool
    kind: str = "conv"
    prefix_tokens: int = 0


@dataclass
class ModelSummary:
    """What a worker reports about a loaded model; ``dataclasses.asdict`` gives a picklable dict."""

    input_shape: list[int]  # [H, W, C]
    num_classes: int
    target_layer: str
    grid: list[int]  # [h, w] of the target layer
    channels: int
    cam_supported: bool
    cam_reason: str  # why CAM is refused ("" when supported)
    layers: list[LayerInfo]
    buckets: list[int]
    compile_mode: str  # the resolved mode: "xla" or "graph"
    backend: str
    preprocessing: str
    score: str  # what ClassMap.score holds: "logits" or "probability" (forced when head_kind says so)
    methods: list[str]
    target_reason: str = ""  # why this target: "requested", or how the automatic rule chose it
    target_kind: str = "conv"  # "conv" or "tokens" (see LayerInfo)
    prefix_tokens: int = 0
    head: str = ""  # how the output head was read (where the logits are taken), in words
    head_kind: str = "softmax"  # "softmax" | "sigmoid" (multi-label) | "binary" (one unit) | "probability"


@dataclass
class StepOutput:
    """What one compiled step returns, as NumPy (the backend seam's contract).

    ``classes`` (B, K) int32 are the class indices the step resolved (``targets`` of ``-1 - r`` mean
    the r-th best class); they come from the step so that ties are resolved once, on the device.
    """

    probabilities: np.ndarray  # (B, N) float32
    scores: np.ndarray  # (B, K) float32
    activations: np.ndarray  # (B, h, w, C) float32
    gradients: np.ndarray  # (B, K, h, w, C) float32
    classes: np.ndarray  # (B, K) int32

"""The engine's internal record: what one compiled step returns (the backend seam's contract).

The records that leave the engine (``ItemSpec``, ``ItemResult``, ``ClassMap``, ``ModelSummary``,
``LayerInfo``) are shared by every layer of the server and live in :mod:`camserve.records`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from camserve.vocabulary import METHODS


@dataclass
class StepOutput:
    """What one compiled step returns, as NumPy (the backend seam's contract).

    ``classes`` (B, K) int32 are the class indices the step resolved (``targets`` of ``-1 - r`` mean
    the r-th best class); they come from the step so that ties are resolved once, on the device.
    Called with per-image ``methods``, the step returns each image's raw ``maps`` and leaves the
    activations and gradients on the device (``None`` here), except the activations when an image
    asks for Eigen-CAM (``wants_activations``: its SVD runs on the host, and its maps here are
    zeros); called without, it returns those tensors instead (``maps`` is ``None``): the view tests
    and model inspection need.
    """

    probabilities: np.ndarray  # (B, N) float32
    scores: np.ndarray  # (B, K) float32
    classes: np.ndarray  # (B, K) int32
    maps: np.ndarray | None = None  # (B, K, h, w) float32, raw (before ``methods.normalise``)
    activations: np.ndarray | None = None  # (B, h, w, C) float32
    gradients: np.ndarray | None = None  # (B, K, h, w, C) float32


def step_inputs(targets: np.ndarray, methods: np.ndarray | None, max_k: int) -> tuple[np.ndarray, np.ndarray]:
    """What both backends' steps take besides the images: ``targets`` (B, K) padded with -1 to
    (B, max_k) int32 (K is a traced scalar, not a shape), and the (B,) int32 method codes (zeros,
    any method, when None). Raises ``ValueError`` unless 1 <= K <= max_k."""
    b, k = targets.shape
    if not 1 <= k <= max_k:
        raise ValueError(f"targets ask for {k} classes per image; this step explains 1..{max_k}")
    padded = np.full((b, max_k), -1, np.int32)
    padded[:, :k] = targets
    return padded, np.zeros(b, np.int32) if methods is None else np.asarray(methods, np.int32)


def wants_activations(codes: np.ndarray) -> bool:
    """Whether a batch's method codes (``methods.CODES``) ask for Eigen-CAM, made on the host from the
    activations."""
    return bool(np.any(np.asarray(codes) == METHODS.index("eigencam")))

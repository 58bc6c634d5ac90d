"""The engine's internal record: what one compiled step returns (the backend seam's contract).

The records that leave the engine (``ItemSpec``, ``ItemResult``, ``ClassMap``, ``ModelSummary``,
``LayerInfo``) are shared by every layer of the server and live in :mod:`camserve.records`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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

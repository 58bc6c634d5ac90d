"""Localisation scores of heatmaps against ground-truth boxes (NumPy + OpenCV, no TensorFlow).

Two standard protocols, both on the map upsampled (bilinear) to the image size:

- pointing game: a hit when the map's maximum falls inside the object's box;
- box accuracy (CAM paper, Zhou et al. 2016): keep pixels >= 20% of the map's maximum, take the box
  around the largest connected component (8-connectivity), and count it correct when its IoU with
  the true box is >= 0.5.

Boxes are ``(x0, y0, x1, y1)`` with exclusive ends, as the digits generator writes them. A map that is
all zero points nowhere and has no box: it counts as a miss for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

Box = tuple[int, int, int, int]

BOX_THRESHOLD: float = 0.2
"""Fraction of the map's maximum kept before the largest connected component (CAM paper)."""

IOU_THRESHOLD: float = 0.5
"""IoU at which a predicted box counts as correct."""


def upsample(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (h, w) map to ``size`` = (height, width), as overlays are drawn."""
    height, width = size
    return cv2.resize(np.asarray(heatmap, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def pointing_hit(upsampled: np.ndarray, box: Box) -> bool:
    """True when the map's maximum (first one in row-major order on ties) lies inside ``box``."""
    if not np.any(upsampled > 0):
        return False
    y, x = np.unravel_index(int(np.argmax(upsampled)), upsampled.shape)
    x0, y0, x1, y1 = box
    return bool(x0 <= x < x1 and y0 <= y < y1)


def threshold_box(upsampled: np.ndarray, fraction: float = BOX_THRESHOLD) -> Box | None:
    """Box around the largest connected component of pixels >= ``fraction`` * max (None if no peak)."""
    peak = float(np.max(upsampled))
    if not peak > 0:
        return None
    mask = (upsampled >= fraction * peak).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[largest, :4])
    return x, y, x + w, y + h


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two exclusive-end boxes (0 when either is empty)."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class LocalisationScore:
    """Scores of one set of maps: hit rates in [0, 1] and the mean IoU of the thresholded boxes."""

    images: int
    pointing_game: float
    box_accuracy: float
    mean_iou: float
    all_zero: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def score_maps(
    heatmaps: Sequence[np.ndarray], boxes: np.ndarray | Sequence[Box], image_size: tuple[int, int]
) -> LocalisationScore:
    """Pointing game and CAM-protocol box accuracy of ``heatmaps`` (any grid) against ``boxes``."""
    if len(heatmaps) != len(boxes):
        raise ValueError(f"got {len(heatmaps)} heatmaps but {len(boxes)} boxes")
    if len(heatmaps) == 0:
        raise ValueError("no heatmaps to score")
    hits = correct = zeros = 0
    ious: list[float] = []
    for heatmap, raw_box in zip(heatmaps, boxes, strict=True):
        box: Box = tuple(int(v) for v in raw_box)  # type: ignore[assignment]
        up = upsample(heatmap, image_size)
        zeros += not np.any(up > 0)
        hits += pointing_hit(up, box)
        found = threshold_box(up)
        iou = box_iou(found, box) if found is not None else 0.0
        ious.append(iou)
        correct += iou >= IOU_THRESHOLD
    n = len(heatmaps)
    return LocalisationScore(n, hits / n, correct / n, float(np.mean(ious)), zeros)

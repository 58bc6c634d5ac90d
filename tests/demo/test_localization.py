"""Localisation scoring (pointing game, CAM-protocol boxes) against brute-force references."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from camserve.demo.localization import box_iou, pointing_hit, score_maps, threshold_box, upsample


def _mask(box: tuple[int, int, int, int], size: int = 40) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[box[1] : box[3], box[0] : box[2]] = True
    return m


def test_iou_matches_pixel_counting() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = rng.integers(0, 40, 4)
        b = rng.integers(0, 40, 4)
        box_a = (min(a[0], a[2]), min(a[1], a[3]), max(a[0], a[2]) + 1, max(a[1], a[3]) + 1)
        box_b = (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]) + 1, max(b[1], b[3]) + 1)
        ma, mb = _mask(box_a, 41), _mask(box_b, 41)
        expected = (ma & mb).sum() / (ma | mb).sum()
        assert box_iou(box_a, box_b) == pytest.approx(expected)


def test_threshold_box_takes_the_largest_component_above_20_percent() -> None:
    up = np.zeros((50, 60), np.float32)
    up[5:15, 40:55] = 1.0  # small but strongest blob
    up[20:45, 3:30] = 0.5  # larger blob above 20% of the max
    up[0:50, 0:2] = 0.1  # below the threshold: ignored
    assert threshold_box(up) == (3, 20, 30, 45)
    assert threshold_box(np.zeros((8, 8), np.float32)) is None


def test_pointing_hit_uses_the_maximum_and_misses_on_zero_maps() -> None:
    up = np.zeros((20, 20), np.float32)
    up[12, 7] = 1.0
    assert pointing_hit(up, (5, 10, 8, 13))
    assert not pointing_hit(up, (8, 10, 12, 13))  # exclusive end: x = 7 is left of x0 = 8
    assert not pointing_hit(np.zeros((20, 20), np.float32), (0, 0, 20, 20))


def test_score_maps_on_hand_made_maps() -> None:
    grid = np.zeros((8, 8), np.float32)
    grid[2:4, 2:4] = 1.0  # a block at pixels 16..32 of a 64-pixel image
    boxes = [(16, 16, 32, 32), (40, 40, 60, 60)]
    score = score_maps([grid, grid], boxes, (64, 64))
    assert score.images == 2 and score.pointing_game == 0.5 and score.box_accuracy == 0.5
    found = threshold_box(upsample(grid, (64, 64)))
    assert found is not None and box_iou(found, boxes[0]) >= 0.5
    with pytest.raises(ValueError, match="boxes"):
        score_maps([grid], boxes, (64, 64))


def test_the_report_table_has_a_column_pair_per_set_and_the_accuracy_row() -> None:
    """bench.engine.localization's table (what README quotes), on a hand-made two-set report."""
    root = str(Path(__file__).resolve().parents[2])  # bench/ is a top-level folder, not a package
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench.engine.localization import PRIOR, table

    def result(accuracy: float, pointing: float) -> dict:
        row = {
            "pointing_game": pointing,
            "box_accuracy": 0.5,
            "mean_iou": 0.5,
            "all_zero": 0,
            "ms_per_image": 1,
        }
        return {"accuracy": accuracy, "methods": {"gradcam": row, PRIOR: {**row, "pointing_game": 0.4}}}

    lines = table({"sets": {"generator": result(0.9, 0.95), "printed": result(0.8, 0.91)}}).splitlines()
    assert lines[0] == (
        "| method | generator: pointing game | generator: box accuracy | printed: pointing game "
        "| printed: box accuracy |"
    )
    assert lines[2] == "| accuracy (top-1) | 90.0% | | 80.0% | |"
    assert lines[3] == "| gradcam | 95.0% | 50.0% | 91.0% | 50.0% |"
    assert lines[4].startswith(f"| {PRIOR} | 40.0% |")

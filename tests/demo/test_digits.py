"""The cluttered-digits generator: deterministic, split by source digit, boxes that fit the digit."""

from __future__ import annotations

import numpy as np
import pytest
from camserve.demo import digits
from sklearn.datasets import load_digits


def test_same_arguments_give_the_same_set() -> None:
    a = digits.generate(12, "heldout", seed=3)
    b = digits.generate(12, "heldout", seed=3)
    c = digits.generate(12, "heldout", seed=4)
    assert a.images.shape == (12, digits.CANVAS, digits.CANVAS, 3) and a.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.images, c.images)


def test_split_is_a_stratified_partition_of_the_source_digits() -> None:
    train, held = digits.split_sources("train"), digits.split_sources("heldout")
    labels = load_digits().target
    assert len(set(train) & set(held)) == 0
    assert sorted([*train, *held]) == list(range(len(labels)))
    for d in range(10):
        share = np.sum(labels[held] == d) / np.sum(labels == d)
        assert abs(share - digits.HELD_OUT_FRACTION) < 0.01


def test_held_out_images_use_only_held_out_digits_and_true_labels() -> None:
    data = digits.generate(200, "heldout", seed=0)
    held = set(digits.split_sources("heldout").tolist())
    target = load_digits().target
    for recipe, label in zip(data.recipes, data.labels, strict=True):
        assert recipe.source in held
        assert all(f.source in held for f in recipe.fragments)
        assert label == target[recipe.source]
    # Every source digit is used before any repeats.
    assert len({r.source for r in data.recipes}) == 200


def test_boxes_hold_exactly_the_pixels_the_digit_changed() -> None:
    """Independent check: render each sample without its digit; the difference must sit in the box."""
    data = digits.generate(120, "train", seed=7)
    for image, box, recipe in zip(data.images, data.boxes, data.recipes, strict=True):
        x0, y0, x1, y1 = (int(v) for v in box)
        assert 0 <= x0 < x1 <= digits.CANVAS and 0 <= y0 < y1 <= digits.CANVAS
        changed = np.any(image != digits.render(recipe, include_digit=False), axis=2)
        ys, xs = np.nonzero(changed)
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        # ... and the box is tight: the changed pixels span (nearly) all of it.
        assert xs.max() - xs.min() + 1 >= (x1 - x0) - 2 and ys.max() - ys.min() + 1 >= (y1 - y0) - 2
        # Digit sizes follow the scales (8x8 source, up to 8*scale pixels).
        assert max(x1 - x0, y1 - y0) <= 8 * recipe.scale


def test_fragments_stay_off_the_digit_and_are_present() -> None:
    data = digits.generate(200, "train", seed=1)
    counts = [len(r.fragments) for r in data.recipes]
    assert min(counts) >= 1 and np.mean(counts) > 2
    for box, recipe in zip(data.boxes, data.recipes, strict=True):
        for f in recipe.fragments:
            fx1 = f.x + (f.cols[1] - f.cols[0]) * f.scale
            fy1 = f.y + (f.rows[1] - f.rows[0]) * f.scale
            apart = fx1 <= box[0] or box[2] <= f.x or fy1 <= box[1] or box[3] <= f.y
            assert apart, f"fragment {f} overlaps the digit box {box}"


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="split"):
        digits.generate(4, "test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        digits.generate(0)

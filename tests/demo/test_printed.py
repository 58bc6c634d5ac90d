"""The printed held-out set: deterministic, made differently, boxes that fit the typeset digit."""

from __future__ import annotations

import numpy as np
import pytest
from camserve.demo import digits, printed
from camserve.demo.canvas import overlaps


@pytest.fixture(scope="module")
def data():
    return printed.generate(120, seed=5)


def test_same_arguments_give_the_same_set(data) -> None:
    again = printed.generate(120, seed=5)
    other = printed.generate(12, seed=6)
    assert data.images.shape == (120, digits.CANVAS, digits.CANVAS, 3) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images, again.images)
    np.testing.assert_array_equal(data.boxes, again.boxes)
    assert not np.array_equal(data.images[:12], other.images)
    # Its random streams are not the generator's for the same seed.
    assert not np.array_equal(data.images[:12], digits.generate(12, "heldout", seed=5).images)


def test_labels_are_balanced_and_match_the_typeset_text(data) -> None:
    assert np.bincount(data.labels, minlength=10).tolist() == [12] * 10
    for recipe, label in zip(data.recipes, data.labels, strict=True):
        assert recipe.digit.text == str(label) and recipe.label == label


def test_boxes_hold_exactly_the_pixels_the_digit_changed(data) -> None:
    """Render each sample without its digit (before JPEG); the difference must sit in the box, tightly."""
    for box, recipe in zip(data.boxes, data.recipes, strict=True):
        x0, y0, x1, y1 = (int(v) for v in box)
        assert 0 <= x0 < x1 <= digits.CANVAS and 0 <= y0 < y1 <= digits.CANVAS
        with_digit = printed.render(recipe, compress=False)
        changed = np.any(with_digit != printed.render(recipe, include_digit=False, compress=False), axis=2)
        ys, xs = np.nonzero(changed)
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        assert xs.max() - xs.min() + 1 >= (x1 - x0) - 2 and ys.max() - ys.min() + 1 >= (y1 - y0) - 2


def test_the_digit_is_the_largest_thing_and_clutter_stays_off_it(data) -> None:
    kinds = set()
    for box, recipe in zip(data.boxes, data.recipes, strict=True):
        side = max(box[2] - box[0], box[3] - box[1])
        for c in recipe.clutter:
            kinds.add(c.kind)
            assert not overlaps(c.box, tuple(box))
            assert max(c.w, c.h) <= max(5, int(0.75 * side))
            alpha = printed.clutter_alpha(c)
            assert alpha.shape == (c.h, c.w) and alpha.min() >= 0.0 and alpha.max() <= 1.0
    assert kinds == {"symbol", "piece", "polygon", "cross"}


def test_it_is_made_differently_from_the_training_generator(data) -> None:
    """Fonts, photo or paper grounds, JPEG, scales beyond training's: what the README claims."""
    recipes = data.recipes
    assert {r.digit.face for r in recipes} == set(printed.FACES)
    assert {r.ground[0] for r in recipes} == {"photo", "paper"}
    assert len({r.ground[1] for r in recipes if r.ground[0] == "photo"}) >= 8
    heights = data.boxes[:, 3] - data.boxes[:, 1]
    assert heights.min() <= digits.HEIGHTS[0] + 1 and heights.max() >= digits.HEIGHTS[1] + 2
    jpeg = [r for r in recipes if r.quality]
    assert 0.5 < len(jpeg) / len(recipes) < 0.9
    r = jpeg[0]
    assert not np.array_equal(printed.render(r), printed.render(r, compress=False))


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="positive"):
        printed.generate(0)

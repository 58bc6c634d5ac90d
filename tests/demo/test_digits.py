"""The cluttered-digits generator: deterministic, split by source digit, varied, boxes that fit the digit."""

from __future__ import annotations

import numpy as np
import pytest
from camserve.demo import digits, sketch, strokes
from sklearn.datasets import load_digits


def test_same_arguments_give_the_same_set() -> None:
    a = digits.generate(12, "heldout", seed=3)
    b = digits.generate(12, "heldout", seed=3)
    c = digits.generate(12, "heldout", seed=4)
    assert a.images.shape == (12, digits.CANVAS, digits.CANVAS, 3) and a.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert a.recipes == b.recipes
    assert not np.array_equal(a.images, c.images)


def test_rendering_is_a_pure_function_of_the_recipe() -> None:
    data = digits.generate(20, "train", seed=11)
    for image, recipe in zip(data.images, data.recipes, strict=True):
        np.testing.assert_array_equal(digits.render(recipe), image)


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
    fragments = 0
    for recipe, label in zip(data.recipes, data.labels, strict=True):
        assert recipe.source in held
        for item in recipe.clutter:
            if item.kind == "fragment":
                fragments += 1
                assert item.source in held and target[item.source] != label  # never evidence for it
        assert label == target[recipe.source]
    assert fragments > 50
    # Every source digit is used before any repeats.
    assert len({r.source for r in data.recipes}) == 200


def test_boxes_hold_exactly_the_pixels_the_digit_changed() -> None:
    """Independent check: render each sample without its digit; the difference must sit in the box."""
    data = digits.generate(150, "train", seed=7)
    for image, box, recipe in zip(data.images, data.boxes, data.recipes, strict=True):
        x0, y0, x1, y1 = (int(v) for v in box)
        assert 0 <= x0 < x1 <= digits.CANVAS and 0 <= y0 < y1 <= digits.CANVAS
        changed = np.any(image != digits.render(recipe, include_digit=False), axis=2)
        ys, xs = np.nonzero(changed)
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        # ... and the box is tight: the changed pixels span (nearly) all of it.
        assert xs.max() - xs.min() + 1 >= (x1 - x0) - 2 and ys.max() - ys.min() + 1 >= (y1 - y0) - 2


def test_clutter_stays_off_the_digit_and_is_smaller_than_it() -> None:
    data = digits.generate(200, "train", seed=1)
    counts = [len(r.clutter) for r in data.recipes]
    assert min(counts) >= 0 and np.mean(counts) > 2
    for box, recipe in zip(data.boxes, data.recipes, strict=True):
        side = max(box[2] - box[0], box[3] - box[1])
        for c in recipe.clutter:
            assert not strokes.overlaps(c.box, tuple(box)), (c, box)
            assert max(c.w, c.h) <= max(5, int(0.75 * side))


def test_the_generator_varies_what_the_issue_asks_for() -> None:
    """Glyph source, scale, position, pen, polarity, backgrounds and clutter kinds all vary."""
    data = digits.generate(400, "train", seed=2)
    heights = data.boxes[:, 3] - data.boxes[:, 1]
    assert heights.min() <= 16 and heights.max() >= 44
    assert data.boxes[:, 0].min() <= 2 and data.boxes[:, 2].max() >= digits.CANVAS - 2
    pens = [r.pen for r in data.recipes if r.pen is not None]
    assert {p.dilate for p in pens} == {-1, 0, 1, 2}
    assert min(p.angle for p in pens) < -10 and max(p.angle for p in pens) > 10
    sketches = [r.sketch for r in data.recipes if r.sketch is not None]
    assert len(sketches) + len(pens) == len(data)
    assert abs(len(sketches) / len(data) - digits.SKETCH_SHARE) < 0.07
    assert all(s.label == r.label for r in data.recipes if (s := r.sketch) is not None)
    assert {(s.label, s.variant) for s in sketches} == {
        (label, v) for label, variants in sketch.SKELETONS.items() for v in range(len(variants))
    }
    pen_widths = [s.pen for s in sketches]
    assert min(pen_widths) < 2 and max(pen_widths) > 6
    dark = [strokes.luminance(r.color) < strokes.luminance(r.background.color) for r in data.recipes]
    assert 0.2 < np.mean(dark) < 0.4  # DARK_INK_SHARE = 0.3
    assert {r.background.kind for r in data.recipes} == set(strokes.BACKGROUNDS)
    assert {c.kind for r in data.recipes for c in r.clutter} == set(strokes.CLUTTER_KINDS)
    sigmas = np.array([r.noise_sigma for r in data.recipes])
    assert np.mean(sigmas == 0) > 0.05 and sigmas.max() > 20


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="split"):
        digits.generate(4, "test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        digits.generate(0)


def test_every_sketch_variant_draws_a_tight_digit_of_its_size() -> None:
    rng = np.random.default_rng(0)
    for label, variants in sketch.SKELETONS.items():
        for variant in range(len(variants)):
            s = sketch.draw_sketch(rng, label, 40.0)
            s = sketch.Sketch(label, variant, 40.0, s.width, 3.0, 0.0, 0.0, 0.0, s.seed)
            alpha = sketch.sketch_alpha(s)
            assert alpha.dtype == np.float32 and alpha.min() >= 0.0 and alpha.max() <= 1.0
            assert alpha[0].any() and alpha[-1].any() and alpha[:, 0].any() and alpha[:, -1].any()
            # Height = skeleton height + pen width (round caps), within a pixel of anti-aliasing.
            assert abs(alpha.shape[0] - (40.0 + 3.0)) <= 2, (label, variant, alpha.shape)

"""camserve.front.replies.best_classes: the top predictions of a reply, against NumPy's stable argsort."""

from __future__ import annotations

import numpy as np
import pytest
from camserve.front.replies import best_classes


def cases() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = [rng.random(1000).astype(np.float32),                      # ImageNet-sized, distinct
           rng.integers(0, 3, 1000).astype(np.float32),              # many ties at the k-th value
           np.zeros(1000, np.float32),                               # all tied
           rng.random(7).astype(np.float32),                         # fewer classes than 4k
           np.where(rng.random(500) < 0.5, -0.0, 0.0).astype(np.float32)]  # signed zeros tie
    with_nan = rng.random(1000).astype(np.float32)
    with_nan[[3, 500, 999]] = np.nan                                 # NaN sorts last, as in argsort
    mostly_nan = np.full(1000, np.nan, np.float32)
    mostly_nan[[10, 20]] = [0.2, 0.7]                                # fewer than k numbers
    return [*out, with_nan, mostly_nan, rng.random(1000)]            # and float64


@pytest.mark.parametrize("k", [1, 5, 8])
def test_best_classes_is_the_stable_argsort(k: int) -> None:
    for probs in cases():
        got = best_classes(probs, k)
        assert got.tolist() == np.argsort(-probs, kind="stable")[:k].tolist()

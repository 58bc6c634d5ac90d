"""What the sweep scripts share: the Grad-CAM check against a reference and the one-line verdict."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from camserve.records import ItemResult

#: Largest difference allowed between a normalised map and the float64 reference's.
TOL = 1e-3


def reference_check(
    results: Sequence[ItemResult], want: np.ndarray, bad: list[str], notes: list[str]
) -> None:
    """Compare each map of ``results`` (one per image) with ``want`` (B, classes, h, w); note the error."""
    err = max(
        float(np.abs(m.heatmap - want[i, m.class_index]).max()) for i, r in enumerate(results) for m in r.maps
    )
    notes.append(f"ref_err={err:.1e}")
    if err > TOL:
        bad.append("Grad-CAM differs from the reference")


def verdict(bad: list[str], notes: list[str]) -> str:
    """The line's verdict: "ok | notes", or "FAULT what | notes"."""
    return ("FAULT " + "; ".join(bad) + " | " if bad else "ok | ") + " ".join(notes)

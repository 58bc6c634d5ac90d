"""Heatmaps on the client: resize a map here exactly as the server does (NumPy only).

Why: a map at the model-input or original size is a bilinear resize of the conv-grid map, so it
carries nothing the grid map does not. At 4 bytes a pixel a 12-megapixel photo's float32 map is 48 MB
per class, three times the server's message limit; the grid map is a few hundred bytes. The SDK
therefore fetches the grid map and resizes it here when the original size is asked for
(:attr:`camserve_client.OutputOptions.resize_here`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["resize_heatmap"]


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index along one axis: (left source index, right source index, right weight).

    OpenCV's INTER_LINEAR rule, which the server uses: pixel centres aligned
    (``src = (dst + 0.5) * n_in / n_out - 0.5``), clamped at both edges.
    """
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    left = np.floor(pos).astype(np.intp)
    weight = pos - left
    before, after = left < 0, left >= n_in - 1
    left[before], weight[before] = 0, 0.0
    left[after], weight[after] = n_in - 1, 0.0
    return left, np.minimum(left + 1, n_in - 1), weight.astype(np.float32)


def resize_heatmap(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an (h, w) map in [0, 1] to (height, width): float32 in [0, 1].

    Equal to the server's maps at MODEL_INPUT / ORIGINAL size (OpenCV INTER_LINEAR) to float32
    rounding (about 1e-7). Raises ValueError for a map that is not 2-D and non-empty or a size < 1.
    """
    m = np.asarray(heatmap, dtype=np.float32)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"heatmap must be a non-empty (h, w) array, got shape {m.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {height}x{width}")
    if m.shape == (height, width):
        return m.copy()
    y0, y1, wy = _taps(m.shape[0], int(height))
    x0, x1, wx = _taps(m.shape[1], int(width))
    rows = m[y0] * (1.0 - wy)[:, None] + m[y1] * wy[:, None]  # (height, w): cheap, the grid is small
    out = rows[:, x0]
    out *= 1.0 - wx
    out += rows[:, x1] * wx
    return np.clip(out, 0.0, 1.0, out=out)

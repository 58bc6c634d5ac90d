"""Spatial grids of target layers: conv feature maps as they are, transformer tokens as a patch grid.

A convolutional layer's output (B, h, w, C) is already a grid. A vision transformer's blocks output
(B, N, C): N tokens of C channels, where the first ``prefix`` tokens are not image patches (the class
token, distillation or register tokens) and the other ``h * w`` are the patches in row-major order
(ViT, DeiT, Dosovitskiy et al. 2021 sec. 3.1: the image is cut into an h x w grid of P x P patches,
each flattened to one token). Maps are computed on (B, h, w, C) after dropping the prefix tokens,
as pytorch-grad-cam's ``reshape_transform`` does.

The grid is found from the token count and the input shape: the smallest ``prefix`` (0..8) for which
``N - prefix = h * w`` with h : w = H : W exactly (square patches). ``TokenLayout`` overrides either
or both (``token_grid=(14, 14)``, ``prefix_tokens=1``; in config.json ``token_grid``/``prefix_tokens``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from camserve.engine.errors import InvalidInputError

#: Largest number of leading non-patch tokens tried when the layout is not given.
MAX_AUTO_PREFIX = 8
#: A 4-D output is taken for an image grid only if its two axes subsample the image by strides that
#: differ by at most this factor (conv maps: ~1; attention internals (B, N, heads, dim): far more).
MAX_STRIDE_RATIO = 2.0


@dataclass(frozen=True)
class TokenLayout:
    """A user's statement of how token outputs map to the patch grid; None = find it."""

    grid: tuple[int, int] | None = None
    prefix: int | None = None

    @staticmethod
    def of(grid: Any = None, prefix: Any = None) -> TokenLayout:
        """Validate ``token_grid`` ((h, w) positive ints or None) and ``prefix_tokens`` (int >= 0 or None)."""
        g = None
        if grid is not None:
            try:
                h, w = (int(v) for v in grid)
            except (TypeError, ValueError):
                raise InvalidInputError(f"token_grid must be (h, w), got {grid!r}") from None
            if h < 1 or w < 1 or [h, w] != [v for v in grid]:
                raise InvalidInputError(f"token_grid must be two positive integers, got {grid!r}")
            g = (h, w)
        if prefix is not None and (isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0):
            raise InvalidInputError(f"prefix_tokens must be an integer >= 0, got {prefix!r}")
        return TokenLayout(g, prefix)


@dataclass(frozen=True)
class Grid:
    """Where a target's maps live: h x w positions; for tokens, after ``prefix`` leading tokens."""

    h: int
    w: int
    prefix: int = 0
    tokens: bool = False

    @property
    def kind(self) -> str:
        return "tokens" if self.tokens else "conv"

    @property
    def size(self) -> int:
        return self.h * self.w


def conv_grid(shape: tuple[int, ...]) -> Grid | None:
    """The grid of a (h, w, C) output (batch axis removed), else None."""
    if len(shape) == 3 and all(d >= 1 for d in shape):
        return Grid(shape[0], shape[1])
    return None


def token_grid(shape: tuple[int, ...], image_hw: tuple[int, int], layout: TokenLayout) -> Grid | None:
    """The patch grid of a (N, C) token output (batch axis removed), else None (see module docstring)."""
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        return None
    n = shape[0]
    if layout.grid is not None:
        h, w = layout.grid
        prefix = n - h * w
        if prefix < 0 or (layout.prefix is not None and prefix != layout.prefix):
            return None
        return Grid(h, w, prefix, tokens=True)
    prefixes = [layout.prefix] if layout.prefix is not None else range(min(MAX_AUTO_PREFIX, n - 1) + 1)
    for prefix in prefixes:
        hw = _aspect_grid(n - prefix, image_hw)
        if hw is not None:
            return Grid(hw[0], hw[1], prefix, tokens=True)
    return None


def _aspect_grid(n: int, image_hw: tuple[int, int]) -> tuple[int, int] | None:
    """(h, w) with h * w = n and h / w = H / W exactly, else None."""
    if n < 1:
        return None
    big_h, big_w = image_hw
    g = math.gcd(big_h, big_w)
    a, b = big_h // g, big_w // g  # h = k a, w = k b, n = k^2 a b
    if n % (a * b):
        return None
    k = math.isqrt(n // (a * b))
    if k * k * a * b != n:
        return None
    return k * a, k * b


def image_like(grid: Grid, image_hw: tuple[int, int]) -> bool:
    """Whether both axes subsample the image by similar strides (see MAX_STRIDE_RATIO)."""
    sh, sw = image_hw[0] / grid.h, image_hw[1] / grid.w
    return max(sh, sw) / min(sh, sw) <= MAX_STRIDE_RATIO


def to_grid(ops: Any, t: Any, grid: Grid) -> Any:
    """(B, N, C) tokens -> (B, h, w, C) without the prefix tokens; conv maps unchanged (``keras.ops``)."""
    if not grid.tokens:
        return t
    return ops.reshape(t[:, grid.prefix :, :], (-1, grid.h, grid.w, t.shape[-1]))


def to_grid_numpy(t: np.ndarray, grid: Grid) -> np.ndarray:
    """NumPy twin of ``to_grid`` (for the analysis of recorded values)."""
    if not grid.tokens:
        return t
    return t[:, grid.prefix :, :].reshape(t.shape[0], grid.h, grid.w, t.shape[-1])

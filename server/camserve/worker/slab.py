"""Pixel slab: a shared-memory buffer the parent (pool) fills and one worker reads (NumPy only).

Why: pickling a batch of 32 images at 224x224x3 through a pipe copies ~4.8 MB twice and holds
the GIL while it does; writing them once into shared memory and sending ``(offset, dtype,
shape)`` triples keeps the pipe traffic to a few hundred bytes per batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from multiprocessing import shared_memory
from typing import NamedTuple

import numpy as np

__all__ = ["ALIGN", "ArrayRef", "Slab", "read_arrays", "slab_bytes_for", "stacked", "write_arrays"]

ALIGN = 64  # cache-line alignment of every array in the slab


class ArrayRef(NamedTuple):
    """Where one array lies in the slab (what the pipe carries instead of the pixels)."""

    offset: int
    dtype: str
    shape: tuple[int, ...]


def slab_bytes_for(max_batch_size: int, shape: Sequence[int], itemsize: int = 4) -> int:
    """Bytes needed for ``max_batch_size`` arrays of ``shape`` (float32 worst case by default)."""
    one = int(np.prod(shape)) * itemsize
    return max_batch_size * (one + ALIGN)


def write_arrays(
    buf: memoryview, arrays: Sequence[np.ndarray], start: int = 0, stop: int | None = None
) -> list[ArrayRef]:
    """Copy ``arrays`` into ``buf[start:stop]`` one after the other (aligned); raise if they do not fit.

    Offsets in the returned refs are from the start of ``buf`` (what the reader maps), so a slab can
    hold several independent regions (the pool's double buffer).
    """
    limit = len(buf) if stop is None else min(stop, len(buf))
    refs: list[ArrayRef] = []
    offset = (start + ALIGN - 1) // ALIGN * ALIGN
    for arr in arrays:
        a = np.ascontiguousarray(arr)
        end = offset + a.nbytes
        if end > limit:
            raise ValueError(
                f"batch needs more than the {limit - start}-byte pixel slab (array of {a.nbytes} bytes)"
            )
        np.ndarray(a.shape, dtype=a.dtype, buffer=buf, offset=offset)[...] = a
        refs.append(ArrayRef(offset, a.dtype.str, tuple(a.shape)))
        offset = (end + ALIGN - 1) // ALIGN * ALIGN
    return refs


def read_arrays(buf: memoryview, refs: Sequence[ArrayRef]) -> list[np.ndarray]:
    """Views (no copy) of the arrays that :func:`write_arrays` placed in ``buf``."""
    return [np.ndarray(tuple(r.shape), dtype=np.dtype(r.dtype), buffer=buf, offset=r.offset) for r in refs]


def stacked(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``np.stack(arrays)``, as a view (no copy) when the arrays already lie back to back in one buffer.

    :func:`write_arrays` places a batch's images one after the other, and an image whose size is a
    multiple of :data:`ALIGN` (224x224x3 and 64x64x3 uint8 are) ends where the next begins, so the
    batch is already a (B, H, W, C) array in the slab: stacking would copy every pixel once more
    (~150 KB an image at 224x224). The view reads the slab, which the pool leaves alone until the
    batch's result is back. Anything else (other buffers, gaps, mixed shapes) is stacked as a copy.
    """
    first = arrays[0]
    step = first.nbytes
    if (not first.flags.c_contiguous or first.base is None
            or any(a.base is not first.base or a.shape != first.shape or a.dtype != first.dtype
                   or not a.flags.c_contiguous for a in arrays)):
        return np.stack(arrays)
    start = first.__array_interface__["data"][0]
    if any(a.__array_interface__["data"][0] != start + i * step for i, a in enumerate(arrays)):
        return np.stack(arrays)
    return np.lib.stride_tricks.as_strided(first, (len(arrays), *first.shape), (step, *first.strides))


class Slab:
    """Owner side of one worker's slab: create, expose, unlink exactly once."""

    def __init__(self, size: int) -> None:
        self._shm = shared_memory.SharedMemory(create=True, size=max(1, size))
        self.name = self._shm.name
        self.size = self._shm.size
        self._closed = False

    @property
    def buf(self) -> memoryview:
        assert self._shm.buf is not None
        return self._shm.buf

    def close(self) -> None:
        """Release and unlink (idempotent), so /dev/shm holds nothing after the server stops."""
        if self._closed:
            return
        self._closed = True
        try:
            self._shm.close()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()

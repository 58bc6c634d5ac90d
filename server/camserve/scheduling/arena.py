"""Pixel arena: fixed-size slots of shared memory a front end writes and the scheduler reads (NumPy only).

Why: sending a 224x224 image (150 KB) through the hub's socket cost ~0.25 CPU-ms in the front end
and more in the supervisor (pickle, two kernel copies, unpickle), measured with ``bench/frontend``:
more than decoding it. Instead each front end owns one arena (created by the supervisor, so it
outlives a front end that dies and is unlinked exactly once): the front end copies the decoded
pixels into a free slot and sends only the slot number; the supervisor reads them as a view and the
pool copies them into the worker's slab as before.

The front end frees a slot when its call ends (answered, failed, or its caller left). A slot freed
because a caller left may be rewritten while the scheduler still holds that (withdrawn) item; if the
item is batched before the withdrawal arrives, its garbage result is dropped with it, and no other
item ever reads that slot. Images that do not fit a slot (float32 tensors, or a full arena) travel
inline in the message instead, so the arena is a fast path, never a limit.
"""

from __future__ import annotations

import contextlib
import math
from multiprocessing import resource_tracker, shared_memory

import numpy as np

__all__ = ["PixelArena"]


class PixelArena:
    """``slots`` slots of ``slot_bytes`` each; :meth:`create` (supervisor) or :meth:`attach` (front end)."""

    def __init__(self, shm: shared_memory.SharedMemory, slots: int, slot_bytes: int, owner: bool) -> None:
        self._shm = shm
        self.name = shm.name
        self.slots = int(slots)
        self.slot_bytes = int(slot_bytes)
        self._owner = owner
        self._free = list(range(self.slots - 1, -1, -1))
        self._closed = False

    @classmethod
    def create(cls, slots: int, slot_bytes: int) -> PixelArena:
        shm = shared_memory.SharedMemory(create=True, size=max(1, slots * slot_bytes))
        return cls(shm, slots, slot_bytes, owner=True)

    @classmethod
    def attach(cls, name: str, slots: int, slot_bytes: int) -> PixelArena:
        shm = shared_memory.SharedMemory(name=name)
        # The supervisor owns and unlinks it: this process's resource tracker must not (Python < 3.13
        # registers every attach, and would unlink the segment when this process exits).
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
        return cls(shm, slots, slot_bytes, owner=False)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def put(self, pixels: np.ndarray) -> int | None:
        """Copy uint8 ``pixels`` into a free slot; the slot number, or None (too large, not uint8, full)."""
        if pixels.dtype != np.uint8 or pixels.nbytes > self.slot_bytes or not self._free:
            return None
        slot = self._free.pop()
        assert self._shm.buf is not None
        np.ndarray(pixels.shape, np.uint8, self._shm.buf, slot * self.slot_bytes)[...] = pixels
        return slot

    def free(self, slot: int) -> None:
        self._free.append(slot)

    def view(self, slot: int, shape: tuple[int, ...]) -> np.ndarray:
        """The uint8 image of ``shape`` in ``slot`` (a view: no copy). Raises ValueError on a bad slot."""
        if not 0 <= slot < self.slots or math.prod(shape) > self.slot_bytes:
            raise ValueError(f"slot {slot} / shape {shape} outside the arena")
        assert self._shm.buf is not None
        return np.ndarray(shape, np.uint8, self._shm.buf, slot * self.slot_bytes)

    def close(self) -> None:
        """Release (and, by the owner, unlink) the segment; idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(BufferError):  # a view still alive: the OS frees it at exit
            self._shm.close()
        if self._owner:
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()

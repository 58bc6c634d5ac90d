"""The board: a few counters every server process reads without asking anyone (no TF, no gRPC).

Front-end processes must decide in microseconds, before decoding, whether a model's queue has room
and whether the server-wide in-flight limit (``--max-inflight``) admits a call; a round trip to the
scheduler would cost more than the decode it saves. So the scheduler publishes each model's queue
depth here, and each front end keeps its own in-flight count in its own slot. The board is a small
file mapped by every process (``mmap``; 8-byte aligned int64 counters, so reads never tear):

* ``depth[m]``: live queued images of model ``m``, written only by the scheduler. Advisory: the
  queue still refuses atomically (``QUEUE_FULL``) at submit.
* ``inflight[f]``: images inside ExplainService calls of front end ``f``, written only by ``f``.
  Admission sums every slot and adds to its own under an ``flock`` on the board file, so the limit
  holds exactly across processes; the kernel drops the lock of a process that dies holding it, and
  the supervisor zeroes a dead front end's slot before restarting it. Releasing needs no lock (a
  reader that sees the old, larger value only refuses conservatively).
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["Board"]


class Board:
    """Shared counters; ``create`` in the supervisor, ``attach`` in front ends (same ``path``)."""

    def __init__(self, path: Path, models: Sequence[str], frontends: int, *, create: bool) -> None:
        self.path = Path(path)
        self.models = list(models)
        self._model_index = {m: i for i, m in enumerate(self.models)}
        self.frontends = int(frontends)
        size = 8 * max(1, len(self.models) + self.frontends)
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        self._fd = os.open(self.path, flags, 0o600)
        if create:
            os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)
        counters = np.ndarray((size // 8,), dtype=np.int64, buffer=self._map)
        self.depth = counters[: len(self.models)]
        self.inflight = counters[len(self.models): len(self.models) + self.frontends]

    @classmethod
    def create(cls, path: Path, models: Sequence[str], frontends: int) -> Board:
        return cls(path, models, frontends, create=True)

    @classmethod
    def attach(cls, path: Path, models: Sequence[str], frontends: int) -> Board:
        return cls(path, models, frontends, create=False)

    # ------------------------------------------------------------------ queue depths (scheduler writes)

    def set_depth(self, model: str, depth: int) -> None:
        i = self._model_index.get(model)
        if i is not None:
            self.depth[i] = depth

    def queue_depth(self, model: str) -> int:
        i = self._model_index.get(model)
        return 0 if i is None else int(self.depth[i])

    # ------------------------------------------------------------------ in-flight images (front ends)

    def admit(self, frontend: int, n: int, limit: int) -> int | None:
        """Count ``n`` more images for ``frontend`` unless the server-wide ``limit`` would be passed.

        Returns None when admitted, else the images in flight now. A call larger than the whole
        limit is admitted when nothing else is in flight, so it can still run. ``limit`` 0: no limit.
        """
        if not limit:
            self.inflight[frontend] += n
            return None
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            total = int(self.inflight.sum())
            if total and total + n > limit:
                return total
            self.inflight[frontend] += n
            return None
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def release(self, frontend: int, n: int) -> None:
        self.inflight[frontend] -= n

    def reset_frontend(self, frontend: int) -> None:
        """Forget a dead front end's in-flight images (its calls died with it)."""
        self.inflight[frontend] = 0

    def total_inflight(self) -> int:
        return int(self.inflight.sum())

    def close(self) -> None:
        del self.depth, self.inflight
        self._map.close()
        os.close(self._fd)

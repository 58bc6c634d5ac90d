"""Cumulative per-model inference statistics, as Triton's ModelStatistics reports them.

Why beside the Prometheus histograms: ``perf_analyzer`` and other Triton tools read the server-side
split (queue, compute) from ModelStatistics as cumulative counts and nanosecond sums, and take
differences between two readings; Prometheus histograms cannot be read back that way without
parsing the exposition. :class:`~camserve.front.metrics.Metrics` feeds both from the same events,
so /metrics and ModelStatistics always agree on what happened.

As Triton counts (its statistics extension): ``success``, ``fail``, ``queue`` and ``compute_infer``
count requests, a call carrying N images (ExplainBatch, or a ModelInfer of N rows) once, with the
call's duration and its images' mean queue and compute times (the images of one call can run in
several batches); ``inference_count`` counts images computed (batch rows) and ``execution_count``
batches. Calls of either protocol count alike. ``compute_infer`` is the compiled step of the batch an
image ran in; decoding and reply building (``compute_input``, ``compute_output`` in Triton) are not
measured apart and show as the rest of ``success``. (The Prometheus queue and compute histograms
observe each image.)

Several processes record: each front end its calls, the supervisor its queue, compute and batch
events. So the counters are a table shared by every process of the server (:func:`shared_table`, a
small file every process maps): one row per process, written only by that process (int64 counters,
so reads never tear), and a reading sums the rows. A front end that dies keeps its counts (its row
stays); a restarted one adds to the same row.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Duration", "InferenceStatistics", "ModelCounters", "shared_table"]

#: The counters of one model in one process's row.
FIELDS = ("success_count", "success_ns", "fail_count", "fail_ns", "queue_count", "queue_ns",
          "compute_count", "compute_ns", "inference_count", "execution_count", "last_inference_ms")
_F = {name: i for i, name in enumerate(FIELDS)}


@dataclass(frozen=True)
class Duration:
    """A cumulative count and duration (nanoseconds)."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class ModelCounters:
    """One model's cumulative counters since the server started, summed over its processes."""

    success: Duration      # calls answered OK, with the call's duration
    fail: Duration         # calls that failed
    queue: Duration        # calls computed: their images' mean wait for a batch and a worker
    compute_infer: Duration  # calls computed: their images' mean compiled step
    inference_count: int   # images computed (batch rows, padding excluded)
    execution_count: int   # batches run
    last_inference_ms: int  # milliseconds since the epoch of the last batch; 0 = never


def shared_table(path: Path, rows: int, models: int, *, create: bool) -> np.ndarray:
    """A (rows, models, len(FIELDS)) int64 table in the file ``path``, mapped into this process;
    ``create`` makes the file (zeros) in the supervisor, the others attach to it."""
    size = 8 * max(1, rows * models * len(FIELDS))
    fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0), 0o600)
    try:
        if create:
            os.ftruncate(fd, size)
        buf = mmap.mmap(fd, size)
    finally:
        os.close(fd)  # the mapping keeps the file open
    return np.ndarray((rows, models, len(FIELDS)), dtype=np.int64, buffer=buf)


class InferenceStatistics:
    """The counters of every served model, written into ``row`` of ``table`` (see the module
    docstring); fed by ``Metrics`` on the event loop, read by ModelStatistics. Without a ``table``
    the counters live in this process alone."""

    def __init__(self, models: Iterable[str], table: np.ndarray | None = None, row: int = 0,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._index = {name: i for i, name in enumerate(models)}
        if table is None:
            table = np.zeros((1, len(self._index), len(FIELDS)), np.int64)
        self._table = table
        self._row = table[row]
        self._wall = wall_clock

    def __contains__(self, model: object) -> bool:
        return model in self._index

    def _add(self, model: str | None, count: str, ns: str, seconds: float) -> None:
        i = self._index.get(model or "")
        if i is not None:
            self._row[i, _F[count]] += 1
            self._row[i, _F[ns]] += max(0, int(seconds * 1e9))

    def call(self, model: str | None, ok: bool, seconds: float,
             timing: tuple[float, float] | None = None) -> None:
        """A call of ``model`` ended, OK or not, after ``seconds``; ``timing``: its images' mean queue
        and compute seconds, when it is OK and they were computed."""
        kind = "success" if ok else "fail"
        self._add(model, f"{kind}_count", f"{kind}_ns", seconds)
        if ok and timing is not None:
            self._add(model, "queue_count", "queue_ns", timing[0])
            self._add(model, "compute_count", "compute_ns", timing[1])

    def batch(self, model: str, size: int) -> None:
        """A batch of ``size`` images of ``model`` went to a worker."""
        i = self._index.get(model)
        if i is not None:
            self._row[i, _F["execution_count"]] += 1
            self._row[i, _F["inference_count"]] += size
            self._row[i, _F["last_inference_ms"]] = int(self._wall() * 1000)

    def counters(self, model: str) -> ModelCounters:
        """``model``'s counters summed over every process (KeyError when it is not served)."""
        cells = self._table[:, self._index[model], :]
        total = {name: int(v) for name, v in zip(FIELDS, cells.sum(axis=0), strict=True)}
        return ModelCounters(
            success=Duration(total["success_count"], total["success_ns"]),
            fail=Duration(total["fail_count"], total["fail_ns"]),
            queue=Duration(total["queue_count"], total["queue_ns"]),
            compute_infer=Duration(total["compute_count"], total["compute_ns"]),
            inference_count=total["inference_count"], execution_count=total["execution_count"],
            last_inference_ms=int(cells[:, _F["last_inference_ms"]].max()))

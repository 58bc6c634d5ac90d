"""Cumulative per-model inference statistics, as Triton's ModelStatistics reports them.

Why beside the Prometheus histograms: ``perf_analyzer`` and other Triton tools read the server-side
split (queue, compute) from ModelStatistics as cumulative counts and nanosecond sums, and take
differences between two readings; Prometheus histograms cannot be read back that way without
parsing the exposition. :class:`~camserve.front.metrics.Metrics` feeds both from the same events,
so /metrics and ModelStatistics always agree.

Everything counts images, the unit the batcher schedules: a call carrying N images (ExplainBatch, or
a ModelInfer of N rows) adds N to ``success`` (or ``fail``), each with the call's duration, N
queue and compute samples (one per image, with its own times), and its images to
``inference_count``. Calls of either protocol count alike. ``compute_infer`` is the compiled step of
the batch the image ran in; decoding and reply building (``compute_input``, ``compute_output`` in
Triton) are not measured apart and show as the rest of ``success``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["Duration", "InferenceStatistics", "ModelCounters"]


@dataclass
class Duration:
    """A cumulative count and duration (nanoseconds)."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, n: int = 1) -> None:
        """Add ``n`` samples that each lasted ``seconds``."""
        self.count += n
        self.ns += n * max(0, int(seconds * 1e9))


@dataclass
class ModelCounters:
    """One model's cumulative counters since the server started."""

    success: Duration = field(default_factory=Duration)   # images of calls answered OK, call duration
    fail: Duration = field(default_factory=Duration)      # images of calls that failed
    queue: Duration = field(default_factory=Duration)     # waiting for a batch and a worker
    compute_infer: Duration = field(default_factory=Duration)  # the batch's compiled step
    inference_count: int = 0   # images computed (batch rows, padding excluded)
    execution_count: int = 0   # batches run
    last_inference_ms: int = 0  # milliseconds since the epoch of the last batch; 0 = never


class InferenceStatistics:
    """The counters of every served model; fed by ``Metrics`` on the event loop, read by ModelStatistics."""

    def __init__(self, models: Iterable[str], wall_clock: Callable[[], float] = time.time) -> None:
        self._models = {name: ModelCounters() for name in models}
        self._wall = wall_clock

    def __contains__(self, model: object) -> bool:
        return model in self._models

    def call(self, model: str | None, ok: bool, seconds: float, images: int) -> None:
        """A call carrying ``images`` images of ``model`` ended, OK or not, after ``seconds``."""
        counters = self._models.get(model or "")
        if counters is not None and images > 0:
            (counters.success if ok else counters.fail).add(seconds, images)

    def image(self, model: str, queue_s: float, compute_s: float) -> None:
        """One computed image's queue and compute times."""
        counters = self._models.get(model)
        if counters is not None:
            counters.queue.add(queue_s)
            counters.compute_infer.add(compute_s)

    def batch(self, model: str, size: int) -> None:
        """A batch of ``size`` images of ``model`` went to a worker."""
        counters = self._models.get(model)
        if counters is not None:
            counters.execution_count += 1
            counters.inference_count += size
            counters.last_inference_ms = int(self._wall() * 1000)

    def counters(self, model: str) -> ModelCounters:
        """The live counters of ``model`` (KeyError when it is not served)."""
        return self._models[model]

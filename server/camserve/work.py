"""The plain types and errors that flow through the scheduler, and the metrics Observer (no TF, no gRPC).

``WorkItem`` / ``ItemRequest`` go in, ``WorkResult`` / ``MapResult`` come out, and every error the
dispatcher raises to the service layer is a :class:`SchedulingError`. They are shared by the
batcher, the pool and the dispatcher (``camserve.dispatcher`` re-exports them for the gRPC front),
so they live below all three.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

__all__ = [
    "EXPLAIN_ERROR_KINDS",
    "BatchFailedError",
    "DeadlineExceededError",
    "ExplainError",
    "ItemRequest",
    "MapResult",
    "NotReadyError",
    "NullObserver",
    "Observer",
    "QueueFullError",
    "SchedulingError",
    "UnknownModelError",
    "WorkItem",
    "WorkResult",
    "WorkerLostError",
]


# --------------------------------------------------------------------------- errors


class SchedulingError(Exception):
    """Base of every error the dispatcher raises to the service layer."""


class QueueFullError(SchedulingError):
    """The model's queue holds ``max_queue_size`` requests (gRPC RESOURCE_EXHAUSTED)."""


class DeadlineExceededError(SchedulingError):
    """The caller's deadline passed before the request reached a worker (DEADLINE_EXCEEDED)."""


class WorkerLostError(SchedulingError):
    """The worker running (or due to run) the request died; retrying is safe (UNAVAILABLE)."""


class NotReadyError(SchedulingError):
    """No live, warmed-up worker serves the model, or the server is draining (UNAVAILABLE)."""


class UnknownModelError(SchedulingError):
    """The model name is not in the repository (NOT_FOUND)."""


EXPLAIN_ERROR_KINDS = ("unknown_layer", "class_index", "cam_not_supported", "invalid_input")


class ExplainError(SchedulingError):
    """The engine refused this request; ``kind`` is one of :data:`EXPLAIN_ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class BatchFailedError(SchedulingError):
    """The worker hit an unexpected error (a bug, not the caller's fault: gRPC INTERNAL)."""


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class ItemRequest:
    """What to explain for one image; ``method`` uses the engine's names (``gradcam``...)."""

    method: str = "gradcam"
    class_index: int | None = None
    top_k: int = 1
    target_layer: str | None = None


@dataclass
class WorkItem:
    """One image for one model; ``pixels`` is (H, W, C) uint8 (or float32 preprocessed).

    ``deadline`` is on the ``time.monotonic()`` clock, or None for no deadline.
    """

    model: str
    pixels: np.ndarray
    spec: ItemRequest = field(default_factory=ItemRequest)
    deadline: float | None = None


class MapResult(NamedTuple):
    """One explained class: a tuple ``(class_index, score, heatmap, all_zero)``."""

    class_index: int
    score: float
    heatmap: np.ndarray
    all_zero: bool


@dataclass
class WorkResult:
    """Answer for one item; times in seconds, ``batch_size`` = real items in its batch."""

    probabilities: np.ndarray
    maps: list[MapResult]
    queue_s: float
    compute_s: float
    batch_size: int


class Observer(Protocol):
    """Metrics hooks, called on the event loop (implemented by ``camserve.metrics``)."""

    def batch_formed(self, model: str, size: int) -> None: ...
    def queue_depth(self, model: str, depth: int) -> None: ...
    def workers_alive(self, n: int) -> None: ...
    def worker_restarted(self) -> None: ...
    def request_dropped(self, model: str, reason: str) -> None: ...
    def model_ready(self, model: str, ready: bool) -> None: ...


class NullObserver:
    """Observer that records nothing (the default)."""

    def batch_formed(self, model: str, size: int) -> None:
        pass

    def queue_depth(self, model: str, depth: int) -> None:
        pass

    def workers_alive(self, n: int) -> None:
        pass

    def worker_restarted(self) -> None:
        pass

    def request_dropped(self, model: str, reason: str) -> None:
        pass

    def model_ready(self, model: str, ready: bool) -> None:
        pass

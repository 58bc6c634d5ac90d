"""Parent-side state of each worker slot, and the delivery of a worker's answers (no TF, no gRPC).

A :class:`WorkerHandle` survives restarts of its worker process (``generation`` counts them) and
holds the batches that worker was sent, oldest first (:class:`Inflight`, at most
``PIPELINE_DEPTH``); :func:`deliver` hands the :class:`~camserve.records.ItemResult` s the worker
returns for one batch to the callers' futures, with the scheduler's timing filled in (an item that
failed on the worker raises its :class:`~camserve.records.Failure`, same kind and message), and
:func:`watch_callers` notices when every caller of a sent batch has left, so that the pool can tell
the worker not to start it. ``camserve.scheduling.pool`` drives all of it on the event loop.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from camserve.records import ErrorKind, Failure, ItemResult, ModelSummary
from camserve.scheduling.batcher import Batch, Pending, left_because
from camserve.scheduling.placement import WorkerSlot
from camserve.worker.slab import Slab

__all__ = ["Inflight", "WorkerHandle", "WorkerState", "deliver", "watch_callers"]


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"
    STOPPED = "stopped"


@dataclass(eq=False)
class Inflight:
    batch_id: int
    batch: Batch
    done: asyncio.Future[None]
    sent_at: float
    half: int
    started_at: float = 0.0  # when the worker began it (sent_at, or when the batch before it ended)
    watchdog: asyncio.TimerHandle | None = None
    left: list[str] = field(default_factory=list)  # why each caller that left did ("deadline", ...)


@dataclass(eq=False)
class WorkerHandle:
    """Parent-side state of one worker slot (it survives restarts; ``generation`` counts them)."""

    slot: WorkerSlot
    slab: Slab
    state: WorkerState = WorkerState.STARTING
    generation: int = 0
    process: BaseProcess | None = None
    conn: Connection | None = None
    summaries: dict[str, ModelSummary] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    ready_since: float | None = None
    started_at: float = 0.0
    batches: dict[int, Inflight] = field(default_factory=dict)  # held by the worker, in run order
    restarts: int = 0
    backoff_s: float = 0.0
    kill_reason: str | None = None
    last_error: str | None = None
    startup_timer: asyncio.TimerHandle | None = None
    restart_timer: asyncio.TimerHandle | None = None
    reader: threading.Thread | None = None

    @property
    def index(self) -> int:
        return self.slot.index

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def inflight(self) -> Inflight | None:
        """The batch the worker is computing now (the oldest it holds), or None when idle."""
        return next(iter(self.batches.values()), None)


def deliver(inf: Inflight, results: Sequence[ItemResult], compute_s: float) -> None:
    """Hand the worker's results for batch ``inf`` to its callers' futures (timing filled in)."""
    size = len(inf.batch.items)
    for p, res in zip(inf.batch.items, results, strict=False):
        if p.future.done():  # the caller left while we computed
            continue
        if res.error is not None:
            p.future.set_exception(Failure(res.message, res.error))
            continue
        res.queue_s = max(0.0, inf.started_at - p.arrived)
        res.compute_s = compute_s
        res.batch_size = size
        p.future.set_result(res)
    for p in inf.batch.items[len(results) :]:
        if not p.future.done():
            p.future.set_exception(Failure("the worker returned fewer results than items",
                                           ErrorKind.INTERNAL))


def watch_callers(inf: Inflight, all_left: Callable[[Inflight], None]) -> None:
    """Call ``all_left(inf)`` once every caller of ``inf``'s batch has left (its future cancelled),
    noting in ``inf.left`` why each left, at the moment it did (``batcher.left_because``)."""

    def leaving(p: Pending, future: asyncio.Future[object]) -> None:
        if future.cancelled():
            inf.left.append(left_because(p, time.monotonic()))
            if len(inf.left) == len(inf.batch.items):
                all_left(inf)

    for p in inf.batch.items:
        p.future.add_done_callback(functools.partial(leaving, p))

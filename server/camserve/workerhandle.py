"""Parent-side state of each worker slot, and the delivery of a worker's answers (no TF, no gRPC).

A :class:`WorkerHandle` survives restarts of its worker process (``generation`` counts them) and
holds the batches that worker was sent, oldest first (``_Inflight``, at most ``PIPELINE_DEPTH``);
``_deliver`` turns the outcomes the worker returns for one batch into ``WorkResult`` s or
exceptions on the callers' futures. ``camserve.pool`` drives all of it on the event loop.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from camserve.batcher import Batch
from camserve.placement import WorkerSlot
from camserve.shm import Slab
from camserve.work import BatchFailedError, ExplainError, MapResult, WorkResult

__all__ = ["WorkerHandle", "WorkerState"]


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"
    STOPPED = "stopped"


@dataclass(eq=False)
class _Inflight:
    batch_id: int
    batch: Batch
    done: asyncio.Future[None]
    sent_at: float
    half: int
    started_at: float = 0.0  # when the worker began it (sent_at, or when the batch before it ended)
    watchdog: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class WorkerHandle:
    """Parent-side state of one worker slot (it survives restarts; ``generation`` counts them)."""

    slot: WorkerSlot
    slab: Slab
    state: WorkerState = WorkerState.STARTING
    generation: int = 0
    process: BaseProcess | None = None
    conn: Connection | None = None
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    ready_since: float | None = None
    started_at: float = 0.0
    batches: dict[int, _Inflight] = field(default_factory=dict)  # held by the worker, in run order
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
    def inflight(self) -> _Inflight | None:
        """The batch the worker is computing now (the oldest it holds), or None when idle."""
        return next(iter(self.batches.values()), None)


def _deliver(inf: _Inflight, outcomes: Sequence[tuple[Any, ...]], compute_s: float) -> None:
    """Turn worker outcomes into WorkResults / exceptions on the callers' futures."""
    size = len(inf.batch.items)
    for p, out in zip(inf.batch.items, outcomes, strict=False):
        if p.future.done():  # the caller left while we computed
            continue
        if out[0] == "ok":
            _, probs, maps = out
            p.future.set_result(
                WorkResult(
                    probabilities=np.asarray(probs),
                    maps=[MapResult(int(c), float(s), h, bool(z)) for c, s, h, z in maps],
                    queue_s=max(0.0, inf.started_at - p.arrived),
                    compute_s=compute_s,
                    batch_size=size,
                )
            )
        elif out[1] == "internal":
            p.future.set_exception(BatchFailedError(f"worker error: {out[2]}"))
        else:
            p.future.set_exception(ExplainError(str(out[1]), str(out[2])))
    for p in inf.batch.items[len(outcomes) :]:
        if not p.future.done():
            p.future.set_exception(BatchFailedError("worker returned fewer results than items"))

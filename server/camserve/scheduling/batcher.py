"""Dynamic batcher: per-model bounded queues and the batch-formation rule (no TF, no gRPC).

It queues :class:`WorkItem` s (one image, its :class:`~camserve.records.ItemSpec`, its caller's
deadline) and refuses with :class:`~camserve.records.Failure` s whose ``kind`` says why.

The rule, exactly (see :class:`Batcher`):

* ``put`` refuses at once (``QUEUE_FULL``) when a model already holds ``max_queue_size`` live (not
  expired, not cancelled) requests.
* A free worker calls ``next_batch``. Before anything is chosen, every queue is swept: requests
  whose deadline has passed are dropped (the caller gets a ``DEADLINE`` failure,
  ``observer.request_dropped(model, "deadline")``) and requests whose caller left are dropped
  silently (their future is never touched again). A caller that left at its deadline
  (:func:`past_deadline`) was timed out, not cancelled: its drop is counted ``"deadline"`` too,
  whether this queue's timer or gRPC noticed first; only a caller that left before its deadline is
  counted ``"cancelled"``.
* A queue is *ready* when it holds ``max_batch_size`` live requests, or when its oldest live
  request has waited ``max_queue_delay`` (the clock starts at that request's arrival, not at the
  previous batch). Among the ready queues the worker takes the one whose oldest request is oldest,
  and removes its ``min(live, max_batch_size)`` oldest requests in arrival order. When no queue is
  ready, the worker sleeps until the earliest moment one becomes ready or something arrives.
* Requests of one model share a batch whatever their method, class, top-k or target layer.
* After ``close()`` (drain) nothing new arrives, so every non-empty queue counts as ready.
* One worker forms a batch at a time; the others wait their turn, so two workers never split
  a batch that one of them could have taken whole.
* Pipelining (``take_full``): a worker that is still computing one batch may take a *second*
  one, but only a full one (a queue holding ``max_batch_size`` live requests; while draining,
  any non-empty queue) and only when no idle worker is waiting in ``next_batch`` (an idle
  worker always goes first). Below saturation nothing is taken early, so batch sizes and
  latency at light load are exactly those of the rule above; at saturation the worker never
  idles while the parent answers one batch and sends the next.

Deadlines also arm a timer, so a request that expires while it waits is answered (``DEADLINE``) at
its deadline, not only when the next batch forms.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from camserve.records import ErrorKind, Failure, ItemSpec
from camserve.scheduling.observer import NullObserver, Observer

__all__ = ["DEADLINE_SLACK_S", "Batch", "Batcher", "Pending", "WorkItem", "left_because", "past_deadline"]

#: How close to its deadline a caller that leaves counts as timed out rather than cancelled (at most
#: half its time, for calls shorter than twice this). gRPC ends a call at its deadline by cancelling
#: the handler, exactly as a caller's cancel does, so only the time tells them apart; and the client
#: gives up at *its* deadline, earlier than the server's (the timeout counts from when the server read
#: the request) by the time the request took to be read. On an idle loopback gRPC's cancel reached
#: the handler 0.2-1.8 ms after the server's deadline (24 calls); on a loaded 2-core machine a 5 ms
#: slack still counted 1 timed-out call in 8 as cancelled. A real cancel this close to the deadline
#: is rare; a timeout counted as a cancel hides deadline misses from the alert that watches them.
DEADLINE_SLACK_S = 0.05


def past_deadline(deadline: float | None, now: float, since: float) -> bool:
    """True when a caller leaving at ``now`` left because of ``deadline``: it has passed, or is
    within :data:`DEADLINE_SLACK_S` (at most half the call's time since ``since``). Times are on the
    ``time.monotonic()`` clock; ``deadline`` None (no deadline) is never past."""
    if deadline is None:
        return False
    return now >= deadline - min(DEADLINE_SLACK_S, 0.5 * (deadline - since))


def left_because(pending: Pending, now: float) -> str:
    """Why the caller of ``pending`` left at ``now``: ``"deadline"`` (:func:`past_deadline`) or
    ``"cancelled"``, the ``reason`` its drop is counted under."""
    return "deadline" if past_deadline(pending.item.deadline, now, pending.arrived) else "cancelled"


@dataclass
class WorkItem:
    """One image for one model: what the front queues.

    ``pixels``: (H, W, C) uint8 at the model's input size (or float32 already preprocessed).
    ``deadline``: on the ``time.monotonic()`` clock, or None for no deadline.
    """

    model: str
    pixels: np.ndarray
    spec: ItemSpec = field(default_factory=ItemSpec)
    deadline: float | None = None

    def __reduce__(self) -> tuple[object, ...]:
        # Sent by every front-end process per image: a tuple pickles several times faster.
        return (WorkItem, (self.model, self.pixels, self.spec, self.deadline))


# --------------------------------------------------------------------------- queue entries

_QUEUED, _TAKEN, _DROPPED = 0, 1, 2


@dataclass(eq=False)
class Pending:
    """A queued item, its caller's future and arrival time (monotonic)."""

    item: WorkItem
    future: asyncio.Future[Any]
    arrived: float
    state: int = _QUEUED
    timer: asyncio.TimerHandle | None = None
    taken_at: float = 0.0


@dataclass
class Batch:
    """Requests of one model handed to one worker, oldest first."""

    model: str
    items: list[Pending]
    formed_at: float


@dataclass
class _ModelQueue:
    name: str
    max_batch_size: int
    max_queue_delay_s: float
    max_queue_size: int
    entries: deque[Pending] = field(default_factory=deque)
    live: int = 0

    def head(self) -> Pending | None:
        """Oldest live entry (skips entries dropped lazily)."""
        while self.entries and self.entries[0].state != _QUEUED:
            self.entries.popleft()
        return self.entries[0] if self.entries else None


class Batcher:
    """Per-model bounded queues; ``next_batch`` implements the rule in the module docstring."""

    def __init__(
        self,
        models: dict[str, tuple[int, float, int]],
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``models`` maps name -> (max_batch_size, max_queue_delay_s, max_queue_size).

        ``clock`` must be the event loop's clock (asyncio uses ``time.monotonic``).
        """
        self._queues = {
            name: _ModelQueue(name, int(mbs), float(delay), int(size))
            for name, (mbs, delay, size) in models.items()
        }
        self._observer: Observer = observer or NullObserver()
        self._clock = clock
        self._changed = asyncio.Event()
        self._former = asyncio.Lock()
        self._closed = False
        self._waiting = 0  # workers inside next_batch (idle ones): they take precedence over take_full
        self._full: asyncio.Future[None] | None = None  # resolved when a queue may hold a full batch

    # ------------------------------------------------------------------ producers

    def depth(self, model: str) -> int:
        """Live queued requests of ``model``."""
        return self._queues[model].live

    def total_depth(self) -> int:
        """Live queued requests of all models."""
        return sum(q.live for q in self._queues.values())

    @property
    def closed(self) -> bool:
        return self._closed

    def has_room(self, model: str, n: int = 1) -> bool:
        """Cheap, non-blocking: would ``put`` accept ``n`` more requests of ``model`` now?

        For shedding before expensive work (decoding); ``put`` still decides atomically. Unknown
        models answer True so that ``put`` raises its own clear error.
        """
        q = self._queues.get(model)
        return q is None or (not self._closed and q.live + n <= q.max_queue_size)

    def put(self, item: WorkItem) -> Pending:
        """Queue ``item``; raise :class:`Failure` at once when full (``QUEUE_FULL``), closed
        (``NOT_READY``), unknown (``UNKNOWN_MODEL``) or already expired (``DEADLINE``)."""
        q = self._queues.get(item.model)
        if q is None:
            raise Failure(
                f"model {item.model!r} is not served (known: {', '.join(sorted(self._queues))})",
                ErrorKind.UNKNOWN_MODEL,
            )
        if self._closed:
            raise Failure("the server is draining and accepts no new requests", ErrorKind.DRAINING)
        now = self._clock()
        if item.deadline is not None and item.deadline <= now:
            self._observer.request_dropped(q.name, "deadline")
            raise Failure(
                f"deadline already passed before model {q.name!r} queued the request", ErrorKind.DEADLINE
            )
        if q.live >= q.max_queue_size:
            raise Failure(
                f"queue of model {q.name!r} is full ({q.max_queue_size} requests waiting); retry later",
                ErrorKind.QUEUE_FULL,
            )
        loop = asyncio.get_running_loop()
        pending = Pending(item=item, future=loop.create_future(), arrived=now)
        if item.deadline is not None:
            pending.timer = loop.call_at(item.deadline, self._expire, q, pending)
        q.entries.append(pending)
        q.live += 1
        self._observer.queue_depth(q.name, q.live)
        # Wake the batch former only when this can change its decision: a queue that was empty has a
        # new oldest request (a new ready time), and a full one is ready now. Any other arrival leaves
        # the earliest ready time as it was (measured: a wake per image cost ~30 us of scheduler CPU).
        if q.live == 1 or q.live >= q.max_batch_size:
            self._changed.set()
        if q.live >= q.max_batch_size:
            self._signal_full()
        return pending

    def withdraw(self, pending: Pending) -> bool:
        """The caller left: drop its entry if still queued (counted ``"deadline"`` when it left at its
        deadline, else ``"cancelled"``). True when it was dropped here."""
        if pending.state != _QUEUED:
            return False
        q = self._queues[pending.item.model]
        self._drop(q, pending, left_because(pending, self._clock()), None)
        return True

    def fail_queued(
        self, error_factory: Callable[[], Exception], model: str | None = None, reason: str | None = None
    ) -> int:
        """Answer every queued request (of ``model`` or all) with an error; returns how many.

        ``reason``, when given, is reported through ``observer.request_dropped``.
        """
        n = 0
        for q in self._queues.values():
            if model is not None and q.name != model:
                continue
            for p in list(q.entries):
                if p.state == _QUEUED:
                    self._drop(q, p, reason, error_factory())
                    n += 1
            q.entries.clear()
        self._changed.set()
        return n

    def close(self) -> None:
        """Refuse new requests; ``next_batch`` keeps handing out what is queued, then None."""
        self._closed = True
        self._changed.set()
        self._signal_full()

    # ------------------------------------------------------------------ consumers

    async def next_batch(self) -> Batch | None:
        """Wait for the next batch by the module's rule; None once closed and empty."""
        self._waiting += 1
        try:
            return await self._next_batch()
        finally:
            self._waiting -= 1

    def take_full(self) -> Batch | None:
        """Non-blocking pipelining take: a full batch now, or None (see the module's rule).

        None when an idle worker is waiting in ``next_batch`` (it goes first) or no queue holds a
        full batch (while draining: no queue holds anything).
        """
        if self._waiting:
            return None
        now = self._clock()
        self._sweep(now)
        best: _ModelQueue | None = None
        for q in self._queues.values():
            if q.live >= q.max_batch_size or (self._closed and q.live > 0):
                head = q.head()
                if head is not None and (best is None or head.arrived < best.head().arrived):  # type: ignore[union-attr]
                    best = q
        return None if best is None else self._take(best, now)

    def full_signal(self) -> asyncio.Future[None]:
        """A future resolved the next time a queue reaches a full batch, or on ``close()``.

        Already resolved once closed. Shared by all waiters; never cancel it.
        """
        if self._full is None or self._full.done():
            self._full = asyncio.get_running_loop().create_future()
            if self._closed:
                self._full.set_result(None)
        return self._full

    async def _next_batch(self) -> Batch | None:
        async with self._former:
            woke_at: float | None = None  # the ready time whose timer woke us
            while True:
                now = self._clock()
                if woke_at is not None:
                    # The loop runs a timer up to its clock resolution early: the time it was set for
                    # has come (or this would wait again for a sliver of time, over and over).
                    now, woke_at = max(now, woke_at), None
                self._sweep(now)
                best: _ModelQueue | None = None
                wake_at: float | None = None
                for q in self._queues.values():
                    head = q.head()
                    if head is None:
                        continue
                    full = q.live >= q.max_batch_size or self._closed  # draining: nothing more will come
                    ready_at = now if full else head.arrived + q.max_queue_delay_s
                    if ready_at <= now:
                        if best is None or head.arrived < best.head().arrived:  # type: ignore[union-attr]
                            best = q
                    elif wake_at is None or ready_at < wake_at:
                        wake_at = ready_at
                if best is not None:
                    return self._take(best, now)
                if self._closed and wake_at is None:
                    return None
                self._changed.clear()
                timeout = None if wake_at is None else max(0.0, wake_at - now)
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout)
                except TimeoutError:
                    woke_at = wake_at

    # ------------------------------------------------------------------ internals

    def _take(self, q: _ModelQueue, now: float) -> Batch:
        items: list[Pending] = []
        while q.entries and len(items) < q.max_batch_size:
            p = q.entries.popleft()
            if p.state != _QUEUED:
                continue
            p.state = _TAKEN
            p.taken_at = now
            if p.timer is not None:
                p.timer.cancel()
                p.timer = None
            items.append(p)
        q.live -= len(items)
        self._observer.queue_depth(q.name, q.live)
        self._observer.batch_formed(q.name, len(items))
        if q.live >= q.max_batch_size:  # another full batch is still waiting: tell pipelining workers
            self._signal_full()
        return Batch(model=q.name, items=items, formed_at=now)

    def _signal_full(self) -> None:
        if self._full is not None and not self._full.done():
            self._full.set_result(None)

    def _sweep(self, now: float) -> None:
        """Drop expired and cancelled entries of every queue (before any batch forms)."""
        for q in self._queues.values():
            if q.live == 0:
                continue
            for p in q.entries:
                if p.state != _QUEUED:
                    continue
                if p.future.done():
                    self._drop(q, p, left_because(p, now), None)
                elif p.item.deadline is not None and p.item.deadline <= now:
                    self._drop(q, p, "deadline", self._expired_error(q, p, now))

    def _expire(self, q: _ModelQueue, p: Pending) -> None:
        """Deadline timer: answer the caller now rather than when the next batch forms."""
        p.timer = None
        if p.state == _QUEUED:
            self._drop(q, p, "deadline", self._expired_error(q, p, self._clock()))
            self._changed.set()

    @staticmethod
    def _expired_error(q: _ModelQueue, p: Pending, now: float) -> Failure:
        return Failure(
            f"deadline passed after {now - p.arrived:.3f} s in the queue of model {q.name!r}; not computed",
            ErrorKind.DEADLINE,
        )

    def _drop(self, q: _ModelQueue, p: Pending, reason: str | None, error: Exception | None) -> None:
        p.state = _DROPPED
        if p.timer is not None:
            p.timer.cancel()
            p.timer = None
        q.live -= 1
        if error is not None and not p.future.done():
            p.future.set_exception(error)
        if reason is not None:
            self._observer.request_dropped(q.name, reason)
        self._observer.queue_depth(q.name, q.live)

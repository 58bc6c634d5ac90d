"""Dispatcher: the batcher and the worker pool behind one facade (no TF, no gRPC).

This is the only scheduling object the front uses (ARCHITECTURE.md, "Dispatcher")::

    dispatcher = Dispatcher(repository, WorkerPlan.parse("cpu:1"), compile_mode="auto",
                            backend="tensorflow", observer=metrics)
    await dispatcher.start()              # spawns the workers, returns at once
    dispatcher.ready()                    # True once every model is warm on >= 1 live worker
    result = await dispatcher.submit(WorkItem("demo", pixels, ItemSpec("gradcam")))  # ItemResult
    await dispatcher.stop(grace_s=10)     # finish queued + in-flight, stop workers, unlink shm

``submit`` returns the item's :class:`~camserve.records.ItemResult` or raises a
:class:`~camserve.records.Failure` whose ``kind`` says why (unknown model, not ready, queue full,
deadline, worker lost, or what the engine refused).

Each ready worker runs one serve loop. Idle, it waits for the next batch by the batcher's rule and
sends it. Holding one batch, it may take a second, full one (``Batcher.take_full``: only when a
full batch is waiting and no idle worker wants it) and send it at once, so the worker starts it
the moment the first is answered instead of idling while the parent replies and forms the next
(double buffering; the pool writes the second batch into the other half of the worker's slab, so
pixels a worker reads are never overwritten). It never holds more than two.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from camserve.records import ErrorKind, Failure, ItemResult, ModelSummary
from camserve.repository import ModelConfig
from camserve.scheduling.batcher import Batcher, Pending, WorkItem
from camserve.scheduling.handles import WorkerHandle, WorkerState
from camserve.scheduling.observer import NullObserver, Observer
from camserve.scheduling.placement import WorkerPlan, discover_gpus
from camserve.scheduling.pool import DEFAULT_BATCH_TIMEOUT_S, DEFAULT_STARTUP_TIMEOUT_S, WorkerPool
from camserve.vocabulary import BACKENDS, COMPILE_MODES
from camserve.worker.slab import slab_bytes_for

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)


class Dispatcher:
    """Batcher + worker pool; see the module docstring and ARCHITECTURE.md."""

    def __init__(
        self,
        repository: dict[str, ModelConfig],
        workers: WorkerPlan | str = "auto",
        compile_mode: str = "auto",
        backend: str = "tensorflow",
        observer: Observer | None = None,
        *,
        discover: Callable[[], Sequence[str]] = discover_gpus,
        batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        runner: str | None = None,
        cpu_count: int | None = None,
    ) -> None:
        """Validate settings and plan the workers (raises ValueError on bad settings).

        ``batch_timeout_s`` is the per-batch watchdog: a worker that holds one batch longer is
        killed and restarted. ``runner`` ("module:attr") swaps the worker's compute (tests only).
        """
        if not repository:
            raise ValueError("the model repository is empty")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if batch_timeout_s <= 0:
            raise ValueError(f"batch timeout must be > 0 s, got {batch_timeout_s}")
        self._repo = dict(repository)
        self._plan = WorkerPlan.parse(workers) if isinstance(workers, str) else workers
        self.slots = self._plan.slots(discover, cpu_count)
        self._observer: Observer = observer or NullObserver()
        self._batcher = Batcher(
            {
                name: (
                    cfg.batching.max_batch_size,
                    cfg.batching.max_queue_delay_ms / 1000.0,
                    cfg.batching.max_queue_size,
                )
                for name, cfg in self._repo.items()
            },
            observer=self._observer,
        )
        slab = max(slab_bytes_for(c.batching.max_batch_size, c.input_shape) for c in self._repo.values())
        self._pool = WorkerPool(
            self.slots,
            worker_spec={
                "repository": self._repo,
                "compile_mode": compile_mode,
                "backend": backend,
                "runner": runner,
            },
            slab_bytes=slab,
            on_ready=self._worker_ready,
            on_lost=self._worker_lost,
            observer=self._observer,
            batch_timeout_s=batch_timeout_s,
            startup_timeout_s=startup_timeout_s,
        )
        self._serve_tasks: dict[WorkerHandle, asyncio.Task[None]] = {}
        self._idle: set[WorkerHandle] = set()
        self._ready: dict[str, bool] = dict.fromkeys(self._repo, False)
        self._summaries: dict[str, ModelSummary] = {}
        self._alive = -1
        self._started = False
        self._stopping = False

    # ------------------------------------------------------------------ facade

    @property
    def models(self) -> list[str]:
        """Names of the served models, in repository order."""
        return list(self._repo)

    @property
    def plan(self) -> WorkerPlan:
        return self._plan

    @property
    def pool(self) -> WorkerPool:
        """The worker pool (for diagnostics and fault tests: pids, restarts)."""
        return self._pool

    def worker_pids(self) -> list[int | None]:
        """Process id of each worker slot (None while it is not running)."""
        return [
            w.pid if w.state in (WorkerState.STARTING, WorkerState.READY) else None
            for w in self._pool.workers
        ]

    def queue_depth(self, model: str | None = None) -> int:
        """Queued requests of ``model`` (or of all models)."""
        return self._batcher.total_depth() if model is None else self._batcher.depth(model)

    def has_room(self, model: str, n: int = 1) -> bool:
        """Cheap check that ``model``'s queue would take ``n`` more requests now (shed before decoding).

        Advisory: ``submit`` still refuses atomically (``QUEUE_FULL``).
        """
        return self._batcher.has_room(model, n)

    async def start(self) -> None:
        """Spawn the workers; returns at once (``ready()`` turns true after their warm-up)."""
        if self._started:
            raise RuntimeError("Dispatcher.start() was already called")
        self._started = True
        self._observer.workers_alive(0)
        for name in self._repo:
            self._observer.model_ready(name, False)
        self._alive = 0
        log.info(
            "dispatcher: %d worker(s) [%s] for model(s) %s",
            len(self.slots),
            ", ".join(s.device for s in self.slots),
            ", ".join(self._repo),
        )
        await self._pool.start()

    def ready(self, model: str | None = None) -> bool:
        """True when the model (or every model) is warm on at least one live worker."""
        if self._stopping:
            return False
        if model is None:
            return all(self._ready.values())
        return self._ready.get(model, False)

    def model_summary(self, name: str) -> ModelSummary | None:
        """The worker-reported summary of model ``name`` (kept while workers restart); None before."""
        return self._summaries.get(name)

    async def submit(self, item: WorkItem) -> ItemResult:
        """Queue ``item`` and wait for its result; cancelling the caller withdraws it.

        Raises :class:`Failure` (``UNKNOWN_MODEL``, ``NOT_READY``, ``INVALID_INPUT``, ``QUEUE_FULL``,
        ``DEADLINE``, ``WORKER_LOST``, an engine refusal's kind, or ``INTERNAL``).
        """
        pending = self.enqueue(item)
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._batcher.withdraw(pending)
            raise

    def enqueue(self, item: WorkItem) -> Pending:
        """Queue ``item`` without waiting: its ``future`` resolves to the :class:`ItemResult` (or the
        :class:`Failure`). For callers that route results themselves (``camserve.scheduling.hub``); a
        caller who leaves must call :meth:`withdraw`. Raises :class:`Failure` as :meth:`submit` does."""
        cfg = self._repo.get(item.model)
        if cfg is None:
            raise Failure(f"model {item.model!r} is not served (available: {', '.join(sorted(self._repo))})",
                          ErrorKind.UNKNOWN_MODEL)
        if self._stopping:
            raise Failure("the server is draining and accepts no new requests", ErrorKind.DRAINING)
        if not self._ready[item.model]:
            raise Failure(self._not_ready_reason(item.model), ErrorKind.NOT_READY)
        _check_pixels(item, cfg)
        return self._batcher.put(item)

    def withdraw(self, pending: Pending) -> None:
        """The caller of an :meth:`enqueue` d item left: drop it if it is still queued, else cancel its
        future (as leaving :meth:`submit` does), so a batch whose callers have all left is not computed."""
        if not self._batcher.withdraw(pending) and not pending.future.done():
            pending.future.cancel()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` began (draining: no new work is accepted)."""
        return self._stopping

    async def stop(self, grace_s: float = 10.0) -> None:
        """Refuse new work, finish queued and in-flight work and stop the workers, all within ``grace_s``
        (workers still loading are stopped at once; one that outlives the grace is killed)."""
        if self._stopping:
            return
        self._stopping = True
        deadline = time.monotonic() + max(0.0, grace_s)
        self._batcher.close()
        if self._serve_tasks:
            tasks = list(self._serve_tasks.values())
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, grace_s))
            for t in pending:
                t.cancel()
        left = self._batcher.fail_queued(
            lambda: Failure("the server stopped before this request ran", ErrorKind.NOT_READY))
        if left:
            log.warning("dispatcher: %d queued request(s) answered UNAVAILABLE at stop", left)
        await self._pool.stop(timeout_s=max(0.0, deadline - time.monotonic()))
        for name in self._repo:
            self._set_ready(name, False)
        self._set_alive(0)

    # ------------------------------------------------------------------ worker events

    def _worker_ready(self, w: WorkerHandle) -> None:
        for name, summary in w.summaries.items():
            self._summaries[name] = summary
        for name, why in w.failures.items():
            log.error("model %r failed to load on worker %d: %s", name, w.index, why)
        self._refresh()
        self._check_labels(w)
        if not self._stopping:
            task = asyncio.ensure_future(self._serve(w))
            self._serve_tasks[w] = task

    def _worker_lost(self, w: WorkerHandle, reason: str) -> None:
        task = self._serve_tasks.pop(w, None)
        if task is not None and w in self._idle:
            task.cancel()  # waiting for a batch: nothing was taken, stop waiting
        self._refresh()
        if self._stopping:
            return
        for name, ok in self._ready.items():
            if not ok:  # nobody can run what is queued for this model now: let callers retry elsewhere
                n = self._batcher.fail_queued(
                    lambda n=name: Failure(f"no live worker for model {n!r} ({reason}); retry",
                                           ErrorKind.WORKER_LOST),
                    model=name,
                    reason="worker_lost",
                )
                if n:
                    log.warning("dispatcher: %d queued request(s) of %r answered UNAVAILABLE", n, name)

    async def _serve(self, w: WorkerHandle) -> None:
        """Feed worker ``w`` (up to two batches, see the module docstring) until it dies or the batcher
        closes and empties; returns once everything it was sent is answered."""
        held: set[asyncio.Future[None]] = set()
        while w.state is WorkerState.READY:
            if not held:
                self._idle.add(w)
                try:
                    batch = await self._batcher.next_batch()
                finally:
                    self._idle.discard(w)
                if batch is None:
                    break
                held.add(self._pool.run_batch(w, batch))
                continue
            wait: set[asyncio.Future[None]] = set(held)
            if self._pool.can_take(w):
                batch = self._batcher.take_full()
                if batch is not None:
                    held.add(self._pool.run_batch(w, batch))
                    continue
                if not self._batcher.closed:
                    wait.add(self._batcher.full_signal())
            await asyncio.wait(wait, return_when=asyncio.FIRST_COMPLETED)
            held = {f for f in held if not f.done()}
        if held:  # draining (or the worker died: then these are already answered)
            await asyncio.wait(held)

    # ------------------------------------------------------------------ helpers

    def _refresh(self) -> None:
        live = self._pool.ready_workers()
        self._set_alive(len(live))
        for name in self._repo:
            self._set_ready(name, any(name in w.summaries for w in live))

    def _set_alive(self, n: int) -> None:
        if n != self._alive:
            self._alive = n
            self._observer.workers_alive(n)

    def _set_ready(self, name: str, ok: bool) -> None:
        if self._ready[name] != ok:
            self._ready[name] = ok
            self._observer.model_ready(name, ok)
            log.info("model %r %s", name, "ready" if ok else "NOT ready")

    def _not_ready_reason(self, model: str) -> str:
        errors = [w.failures[model] for w in self._pool.workers if model in w.failures]
        if errors:
            return f"model {model!r} failed to load: {errors[-1]}"
        states = [w.state for w in self._pool.workers]
        if any(s is WorkerState.STARTING for s in states):
            return f"model {model!r} is not ready yet (a worker is loading and compiling it)"
        last = next((w.last_error for w in self._pool.workers if w.last_error), None)
        return f"no live worker serves model {model!r}" + (f" ({last})" if last else "") + "; retry shortly"

    def _check_labels(self, w: WorkerHandle) -> None:
        for name, summary in w.summaries.items():
            labels = self._repo[name].labels
            n = summary.num_classes
            if labels and len(labels) != n:
                log.warning(
                    "model %r: labels file has %d labels but the model has %d classes", name, len(labels), n
                )


def _check_pixels(item: WorkItem, cfg: ModelConfig) -> None:
    """Refuse pixels that would not fit the model (the front validates too; this guards the slab)."""
    px = item.pixels
    bad = ErrorKind.INVALID_INPUT
    if not isinstance(px, np.ndarray):
        raise Failure(f"pixels must be a NumPy array, got {type(px).__name__}", bad)
    if px.dtype not in (np.uint8, np.float32):
        raise Failure(f"pixels must be uint8 or float32, got {px.dtype}", bad)
    if tuple(px.shape) != tuple(cfg.input_shape):
        raise Failure(f"pixels have shape {tuple(px.shape)}, model {cfg.name!r} takes "
                      f"{tuple(cfg.input_shape)}", bad)
    if px.dtype == np.float32 and not np.isfinite(px).all():
        raise Failure("float32 pixels contain NaN or Inf", bad)

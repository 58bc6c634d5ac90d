"""Worker pool: one process per GPU or N CPU processes, shared-memory pixels, restarts (no TF, no gRPC).

* Placement: one process per :class:`~camserve.scheduling.placement.WorkerSlot`
  (``camserve.scheduling.placement`` turns ``--workers`` into slots: device,
  ``CUDA_VISIBLE_DEVICES``, CPU thread budget). Each runs ``camserve.worker.main.main``.
* Transport: processes are started with ``spawn``. Each worker owns a shared-memory slab with
  :data:`PIPELINE_DEPTH` (2) halves, each sized for its largest batch; the parent writes a batch's
  pixels into a free half and the pipe carries only small specs and the results (heatmaps at the
  conv grid). A worker may therefore hold two batches: it computes one while the parent has
  already sent the next (double buffering), and runs them in the order sent. A half is reused
  only after the worker answered the batch in it. One reader thread per worker blocks on the pipe
  and hands messages to the event loop with ``call_soon_threadsafe``.
* Callers that leave: a batch whose callers have all left is cancelled on the worker (a
  ``("cancel", id)`` message); a worker that had not started it answers ``("skipped", id)``
  instead of computing it, and its callers are counted dropped (``deadline`` or ``cancelled``).
* Failure: EOF on the pipe means the worker is gone. Every batch it holds fails at once
  (``WORKER_LOST``, retryable) and it is restarted after a back-off (0.5 s doubling up to 10 s, back
  to 0.5 s once a worker has stayed healthy for a minute). A batch that runs longer than
  ``batch_timeout_s`` (a hung or SIGSTOPped worker) gets the worker killed, which takes the same
  path; the watchdog times each batch from the moment the worker starts it (a second batch's
  clock starts when the first is answered), so waiting behind a batch never counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from camserve.records import ErrorKind, Failure
from camserve.scheduling.batcher import Batch
from camserve.scheduling.handles import Inflight, WorkerHandle, WorkerState, deliver, watch_callers
from camserve.scheduling.observer import NullObserver, Observer
from camserve.scheduling.placement import WorkerSlot
from camserve.worker.slab import Slab, write_arrays

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)

DEFAULT_BATCH_TIMEOUT_S = 120.0
DEFAULT_STARTUP_TIMEOUT_S = 900.0
PIPELINE_DEPTH = 2  # batches one worker may hold (slab halves)


# --------------------------------------------------------------------------- pool


class WorkerPool:
    """Starts, feeds, watches and restarts the worker processes (see the module docstring)."""

    def __init__(
        self,
        slots: Sequence[WorkerSlot],
        *,
        worker_spec: dict[str, Any],
        slab_bytes: int,
        on_ready: Callable[[WorkerHandle], None],
        on_lost: Callable[[WorkerHandle, str], None],
        observer: Observer | None = None,
        batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        healthy_reset_s: float = 60.0,
        target: Callable[..., None] | None = None,
    ) -> None:
        self._slots = list(slots)
        self._spec = dict(worker_spec)
        self._slab_bytes = int(slab_bytes)
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._observer: Observer = observer or NullObserver()
        self.batch_timeout_s = float(batch_timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self._backoff_initial = float(backoff_initial_s)
        self._backoff_max = float(backoff_max_s)
        self._healthy_reset = float(healthy_reset_s)
        self._target = target
        self._ctx = multiprocessing.get_context("spawn")
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.workers: list[WorkerHandle] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the slabs and spawn every worker; returns before they are ready."""
        self._loop = asyncio.get_running_loop()
        for slot in self._slots:
            w = WorkerHandle(slot=slot, slab=Slab(self._slab_bytes * PIPELINE_DEPTH),
                             backoff_s=self._backoff_initial)
            self.workers.append(w)
        await asyncio.gather(*(self._spawn(w) for w in self.workers))

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every worker (a ready one is asked to, and killed after ``timeout_s``; one still loading
        gets SIGTERM at once: it would read ``stop`` only after its warm-up), unlink the slabs. Each
        process is reaped by its reader thread alone (see :meth:`_unreaped`)."""
        self._stopping = True
        for w in self.workers:
            if w.restart_timer is not None:
                w.restart_timer.cancel()
                w.restart_timer = None
            for inf in list(w.batches.values())[1:]:  # sent behind the running batch: never started
                del w.batches[inf.batch_id]
                for p in inf.batch.items:
                    if not p.future.done():
                        p.future.set_exception(
                            Failure("the server stopped before this request ran", ErrorKind.NOT_READY))
                if not inf.done.done():
                    inf.done.set_result(None)
            if w.state is WorkerState.READY and w.conn is not None:
                with contextlib.suppress(OSError):
                    w.conn.send(("stop",))
            elif w.state is WorkerState.STARTING and self._unreaped(w):
                log.info("worker %d is still starting: stopping it now", w.index)
                w.process.terminate()
        await asyncio.to_thread(self._await_exits, timeout_s)
        for w in self.workers:
            self._mark_gone(w, WorkerState.STOPPED, "the server is stopping")
            if w.conn is not None:
                w.conn.close()
                w.conn = None
            w.slab.close()
        for task in list(self._tasks):
            task.cancel()

    def _await_exits(self, timeout_s: float) -> None:
        """Wait for the reader threads (each ends once its process is reaped); kill what outlives them."""
        deadline = time.monotonic() + timeout_s
        for w in self.workers:
            if w.reader is None:
                continue
            w.reader.join(max(0.0, deadline - time.monotonic()))
            if self._unreaped(w):
                log.warning("worker %d did not exit within %.1f s of stop; killing it", w.index, timeout_s)
                w.process.kill()
                w.reader.join(10)

    @staticmethod
    def _unreaped(w: WorkerHandle) -> bool:
        """True until ``w``'s reader reaped its process (so its pid may be signalled). ``is_alive()``
        would ``waitpid`` from a second thread: the loser sees no child and reports it running."""
        return w.process is not None and w.reader is not None and w.reader.is_alive()

    async def _spawn(self, w: WorkerHandle) -> None:
        if self._stopping:
            return
        assert self._loop is not None
        w.generation += 1
        gen = w.generation
        w.state = WorkerState.STARTING
        w.summaries, w.failures, w.kill_reason, w.ready_since = {}, {}, None, None
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        spec = dict(self._spec)
        spec.update(
            index=w.index,
            env=w.slot.env,
            device=w.slot.device,
            threads=w.slot.threads,
            slab_name=w.slab.name,
            parent_pid=os.getpid(),
        )
        if self._target is None:
            from camserve.worker.main import main as target
        else:
            target = self._target
        proc = self._ctx.Process(
            target=target, args=(child_conn, spec), name=f"camserve-worker-{w.index}", daemon=True
        )
        try:
            await asyncio.to_thread(proc.start)
        except Exception as exc:  # e.g. out of memory or pids: treat as a crash, back off
            child_conn.close()
            parent_conn.close()
            w.last_error = f"could not start: {exc}"
            log.error("worker %d could not start: %s", w.index, exc)
            w.state = WorkerState.DEAD
            self._schedule_restart(w)
            return
        child_conn.close()  # the child has its copy; ours must go or EOF never arrives
        w.process, w.conn, w.started_at = proc, parent_conn, time.monotonic()
        if self._stopping:  # stop() ran while we were starting it; no reader exists, so we reap it
            proc.kill()
            await asyncio.to_thread(proc.join, 5)
            parent_conn.close()
            return
        w.reader = threading.Thread(
            target=self._read,
            args=(w, gen, parent_conn, proc, self._loop),
            name=f"camserve-reader-{w.index}",
            daemon=True,
        )
        w.reader.start()
        w.startup_timer = self._loop.call_later(self.startup_timeout_s, self._startup_expired, w, gen)
        log.info("worker %d started (pid %s, %s)", w.index, proc.pid, w.slot.device)

    def _read(
        self, w: WorkerHandle, gen: int, conn: Connection, proc: BaseProcess, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Reader thread: forward messages to the loop; on EOF reap the process (its only reaper), report."""
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # a message cut short by a crash
                log.error("worker %d: unreadable message (%s)", w.index, exc)
                break
            try:
                loop.call_soon_threadsafe(self._on_message, w, gen, msg)
            except RuntimeError:  # loop closed
                return
        proc.join(2)
        if proc.is_alive():  # closed its pipe yet still running: make it certain
            proc.kill()
            proc.join(5)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._on_exit, w, gen, proc.exitcode)

    # ------------------------------------------------------------------ events (event loop thread)

    def _on_message(self, w: WorkerHandle, gen: int, msg: tuple[Any, ...]) -> None:
        if gen != w.generation:
            return
        kind = msg[0]
        if kind == "ready":
            _, summaries, failures, load_s = msg
            if w.startup_timer is not None:
                w.startup_timer.cancel()
                w.startup_timer = None
            w.summaries, w.failures = dict(summaries), dict(failures)
            w.state = WorkerState.READY
            w.ready_since = time.monotonic()
            w.last_error = None
            log.info("worker %d ready in %.1f s (pid %s)", w.index, load_s, w.pid)
            self._on_ready(w)
        elif kind in ("result", "skipped"):
            batch_id = msg[1]
            inf = w.batches.pop(batch_id, None)
            if inf is None:  # normal only at stop (a batch withdrawn just as the worker began it)
                (log.debug if self._stopping else log.warning)(
                    "worker %d: result for unknown batch %s ignored", w.index, batch_id)
                return
            if inf.watchdog is not None:
                inf.watchdog.cancel()
            nxt = w.inflight
            if nxt is not None and nxt.watchdog is None:  # the worker starts the next batch now
                self._arm(w, nxt)
            if kind == "result":
                deliver(inf, msg[2], float(msg[3]))
            for reason in inf.left if kind == "skipped" else ():  # not computed: every caller had left
                self._observer.request_dropped(inf.batch.model, reason)
            if not inf.done.done():
                inf.done.set_result(None)
        elif kind == "fatal":
            w.last_error = str(msg[1])
            log.error("worker %d failed to start: %s", w.index, msg[1])

    def _on_exit(self, w: WorkerHandle, gen: int, exitcode: int | None) -> None:
        if gen != w.generation or w.state in (WorkerState.DEAD, WorkerState.STOPPED):
            return
        if self._stopping:
            self._mark_gone(w, WorkerState.STOPPED, "the server is stopping")
            return
        how = (
            f"killed by signal {-exitcode}"
            if exitcode is not None and exitcode < 0
            else f"exit code {exitcode}"
        )
        reason = w.kill_reason or w.last_error or how
        w.last_error = (
            f"worker {w.index} died ({how}): {reason}" if reason != how else f"worker {w.index} died ({how})"
        )
        log.error("%s", w.last_error)
        healthy = w.ready_since is not None and time.monotonic() - w.ready_since >= self._healthy_reset
        if healthy:
            w.backoff_s = self._backoff_initial
        self._mark_gone(w, WorkerState.DEAD, w.last_error)
        self._schedule_restart(w)

    def _mark_gone(self, w: WorkerHandle, state: WorkerState, reason: str) -> None:
        """Fail the in-flight batch at once and tell the dispatcher."""
        was = w.state
        w.state = state
        for timer in (w.startup_timer,):
            if timer is not None:
                timer.cancel()
        w.startup_timer = None
        held, w.batches = list(w.batches.values()), {}
        for inf in held:  # the batch it computed and the one sent behind it
            if inf.watchdog is not None:
                inf.watchdog.cancel()
            err = f"{reason}; the request was running on it, retry"
            for p in inf.batch.items:
                if not p.future.done():
                    p.future.set_exception(Failure(err, ErrorKind.WORKER_LOST))
            if not inf.done.done():
                inf.done.set_result(None)
        if was in (WorkerState.STARTING, WorkerState.READY):
            self._on_lost(w, reason)

    def _schedule_restart(self, w: WorkerHandle) -> None:
        if self._stopping or self._loop is None:
            return
        delay = w.backoff_s
        w.backoff_s = min(self._backoff_max, max(self._backoff_initial, delay * 2))
        log.info("worker %d restarts in %.1f s", w.index, delay)

        def fire() -> None:
            w.restart_timer = None
            w.restarts += 1
            self._observer.worker_restarted()
            task = asyncio.ensure_future(self._spawn(w))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        w.restart_timer = self._loop.call_later(delay, fire)

    def _startup_expired(self, w: WorkerHandle, gen: int) -> None:
        if gen == w.generation and w.state is WorkerState.STARTING:
            self.kill(w, f"not ready within {self.startup_timeout_s:.0f} s of start")

    def _batch_expired(self, w: WorkerHandle, batch_id: int) -> None:
        if batch_id in w.batches:
            self.kill(w, f"batch ran longer than the {self.batch_timeout_s:g} s watchdog (hung worker)")

    def _arm(self, w: WorkerHandle, inf: Inflight) -> None:
        """Start ``inf``'s watchdog: the worker begins computing it now."""
        assert self._loop is not None
        inf.started_at = time.monotonic()
        inf.watchdog = self._loop.call_later(self.batch_timeout_s, self._batch_expired, w, inf.batch_id)

    # ------------------------------------------------------------------ public

    def kill(self, w: WorkerHandle, reason: str) -> None:
        """SIGKILL a worker; the reader thread sees EOF and the normal death path runs."""
        w.kill_reason = reason
        log.error("killing worker %d: %s", w.index, reason)
        if self._unreaped(w):
            w.process.kill()

    @staticmethod
    def _cancel(w: WorkerHandle, inf: Inflight) -> None:
        """Every caller of ``inf`` left: ask the worker not to start it (it may have already)."""
        if w.batches.get(inf.batch_id) is inf and w.conn is not None:
            with contextlib.suppress(OSError, ValueError):  # a dying worker: EOF follows
                w.conn.send(("cancel", inf.batch_id))

    def ready_workers(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.state is WorkerState.READY]

    @staticmethod
    def can_take(w: WorkerHandle) -> bool:
        """True when ``w`` is ready and holds fewer than :data:`PIPELINE_DEPTH` batches."""
        return w.state is WorkerState.READY and len(w.batches) < PIPELINE_DEPTH

    def run_batch(self, w: WorkerHandle, batch: Batch) -> asyncio.Future[None]:
        """Send ``batch`` to worker ``w`` (idle, or holding one batch: it runs this one next).

        The future resolves when every item is answered (or failed).
        """
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        if w.conn is None or not self.can_take(w):
            for p in batch.items:
                if not p.future.done():
                    p.future.set_exception(
                        Failure(f"worker {w.index} is not available; retry", ErrorKind.WORKER_LOST))
            done.set_result(None)
            return done
        used = {inf.half for inf in w.batches.values()}
        half = next(h for h in range(PIPELINE_DEPTH) if h not in used)
        start = half * self._slab_bytes
        refs = write_arrays(w.slab.buf, [p.item.pixels for p in batch.items], start, start + self._slab_bytes)
        batch_id = next(self._ids)
        inf = Inflight(batch_id=batch_id, batch=batch, done=done, sent_at=time.monotonic(), half=half)
        w.batches[batch_id] = inf
        watch_callers(inf, lambda inf: self._cancel(w, inf))
        if len(w.batches) == 1:
            self._arm(w, inf)
        try:
            w.conn.send(
                ("batch", batch_id, batch.model, [tuple(r) for r in refs], [p.item.spec for p in batch.items])
            )
        except (OSError, ValueError) as exc:  # pipe broken: the worker is dying; EOF will follow
            self.kill(w, f"pipe to the worker broke ({exc})")
        return done

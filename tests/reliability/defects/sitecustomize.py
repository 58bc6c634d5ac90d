"""Injected defects for the reliability tests: proof that their assertions catch what they claim.

Not part of camserve. ``tests/reliability/relserver.py`` puts this folder first on the server's
``PYTHONPATH`` when ``CAMSERVE_TEST_DEFECT`` names a defect, so Python imports this module at the
start of every server process (supervisor, front ends, workers) and the defect is patched into the
real code before it runs. Each defect is one a test must fail on::

    CAMSERVE_TEST_DEFECT=dead-worker-hangs  pytest tests/reliability/test_rel_faults.py   # must fail
    CAMSERVE_TEST_DEFECT=serialised-workers pytest tests/reliability/test_rel_faults.py   # must fail
    CAMSERVE_TEST_DEFECT=drain-loses-calls  pytest tests/reliability/test_rel_drain.py    # must fail

* ``dead-worker-hangs``: the calls of a worker that died (or that the watchdog killed) are never
  answered by the server; they end at their deadline.
* ``serialised-workers``: a worker is sent a batch only while no other worker holds one (one lock for
  all workers), so a stalled worker stalls the healthy one too.
* ``drain-loses-calls``: handled in relserver.py (not here): the drained server is started with
  ``--drain-seconds 0``, shorter than its queued work, so the drain cancels accepted calls.
"""

from __future__ import annotations

import asyncio
import os

DEFECT = os.environ.get("CAMSERVE_TEST_DEFECT", "")


def _dead_worker_hangs() -> None:
    from camserve.scheduling import pool

    def mark_gone(self, w, state, reason):  # the original minus failing the held batches' callers
        was = w.state
        w.state = state
        if w.startup_timer is not None:
            w.startup_timer.cancel()
        w.startup_timer = None
        held, w.batches = list(w.batches.values()), {}
        for inf in held:
            if inf.watchdog is not None:
                inf.watchdog.cancel()
            if not inf.done.done():
                inf.done.set_result(None)
        if was in (pool.WorkerState.STARTING, pool.WorkerState.READY):
            self._on_lost(w, reason)

    pool.WorkerPool._mark_gone = mark_gone


def _serialised_workers() -> None:
    from camserve.scheduling import pool

    original = pool.WorkerPool.run_batch
    tasks: set[asyncio.Task[None]] = set()

    def run_batch(self, w, batch):
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        async def when_alone() -> None:
            while any(o is not w and o.batches for o in self.workers):
                await asyncio.sleep(0.01)
            await original(self, w, batch)
            done.set_result(None)

        task = loop.create_task(when_alone())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return done

    pool.WorkerPool.run_batch = run_batch


if DEFECT == "dead-worker-hangs":
    _dead_worker_hangs()
elif DEFECT == "serialised-workers":
    _serialised_workers()

"""Stopping is prompt in every phase, and tells the truth.

* SIGTERM while a worker still loads: the worker is stopped at once (it would read "stop" only after
  its warm-up), and the pre-stop window is skipped (the server never reported SERVING, so no balancer
  routes to it).
* A normal stop reaps each worker once: no "did not exit; killing it" about a worker that had exited.
* A worker that does not exit is killed within --drain-seconds, not after a fixed 10 s.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from camserve.repository import load_repository
from camserve.scheduling.dispatcher import Dispatcher
from serverproc import wait_for
from transportkit import TOY_RUNNER, log_has, start_toy, toy_repository

pytestmark = pytest.mark.timeout(300)

LOAD_S = 120  # the stand-in worker's loading phase: far longer than any stop may take


def test_sigterm_during_model_load_stops_the_loading_worker_at_once() -> None:
    srv = start_toy("--pre-stop-seconds", "5", "--drain-seconds", "30", wait=False,
                    env={"CAMSERVE_TOY_LOAD_S": str(LOAD_S)})
    try:
        wait_for(lambda: log_has(srv, "worker 0 started"), 120)
        wait_for(lambda: srv.health() == "NOT_SERVING", 60)
        t0 = time.monotonic()
        srv.send_signal(signal.SIGTERM)
        code = srv.wait(timeout=LOAD_S - 30)  # a stop that waited for the load would time out here
        took = time.monotonic() - t0
    finally:
        srv.kill()
    log = srv.log()
    assert code == 0, log[-3000:]
    assert "worker 0 is still starting: stopping it now" in log
    assert "never reported SERVING, so no pre-stop window" in log
    assert "ready in" not in log and "killing" not in log
    print(f"\nSIGTERM during a {LOAD_S} s load (pre-stop 5 s, drain 30 s): exit 0 after {took:.2f} s")


def test_each_worker_is_reaped_by_its_reader_thread_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The pool's stop used to join every process while each reader thread joined its own: two
    ``waitpid`` on one child, and the loser, seeing no child, reported it alive and "killed" it."""
    waits: list[tuple[int, str]] = []
    stopping = threading.Event()  # (while workers start, multiprocessing polls its other children)
    real_waitpid = os.waitpid

    def recording_waitpid(pid: int, options: int) -> tuple[int, int]:
        if stopping.is_set():
            waits.append((pid, threading.current_thread().name))
        return real_waitpid(pid, options)

    monkeypatch.setattr(os, "waitpid", recording_waitpid)
    repository = load_repository(toy_repository(tmp_path))

    async def start_and_stop() -> list[int | None]:
        dispatcher = Dispatcher(repository, "cpu:2", runner=TOY_RUNNER)
        await dispatcher.start()
        while not dispatcher.ready():
            await asyncio.sleep(0.05)
        pids = dispatcher.worker_pids()
        stopping.set()
        await dispatcher.stop(10)
        return pids

    pids = asyncio.run(asyncio.wait_for(start_and_stop(), 120))
    assert len(pids) == 2
    for index, pid in enumerate(pids):
        waiters = {name for p, name in waits if p == pid}
        assert waiters == {f"camserve-reader-{index}"}, (pid, waiters)


def test_a_normal_stop_logs_no_kill() -> None:
    """What an operator saw of the double reaping: "did not exit; killing it" about an exited worker.
    (Once: the test above proves, deterministically, that each worker has one reaper; repeating this
    one only retried the race it no longer has.)"""
    srv = start_toy(workers="cpu:2")
    assert srv.stop() == 0
    log = srv.log()
    assert "killing" not in log and "did not exit" not in log, log[-2000:]
    assert log.count("[worker") >= 2 and "stopped" in log


def test_a_worker_that_does_not_exit_is_killed_within_the_drain() -> None:
    srv = start_toy("--drain-seconds", "1")
    worker = srv.worker_pids()[0]
    try:
        os.kill(worker, signal.SIGSTOP)  # cannot read "stop" any more
        assert srv.stop(timeout=60) == 0
    finally:
        srv.kill()
    waited = re.search(r"worker 0 did not exit within ([0-9.]+) s of stop; killing it", srv.log())
    assert waited is not None, srv.log()[-2000:]
    assert float(waited.group(1)) <= 1.0  # the rest of --drain-seconds, not a fixed 10 s

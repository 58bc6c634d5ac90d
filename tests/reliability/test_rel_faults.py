"""Worker faults under load, against a real server with two CPU worker processes (``--workers cpu:2``,
watchdog ``--batch-timeout-s 3``) running the stand-in engine (relstandin.py): the faults are the
pool's to handle (deaths, restarts, back-off, watchdog), and a stand-in worker restarts in a fraction
of a TensorFlow one's 10-20 s. The kill -9 of a TensorFlow worker under load is
tests/integration/test_faults.py.

The load is open loop at a quarter of the capacity measured at the start of the same run (so the
surviving worker can carry it alone on any machine), with deadlines far above the watchdog. Three
faults, one after the other, on one server:

1. ``kill -9`` of a worker: every call ends OK or UNAVAILABLE, none at its deadline; the calls that
   were on the dead worker get UNAVAILABLE before its replacement is serving (the server did not
   wait for anything); once the server reports the death (``camserve_workers_alive`` 1), the other
   worker serves every call sent.
2. Crash loop under the same load: the replacement is killed each time it appears, three times; the
   logged restart back-off doubles (1, 2, 4 s after the first 0.5 s); the other worker serves meanwhile.
3. Hung worker: ``SIGSTOP`` of a worker. The watchdog kills it, so the calls stuck on it get
   UNAVAILABLE, none waits for its deadline; the healthy worker serves the calls sent while the
   other is stopped (a count), at a latency bounded relative to before the fault, in the same run.

Afterwards: both workers alive, health SERVING, SIGTERM -> exit 0. With ``CAMSERVE_TEST_DEFECT``
(``dead-worker-hangs``, ``serialised-workers``; see defects/sitecustomize.py) this test must fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from relkit import (
    SOAK,
    CallRecord,
    LoadResult,
    closed_loop,
    encode,
    open_loop,
    photo,
    proc_state,
    report,
    valid_request,
    worker_pids,
)
from relserver import MODEL, RunningServer, start_server
from relstandin import RUNNER

pytestmark = pytest.mark.timeout(900 if SOAK else 300)

DEADLINE_S = 10.0        # far above the watchdog: a call that reaches it waited on a dead or hung worker
WATCHDOG_S = 3.0
LOAD_SHARE = 0.25        # of the measured two-worker capacity: one worker carries it at about half load
MAX_RATE_RPS = 16.0
LATENCY_RATIO = 8.0      # the healthy worker's callers, during the hang vs before it (medians, same run)
CALLS = {"OK", "UNAVAILABLE"}  # the only outcomes: served, or failed at once with a retryable code

REQUEST = valid_request(encode(photo(192, seed=1), ".jpg"), model=MODEL)


class Watch:
    """A background thread polling ``probe()`` until it is true; ``at`` is when (perf_counter), or None."""

    def __init__(self, probe: Callable[[], bool], period_s: float = 0.01) -> None:
        self.at: float | None = None
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.is_set():
                with contextlib.suppress(Exception):  # the metrics endpoint may blink under load
                    if probe():
                        self.at = time.perf_counter()
                        return
                self._stop.wait(period_s)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def wait(self, timeout_s: float) -> float | None:
        """Wait (bounded) for the probe to become true; returns ``at``."""
        self._thread.join(timeout_s)
        return self.at

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


async def _load_with(srv: RunningServer, rate: float, duration_s: float, at_s: float,
                     action: Callable[[], Any]) -> tuple[LoadResult, float]:
    """Open-loop load; ``action()`` ``at_s`` seconds in. Returns (result, action time in load seconds)."""
    load = asyncio.create_task(open_loop(srv.target, lambda i: REQUEST, rate, duration_s, DEADLINE_S,
                                         channels=2))
    await asyncio.sleep(at_s)  # the scenario's schedule, not synchronisation
    t_action = time.perf_counter()
    action()
    res = await load
    return res, t_action - res.t0


def _sent_between(res: LoadResult, start_s: float, end_s: float) -> list[CallRecord]:
    return [r for r in res.records if start_s <= r.sent_s < end_s]


def _only(res: LoadResult, allowed: set[str]) -> None:
    """Every call ended with an allowed code (a DEADLINE_EXCEEDED is a call left hanging)."""
    bad = [(round(r.sent_s, 2), r.code, r.details[:120]) for r in res.records if r.code not in allowed]
    assert not bad, f"{len(bad)} calls ended otherwise: {bad[:5]}; codes {dict(res.codes())}"


def _median_ms(records: list[CallRecord]) -> float:
    lat = sorted(r.latency_s for r in records)
    return 1e3 * lat[len(lat) // 2]


def _wait_workers(srv: RunningServer, n: int, timeout_s: float) -> None:
    """Block until ``n`` workers are alive and the metrics say so (polling the event, bounded)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if len(worker_pids(srv.pid)) == n and srv.metric("camserve_workers_alive") == n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{n} workers not alive after {timeout_s} s: {worker_pids(srv.pid)}")


def _kill_worker_under_load(srv: RunningServer, rate: float) -> dict[str, Any]:
    victim, survivor = worker_pids(srv.pid)[:2]
    restarts0 = srv.metric("camserve_worker_restarts_total")
    # the server noticed the death (one worker alive), and later the replacement serves (a restart
    # counted and two workers alive again)
    noticed = Watch(lambda: srv.metric("camserve_workers_alive") == 1, period_s=0.02)
    replaced = Watch(lambda: srv.metric("camserve_worker_restarts_total") > restarts0
                     and srv.metric("camserve_workers_alive") == 2, period_s=0.05)
    try:
        res, t_kill = asyncio.run(_load_with(srv, rate, 6.0, 2.0, lambda: os.kill(victim, signal.SIGKILL)))
        assert replaced.wait(120) is not None, "no replacement worker"
    finally:
        noticed.close()
        replaced.close()
    _only(res, CALLS)
    lost = [r for r in res.records if r.code == "UNAVAILABLE"]
    # the dead worker's calls were failed at its death, without waiting for anything (its replacement)
    t_replaced = replaced.at - res.t0
    late = [r for r in lost if r.sent_s + r.latency_s > t_replaced]
    assert not late, f"UNAVAILABLE only after the replacement was serving: {late[:3]}"
    # Once the death was noticed, the survivor served every call (a call sent between the kill and
    # then may have gone to the dead worker: UNAVAILABLE, above).
    assert noticed.at is not None, "the server never reported one worker alive"
    after = _sent_between(res, noticed.at - res.t0, float("inf"))
    ok_after = sum(r.code == "OK" for r in after)
    assert after and ok_after == len(after), f"the survivor served {ok_after}/{len(after)}"
    return {**res.summary(), "unavailable": len(lost), "sent_after_kill": len(after),
            "ok_after_kill": ok_after, "survivor": survivor,
            "replacement_serving_after_kill_s": round(t_replaced - t_kill, 2)}


def _crash_loop(srv: RunningServer, survivor: int, kills: int = 3) -> dict[str, Any]:
    """Kill the respawning worker (every worker but ``survivor``) as soon as it appears, ``kills`` + 1
    times; the gaps between each death and the next respawn are figures (the first respawn, already
    under way after the kill -9, is killed without measuring a gap)."""
    deadline = time.monotonic() + 90
    gaps: list[float] = []
    t_death: float | None = None
    while len(gaps) < kills and time.monotonic() < deadline:
        new = [p for p in worker_pids(srv.pid) if p != survivor]
        if new:
            if t_death is not None:
                gaps.append(time.monotonic() - t_death)
                if len(gaps) == kills:
                    break  # let this one live: the test goes on with both workers
            for p in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            t_death = time.monotonic()
            # wait until the server noticed (the pid is reaped) before looking for the next one
            while any(proc_state(p) not in ("", "Z") for p in new) and time.monotonic() < deadline:
                time.sleep(0.01)
        time.sleep(0.02)
    logged = [float(x) for x in re.findall(r"worker \d+ restarts in ([0-9.]+) s", srv.log())]
    return {"respawn_gaps_s": [round(g, 2) for g in gaps], "logged_backoffs_s": logged}


def _crash_loop_under_load(srv: RunningServer, survivor: int, rate: float) -> dict[str, Any]:
    async def run() -> tuple[LoadResult, dict[str, Any]]:
        load = asyncio.create_task(open_loop(srv.target, lambda i: REQUEST, rate, 12.0, DEADLINE_S,
                                             channels=2))
        loop_fig = await asyncio.to_thread(_crash_loop, srv, survivor)
        return await load, loop_fig

    res, fig = asyncio.run(run())
    _only(res, CALLS)
    ok = sum(r.code == "OK" for r in res.records)
    assert ok >= 0.8 * len(res.records), f"the other worker served {ok}/{len(res.records)} in the crash loop"
    gaps = fig["respawn_gaps_s"]
    assert len(gaps) == 3, gaps
    # back-off doubles from 0.5 s (the kill -9 used 0.5 s): these respawns waited 1, 2 and 4 s (the log)
    assert fig["logged_backoffs_s"][-3:] == [1.0, 2.0, 4.0], fig["logged_backoffs_s"]
    return {**fig, "load": res.summary()}


def _hang_worker_under_load(srv: RunningServer, rate: float) -> dict[str, Any]:
    victim = worker_pids(srv.pid)[-1]
    gone = Watch(lambda: proc_state(victim) in ("", "Z"))  # the watchdog killed it
    try:
        res, t_stop = asyncio.run(_load_with(srv, rate, 3.0 + WATCHDOG_S + 3.0, 3.0,
                                             lambda: os.kill(victim, signal.SIGSTOP)))
    finally:
        gone.close()
    assert gone.at is not None, "the watchdog left the stopped worker hung"
    t_gone = gone.at - res.t0
    _only(res, CALLS)  # the stuck calls: UNAVAILABLE from the watchdog's kill, not their deadline
    before = [r for r in _sent_between(res, 0.5, t_stop) if r.code == "OK"]  # after the first calls
    during = _sent_between(res, t_stop, t_gone)
    served = [r for r in during if r.code == "OK" and r.sent_s + r.latency_s < t_gone]
    assert before, f"nothing served before the fault: {dict(res.codes())}"
    # The healthy worker served while the other was stopped (a count), and its callers waited at most
    # LATENCY_RATIO times what they waited before the fault.
    assert during and len(served) >= 0.5 * len(during), \
        f"the healthy worker answered {len(served)} of the {len(during)} calls sent while the other hung"
    ratio = _median_ms(served) / _median_ms(before)
    assert ratio <= LATENCY_RATIO, (ratio, _median_ms(served), _median_ms(before))
    return {**res.summary(), "watchdog_kill_after_stop_s": round(t_gone - t_stop, 2),
            "sent_while_hung": len(during), "served_while_hung": len(served),
            "p50_before_ms": round(_median_ms(before), 1), "p50_while_hung_ms": round(_median_ms(served), 1),
            "p50_ratio": round(ratio, 2)}


def test_worker_faults_under_load() -> None:
    args = ["--batch-timeout-s", str(WATCHDOG_S)]
    with start_server("faults", args, workers="cpu:2", standin=True) as srv:
        # SERVING needs one warm worker: wait for the second too, or the first fault may hit a worker
        # still loading (and "one worker alive" would be true before any fault)
        _wait_workers(srv, 2, 120)
        restarts0 = srv.metric("camserve_worker_restarts_total")
        capacity = asyncio.run(closed_loop(srv.target, lambda i: REQUEST, 4, 3.0, DEADLINE_S)).summary()
        rate = max(1.0, min(MAX_RATE_RPS, LOAD_SHARE * capacity["goodput_rps"]))
        flags = f"--workers cpu:2 --frontends {srv.frontends} --runner {RUNNER} " + " ".join(args)
        fig: dict[str, Any] = {"server_flags": flags, "capacity": capacity, "load_rps": round(rate, 1),
                               "deadline_s": DEADLINE_S}

        fig["kill9"] = _kill_worker_under_load(srv, rate)
        fig["crash_loop"] = _crash_loop_under_load(srv, fig["kill9"]["survivor"], rate)
        _wait_workers(srv, 2, 120)
        assert srv.metric("camserve_worker_restarts_total") - restarts0 >= 4

        fig["hang"] = _hang_worker_under_load(srv, rate)
        _wait_workers(srv, 2, 120)
        srv.wait_serving(60)
        fig["worker_restarts_total"] = srv.metric("camserve_worker_restarts_total") - restarts0
        report("faults", fig)
        assert srv.stop() == 0

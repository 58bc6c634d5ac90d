"""Worker faults under load, against a real server with two CPU worker processes.

1. ``kill -9`` of a worker in the middle of open-loop load: every call gets exactly one answer before its
   deadline; the calls that were on the dead worker get UNAVAILABLE (retryable) within a second; the
   other worker keeps serving.
2. Crash loop: the replacement is killed again as soon as it appears, three times: restarts are spaced
   by a growing back-off (0.5 s doubling), and the service keeps answering meanwhile.
3. Hung worker: SIGSTOP of a worker under load. Calls stuck on it end at their deadline (never later);
   the rest are served by the other worker. When the server exposes the per-batch watchdog
   (``--batch-timeout-s``), the stopped worker must be killed and replaced within that timeout.

Afterwards: both workers alive, health SERVING, a valid request OK, SIGTERM -> exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from relkit import SOAK, LoadResult, encode, open_loop, photo, proc_state, report, valid_request, worker_pids
from relserver import FRONTENDS, MODEL, RunningServer, start_server

pytestmark = pytest.mark.timeout(900 if SOAK else 300)

RATE_RPS = 16.0          # about 25% of one worker's capacity: the survivor can carry it alone
DEADLINE_S = 3.0
SLACK_S = 1.0            # tolerance past the deadline: the client shares 2 busy cores with the server
WATCHDOG_S = 3.0


def _watchdog_flag() -> str | None:
    """The CLI flag setting the per-batch watchdog, if this build has one."""
    out = subprocess.run([sys.executable, "-m", "camserve.front.cli", "serve", "--help"], capture_output=True,
                         text=True, timeout=60).stdout
    for flag in ("--batch-timeout-s", "--batch-timeout", "--worker-batch-timeout-s", "--watchdog-s"):
        if flag in out:
            return flag
    return None


def _answers_ok(res: LoadResult, allowed: set[str]) -> dict[str, Any]:
    """Every call ended with one status, inside its deadline (+slack), with an allowed code."""
    late = [r for r in res.records if r.latency_s > r.deadline_s + SLACK_S]
    bad = [(r.code, r.details[:120]) for r in res.records if r.code not in allowed]
    assert not late, f"{len(late)} calls answered after their deadline, e.g. {late[0]}"
    assert not bad, f"unexpected codes: {bad[:5]}"
    return res.summary()


async def _load_with(target: str, duration_s: float, at_s: float, action: Any) -> tuple[LoadResult, float]:
    """Run open-loop load and call ``action()`` at ``at_s`` seconds in; returns (result, action time)."""
    jpeg = encode(photo(192, seed=1), ".jpg")
    req = valid_request(jpeg, model=MODEL)
    t0 = time.perf_counter()
    load = asyncio.create_task(open_loop(target, lambda i: req, RATE_RPS, duration_s, DEADLINE_S, channels=2))
    await asyncio.sleep(at_s)
    when = time.perf_counter() - t0
    action()
    return await load, when


def _wait_workers(srv: RunningServer, n: int, timeout_s: float) -> float:
    """Block until ``n`` workers are alive and the metrics say so; returns seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if len(worker_pids(srv.pid)) == n and srv.metric("camserve_workers_alive") == n:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"{n} workers not alive after {timeout_s} s: {worker_pids(srv.pid)}")


def _kill_worker_under_load(srv: RunningServer) -> dict[str, Any]:
    victim, survivor = worker_pids(srv.pid)[:2]
    res, t_kill = asyncio.run(_load_with(srv.target, 6.0, 2.0, lambda: os.kill(victim, signal.SIGKILL)))
    # DEADLINE_EXCEEDED is tolerated for a few calls: on a shared 2-core machine the surviving worker
    # may fall behind for a moment; it is counted and bounded, never silent.
    fig = _answers_ok(res, {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"})
    assert fig["codes"].get("DEADLINE_EXCEEDED", 0) <= 0.2 * fig["calls"], fig["codes"]
    lost = [r for r in res.records if r.code == "UNAVAILABLE"]
    # the calls on the dead worker are answered at once, not at their deadline
    late_lost = [r for r in lost if r.sent_s + r.latency_s > t_kill + 1.0]
    assert not late_lost, f"UNAVAILABLE answered > 1 s after the kill: {late_lost[:3]}"
    after = [r for r in res.records if r.sent_s > t_kill + 1.0]
    ok_after = sum(r.code == "OK" for r in after)
    assert after and ok_after >= 0.8 * len(after), f"the survivor served {ok_after}/{len(after)}"
    fig.update(unavailable_after_kill=len(lost), unavailable_latest_after_kill_ms=round(
        max((r.sent_s + r.latency_s - t_kill for r in lost), default=0.0) * 1e3, 1), survivor=survivor)
    return fig


def _crash_loop(srv: RunningServer, survivor: int, kills: int = 3) -> dict[str, Any]:
    """Kill the respawning worker (every worker but ``survivor``) as soon as it appears, ``kills`` + 1
    times; return the gaps between each death and the next respawn (the first respawn, already under
    way after the kill -9 test, is killed without measuring a gap)."""
    deadline = time.monotonic() + 60
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


def _hang_worker_under_load(srv: RunningServer, watchdog: bool) -> dict[str, Any]:
    victim = worker_pids(srv.pid)[-1]
    res, _ = asyncio.run(_load_with(srv.target, 6.0 if not watchdog else WATCHDOG_S + 5.0, 1.0,
                                         lambda: os.kill(victim, signal.SIGSTOP)))
    fig = _answers_ok(res, {"OK", "DEADLINE_EXCEEDED", "UNAVAILABLE"})
    fig["stuck_calls"] = sum(1 for r in res.records if r.code != "OK")
    fig["victim_state_after_load"] = proc_state(victim) or "gone"
    if not watchdog:
        os.kill(victim, signal.SIGCONT)
    return fig


@pytest.mark.parametrize("frontends", FRONTENDS, ids=[f"frontends{n}" for n in FRONTENDS])
def test_worker_faults_under_load(frontends: int) -> None:
    watchdog_flag = _watchdog_flag()
    args = [watchdog_flag, str(WATCHDOG_S)] if watchdog_flag else []
    with start_server("faults", args, workers="cpu:2", frontends=frontends) as srv:
        assert len(worker_pids(srv.pid)) == 2
        restarts0 = srv.metric("camserve_worker_restarts_total")
        flags = " ".join(["--workers cpu:2", f"--frontends {frontends}", *args])
        fig: dict[str, Any] = {"server_flags": flags, "load_rps": RATE_RPS,
                               "deadline_s": DEADLINE_S}

        fig["kill9"] = _kill_worker_under_load(srv)
        fig["crash_loop"] = _crash_loop(srv, fig["kill9"]["survivor"])
        gaps = fig["crash_loop"]["respawn_gaps_s"]
        assert len(gaps) == 3, gaps
        # back-off doubles from 0.5 s: the kill -9 used 0.5 s, so these respawns wait 1, 2 and 4 s
        assert gaps[0] >= 0.8 and gaps[1] >= 1.6 and gaps[2] >= 3.2, gaps
        assert gaps[0] < gaps[1] < gaps[2], gaps
        fig["restart_after_crash_loop_s"] = round(_wait_workers(srv, 2, 120), 1)
        assert srv.metric("camserve_worker_restarts_total") - restarts0 >= 4

        fig["hang"] = _hang_worker_under_load(srv, watchdog=watchdog_flag is not None)
        fig["watchdog_flag"] = watchdog_flag or "absent: hung worker resumed with SIGCONT by the test"
        if watchdog_flag:
            assert fig["hang"]["victim_state_after_load"] in ("gone", "Z"), "the worker was left hung"
            fig["restart_after_hang_s"] = round(_wait_workers(srv, 2, 120), 1)

        assert srv.wait_serving(30) < 30
        fig["worker_restarts_total"] = srv.metric("camserve_worker_restarts_total") - restarts0
        report(f"faults_frontends{frontends}", fig)
        assert srv.stop() == 0
    if not watchdog_flag:
        pytest.skip("hung-worker restart not verified: `camserve serve` has no per-batch watchdog flag "
                    "(the pool's batch_timeout_s is fixed at 120 s); calls on the hung worker ended at their "
                    "deadline, the rest were served")

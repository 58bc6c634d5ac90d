"""Connection policies that decide whether a long call lives: keepalive pings both ways, connection age.

A call is held on the server by stopping its worker (SIGSTOP) for as long as the test needs: the
call waits exactly as a call queued behind long batches does, with nothing on its connection. The
sleeps below are that waiting, the thing under test, not synchronisation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from camserve_proto import explain_pb2_grpc as pb_grpc
from serverproc import ServerProcess, wait_for
from transportkit import explain_request, start_toy

pytestmark = pytest.mark.timeout(400)

#: The client's keepalive period. gRPC's own server policy (client pings at most every 5 min with calls,
#: 2 strikes) ends a call at the client's fourth ping, the first being allowed (measured: 40 s in with a
#: 10 s period). camserve accepts pings every --min-ping-interval-s (5 s by default), with or without
#: calls; a client pinging every 6 s is above it, and gRPC's server measures each interval from the ping
#: before, which the client sends a period after that ping's ack, so no interval it sees is shorter.
#: Go and Java clients ping at most every 10 s (their floor), so what a 6 s client keeps, they keep.
PING_S = 6
#: How long the camserve call is held after the control's call ended: two more of the client's pings.
HELD_AFTER_CONTROL_S = 2 * PING_S
#: A stock grpcio client set up as behind NAT or a cloud load balancer: a ping every PING_S, calls or
#: not, with no cap on pings between data frames (as Go and Java clients do).
PINGING_CLIENT = [("grpc.keepalive_time_ms", PING_S * 1000), ("grpc.keepalive_permit_without_calls", 1),
                  ("grpc.http2.max_pings_without_data", 0)]


@contextmanager
def workers_stopped(srv: ServerProcess) -> Iterator[None]:
    pids = srv.worker_pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def call_in_thread(srv: ServerProcess, options: Sequence[tuple[str, Any]], timeout: float,
                   out: list[str]) -> threading.Thread:
    def call() -> None:
        with srv.channel(options) as ch:
            try:
                pb_grpc.ExplainServiceStub(ch).Explain(explain_request(), timeout=timeout)
                out.append("OK")
            except grpc.RpcError as e:
                out.append(f"{e.code().name}: {e.details()}")

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def batches_sent(srv: ServerProcess) -> float:
    return srv.metric("camserve_batch_size_count")


def test_a_queued_call_outlives_the_pings_that_end_it_under_grpcs_own_policy() -> None:
    """A call queued while its client pings every PING_S s: gRPC's own policy (client pings at most every
    5 min, 2 strikes) ends it with too_many_pings, as the control server, started with that policy
    (--min-ping-interval-s 300), shows; camserve's call is still waiting two pings later, and is
    answered OK once its worker resumes."""
    srv, control = start_toy(), start_toy("--min-ping-interval-s", "300")
    results: dict[str, list[str]] = {"camserve": [], "control": []}
    try:
        with workers_stopped(srv), workers_stopped(control):
            threads = {name: call_in_thread(s, PINGING_CLIENT, 300, results[name])
                       for name, s in (("camserve", srv), ("control", control))}
            for s in (srv, control):
                wait_for(lambda s=s: batches_sent(s) >= 1, 60)  # the call waits on the server now
            threads["control"].join(30 * PING_S)  # the event: the control's call ended (its 4th ping)
            time.sleep(HELD_AFTER_CONTROL_S)  # the camserve call goes on waiting: the thing under test
        for t in threads.values():
            t.join(120)
    finally:
        assert srv.stop() == 0 and control.stop() == 0
    (control_result,) = results["control"]
    assert control_result.startswith("UNAVAILABLE") and "ping" in control_result.lower(), control_result
    assert results["camserve"] == ["OK"], results


def test_the_server_finds_a_client_that_stopped_answering() -> None:
    """Server keepalive: a frozen client's call is ended (gRPC's default pings after 2 h, then waits
    1 min for the answer)."""
    srv = start_toy("--keepalive-time-s", "1", "--keepalive-timeout-s", "1")
    client = None
    try:
        with workers_stopped(srv):
            code = ("import grpc, sys; sys.path[:0] = sys.argv[2:]; import transportkit as k; "
                    "from camserve_proto import explain_pb2_grpc as g; g.ExplainServiceStub("
                    "grpc.insecure_channel(sys.argv[1])).Explain(k.explain_request(), timeout=300)")
            client = subprocess.Popen([sys.executable, "-c", code, srv.target, *sys.path])
            wait_for(lambda: batches_sent(srv) >= 1, 60)
            os.kill(client.pid, signal.SIGSTOP)  # its connection stays open; nothing answers pings
            # gRPC's own ack wait alone is a minute: ended within it means --keepalive-timeout-s took hold
            wait_for(lambda: srv.metric("camserve_requests_total", method="Explain", code="CANCELLED"), 45)
    finally:
        if client is not None:
            client.kill()
            client.wait(30)
        assert srv.stop() == 0


def test_a_connection_closed_for_its_age_lets_a_long_call_finish() -> None:
    """--max-connection-age-s closes connections so clients spread onto new pods; a call still running
    is not cut (the grace used to be --drain-seconds). With --max-connection-age-grace-s it is."""
    kept = start_toy("--max-connection-age-s", "1", "--drain-seconds", "1")
    cut = start_toy("--max-connection-age-s", "1", "--max-connection-age-grace-s", "1")
    results: dict[str, list[str]] = {"kept": [], "cut": []}
    try:
        with workers_stopped(kept), workers_stopped(cut):
            threads = {name: call_in_thread(s, (), 60, results[name])
                       for name, s in (("kept", kept), ("cut", cut))}
            for s in (kept, cut):
                wait_for(lambda s=s: batches_sent(s) >= 1, 60)
            # The event: the cut server's call ended, its connection's age (1 s, gRPC adds up to 10%) and
            # grace (1 s) past. The kept call, on the same age and the old grace (--drain-seconds 1), goes
            # on waiting 1 s more: the thing under test.
            threads["cut"].join(30)
            time.sleep(1)
        for t in threads.values():
            t.join(60)
    finally:
        assert kept.stop() == 0 and cut.stop() == 0
    assert results["kept"] == ["OK"], results
    assert results["cut"] and results["cut"][0].startswith("UNAVAILABLE"), results

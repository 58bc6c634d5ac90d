"""Stopping is prompt in every phase, and tells the truth.

* SIGTERM while a worker still loads: the worker is stopped at once (it would read "stop" only after
  its warm-up), and the pre-stop window is skipped (the server never reported SERVING, so no balancer
  routes to it).
* A normal stop reaps each worker once: no "did not exit; killing it" about a worker that had exited.
* A worker that does not exit is killed within --drain-seconds, not after a fixed 10 s.
* Streams a client keeps open (health Watch, as every client with client-side health checking holds
  one per connection; a reflection stream, as grpcurl's and grpcui's clients reuse one) end when the
  drain starts refusing calls: left open they held gRPC's stop to the end of --drain-seconds and were
  then cut UNAVAILABLE "Cancelling all calls".
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from camserve.repository import load_repository
from camserve.scheduling.dispatcher import Dispatcher
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from serverproc import ServerProcess, wait_for
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


def _open_streams(srv: ServerProcess, channel: grpc.Channel) -> tuple[list[Any], list[threading.Thread]]:
    """A health Watch of the whole server and of a name it does not have, and a reflection stream that
    asked one question and stays open; each thread appends what its stream got, then how it ended."""
    health = health_pb2_grpc.HealthStub(channel)
    seen: list[Any] = []
    stop_asking = threading.Event()

    def watch(service: str) -> None:
        try:
            for reply in health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=120):
                seen.append((service, reply.status))
            seen.append((service, "OK"))
        except grpc.RpcError as exc:
            seen.append((service, exc.code().name, exc.details()))

    def questions() -> Any:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        stop_asking.wait(120)  # a client that keeps its stream for later questions

    def reflect() -> None:
        call = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        try:
            for reply in call(questions(), timeout=120):
                seen.append(("reflection", reply.WhichOneof("message_response")))
            seen.append(("reflection", "OK"))
        except grpc.RpcError as exc:
            seen.append(("reflection", exc.code().name, exc.details()))
        finally:
            stop_asking.set()

    threads = [threading.Thread(target=watch, args=(name,)) for name in ("", "nope")]
    threads.append(threading.Thread(target=reflect))
    for t in threads:
        t.start()
    wait_for(lambda: len(seen) == 3, 30)  # each stream's first answer
    return seen, threads


def test_a_normal_stop_logs_no_kill_and_ends_open_streams() -> None:
    """What an operator saw of the double reaping: "did not exit; killing it" about an exited worker.
    (Once: the test above proves, deterministically, that each worker has one reaper; repeating this
    one only retried the race it no longer has.) And the streams clients keep open end when the drain
    begins refusing calls, each with its last word: NOT_SERVING then OK for a watcher (the health
    protocol's clients retry a Watch that ended, elsewhere by then), UNAVAILABLE with the drain's message
    and retry pushback for reflection, instead of being cut by gRPC at the end of --drain-seconds."""
    srv = start_toy(workers="cpu:2", pre_stop_seconds=0.5)
    channel = srv.channel()
    seen, threads = _open_streams(srv, channel)
    assert sorted(seen, key=str) == sorted([("", 1), ("nope", 3), ("reflection", "list_services_response")],
                                           key=str)
    assert srv.stop() == 0
    for t in threads:
        t.join(30)
    channel.close()
    assert seen[3:].count(("", 2)) == 1  # NOT_SERVING, told once
    ends = {item[0]: item[1:] for item in seen[3:] if item != ("", 2)}
    assert ends[""] == ends["nope"] == ("OK",), seen
    assert ends["reflection"][0] == "UNAVAILABLE" and "shutting down" in ends["reflection"][1], seen
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

"""Limits a caller can trip, through the real server and stock grpcio clients: always the same answer,
never retried when permanent, and counted (``camserve_transport_refusals_total{reason}`` and the
request counter).

The clients here carry a gRPC retry policy that retries RESOURCE_EXHAUSTED, so the server's count of
refusals is also the count of attempts: a permanent refusal must be seen exactly once per call.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from typing import Any

import grpc
import pytest
from camserve_proto import explain_pb2 as pb
from camserve_proto import explain_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serverproc import ServerProcess, wait_for
from transportkit import explain_request, start_toy

pytestmark = pytest.mark.timeout(300)

KiB = 1024
MAX_MESSAGE_MB = 1
RETRY_EVERYTHING = json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": {
    "maxAttempts": 5, "initialBackoff": "0.01s", "maxBackoff": "0.05s", "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]}}]})


@pytest.fixture(scope="module")
def server() -> Any:
    srv = start_toy("--max-message-mb", str(MAX_MESSAGE_MB), "--handshake-timeout-s", "1")
    yield srv
    srv.stop()


def _retrying(srv: ServerProcess) -> grpc.Channel:
    return srv.channel([("grpc.service_config", RETRY_EVERYTHING),
                        ("grpc.per_rpc_retry_buffer_size", 8 << 20)])


def _refusals(srv: ServerProcess, reason: str) -> float:
    return srv.metric("camserve_transport_refusals_total", reason=reason)


def _answered(srv: ServerProcess, method: str, code: str) -> float:
    return srv.metric("camserve_requests_total", method=method, code=code)


def _codes(fn: Any, n: int) -> list[str]:
    out = []
    for _ in range(n):
        try:
            fn()
            out.append("OK")
        except grpc.RpcError as e:
            out.append(e.code().name)
    return out


def test_a_10_kb_bearer_token_is_accepted_every_time(server: ServerProcess) -> None:
    """gRPC's defaults refuse metadata between 8 and 16 KiB at random (a 10 KB token ~a third of the time)."""
    token = [("authorization", "Bearer " + "t" * 10_000)]
    with _retrying(server) as ch:
        stub = pb_grpc.ExplainServiceStub(ch)
        codes = _codes(lambda: stub.ListModels(pb.ListModelsRequest(), metadata=token, timeout=10), 100)
    assert codes == ["OK"] * 100


def test_metadata_over_the_limit_is_refused_every_time_once_and_counted(server: ServerProcess) -> None:
    before = _refusals(server, "header_too_large"), _answered(server, "ListModels", "RESOURCE_EXHAUSTED")
    token = [("authorization", "Bearer " + "t" * (65 * KiB))]  # over the default --max-header-kb 64
    with _retrying(server) as ch:
        stub = pb_grpc.ExplainServiceStub(ch)
        codes = _codes(lambda: stub.ListModels(pb.ListModelsRequest(), metadata=token, timeout=10), 100)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListModels(pb.ListModelsRequest(), metadata=token, timeout=10)
    assert codes == ["RESOURCE_EXHAUSTED"] * 100
    assert "--max-header-kb" in info.value.details() and "'authorization'" in info.value.details()
    assert ("grpc-retry-pushback-ms", "-1") in info.value.trailing_metadata()
    assert _refusals(server, "header_too_large") - before[0] == 101  # one attempt per call: no retries
    assert _answered(server, "ListModels", "RESOURCE_EXHAUSTED") - before[1] == 101
    assert "refused a call to /camserve.v1.ExplainService/ListModels" in server.log()


def test_a_message_over_the_limit_is_refused_once_and_counted(server: ServerProcess) -> None:
    before = _refusals(server, "message_too_large")
    big = pb.ExplainRequest(image=pb.Image(encoded=os.urandom(int(1.5 * MAX_MESSAGE_MB * 2**20))))
    with _retrying(server) as ch:
        stub = pb_grpc.ExplainServiceStub(ch)
        codes = _codes(lambda: stub.Explain(big, timeout=30), 5)
        with pytest.raises(grpc.RpcError) as info:
            stub.Explain(big, timeout=30)
    assert codes == ["RESOURCE_EXHAUSTED"] * 5
    assert "--max-message-mb" in info.value.details()
    assert _refusals(server, "message_too_large") - before == 6


def test_what_grpc_refuses_itself_is_counted_too(server: ServerProcess) -> None:
    """Far over the limits (beyond gRPC's own backstop, twice camserve's limit) gRPC ends the call before
    any camserve code reads it; camserve still counts it, as reason 'not_received'."""
    before = _refusals(server, "not_received")
    with server.channel() as ch:  # no retry policy: gRPC's own refusal carries no "do not retry"
        stub = pb_grpc.ExplainServiceStub(ch)
        huge_header = [("x-claims", "c" * (200 * KiB))]
        huge_message = pb.ExplainRequest(image=pb.Image(encoded=os.urandom(3 * MAX_MESSAGE_MB * 2**20)))
        list_models = lambda: stub.ListModels(pb.ListModelsRequest(), metadata=huge_header, timeout=10)  # noqa: E731
        assert _codes(list_models, 1) == ["RESOURCE_EXHAUSTED"]
        assert _codes(lambda: stub.Explain(huge_message, timeout=30), 1) == ["RESOURCE_EXHAUSTED"]
    wait_for(lambda: _refusals(server, "not_received") - before >= 2, 10)


def test_a_connection_that_never_speaks_http2_is_closed(server: ServerProcess) -> None:
    """gRPC's default handshake timeout (120 s) lets a silent connection hold a descriptor for minutes."""
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=30) as sock:
        received = b""
        while chunk := sock.recv(4096):  # the server's SETTINGS, then EOF: closed by the server
            received += chunk            # (--handshake-timeout-s 1), not by our 30 s socket timeout
    assert len(received) < 4096


def test_concurrent_rpc_limit_is_camserves_and_counted() -> None:
    """--max-concurrent-rpcs: health included, refused RESOURCE_EXHAUSTED with a message, and counted."""
    srv = start_toy("--max-concurrent-rpcs", "2")
    workers = srv.worker_pids()
    results: list[str] = []
    try:
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)  # the two calls below hold their slots until released
        with srv.channel() as ch:
            stub = pb_grpc.ExplainServiceStub(ch)
            held: list[threading.Thread] = []
            health = health_pb2_grpc.HealthStub(ch)

            def refused() -> str | None:
                # Two Explain calls hold the two slots. A holder that reaches the server while a probe
                # has the second slot is itself refused (health counts too): replace it until two hold.
                while sum(t.is_alive() for t in held) < 2:
                    seed = len(held)
                    held.append(threading.Thread(target=lambda i=seed: results.extend(
                        _codes(lambda: stub.Explain(explain_request(i), timeout=60), 1))))
                    held[-1].start()
                try:
                    health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    return None
                except grpc.RpcError as e:
                    return e.details() if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else None

            details = wait_for(refused, 30)
            assert "--max-concurrent-rpcs" in details
            assert srv.metric("camserve_transport_refusals_total", reason="concurrency_limit") >= 1
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
            for t in held:
                t.join(60)
        assert results.count("OK") == 2 and set(results) <= {"OK", "RESOURCE_EXHAUSTED"}, results
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
        assert srv.stop() == 0

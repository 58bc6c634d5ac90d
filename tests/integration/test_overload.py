"""A server with a tiny queue and bearer-token auth: RESOURCE_EXHAUSTED at once, UNAUTHENTICATED.

Also checks that the CLI's batching flags override the repository config (max batch 2 -> buckets 1, 2).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import grpc
import pytest
from camserve_proto import explain_pb2 as pb
from camserve_proto import explain_pb2_grpc as pb_grpc
from front_helpers import digit_images, make_repository, png, request
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from serverproc import ServerProcess, start_server

TOKEN = "it-token-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
QUEUE = 3


@pytest.fixture(scope="module")
def server() -> ServerProcess:
    tmp = Path(tempfile.mkdtemp(prefix="camserve-overload-"))
    tokens = tmp / "tokens.txt"
    tokens.write_text(f"# test tokens\n{TOKEN}\n")
    srv = start_server("--max-queue-size", str(QUEUE), "--max-batch-size", "2", "--max-queue-delay-ms", "0",
                       "--auth-token-file", str(tokens),
                       repository=make_repository(tmp / "repo", flat=False), workers="cpu:1")
    try:
        yield srv
    finally:
        code = srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        assert code == 0


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> pb_grpc.ExplainServiceStub:
    channel = server.channel()
    yield pb_grpc.ExplainServiceStub(channel)
    channel.close()


def test_auth_required_but_not_for_health_and_reflection(server: ServerProcess,
                                                         stub: pb_grpc.ExplainServiceStub) -> None:
    req = request(png(digit_images(1)[0]))
    denied0 = server.metric("camserve_requests_total", method="Explain", code="UNAUTHENTICATED")
    for metadata, words in (((), "missing credentials"), ((("authorization", "Bearer nope"),), "invalid"),
                            ((("authorization", TOKEN),), "Bearer")):
        with pytest.raises(grpc.RpcError) as err:
            stub.Explain(req, metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and words in err.value.details()
    # Refused in the interceptor, before the servicer: still counted by code.
    assert server.metric("camserve_requests_total", method="Explain", code="UNAUTHENTICATED") == denied0 + 3
    assert stub.Explain(req, metadata=AUTH, timeout=30).explanations
    with server.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        status = health.Check(health_pb2.HealthCheckRequest(service="demo"), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        assert "camserve.v1.ExplainService" in set(ProtoReflectionDescriptorDatabase(ch).get_services())


def test_batching_flags_override_the_config(stub: pb_grpc.ExplainServiceStub) -> None:
    info = stub.GetModel(pb.GetModelRequest(model="demo"), metadata=AUTH, timeout=10)
    assert info.max_batch_size == 2 and list(info.batch_buckets) == [1, 2] and info.max_queue_delay_ms == 0


def test_full_queue_is_refused_at_once(server: ServerProcess, stub: pb_grpc.ExplainServiceStub) -> None:
    payloads = [png(im) for im in digit_images(8)]
    ended: list[int] = []  # call indices in the order they ended (list.append is atomic)
    all_ended = threading.Event()
    futures = [stub.Explain.future(request(payloads[i % 8]), metadata=AUTH, timeout=60) for i in range(120)]

    def on_done(i: int) -> None:
        ended.append(i)
        if len(ended) == len(futures):
            all_ended.set()

    for i, f in enumerate(futures):
        f.add_done_callback(lambda _f, i=i: on_done(i))
    outcomes = []
    for f in futures:
        try:
            f.result()
            outcomes.append(("OK", ""))
        except grpc.RpcError as e:
            outcomes.append((e.code().name, e.details()))
    assert all_ended.wait(60)  # every done-callback ran (they may run just after result() returns)
    # "At once": no refused call waited for the queue to drain (each ended before the last OK did).
    last_ok = max(k for k, i in enumerate(ended) if outcomes[i][0] == "OK")
    late = [i for k, i in enumerate(ended) if outcomes[i][0] == "RESOURCE_EXHAUSTED" and k > last_ok]
    assert not late, f"{len(late)} refusals ended after every admitted call"
    codes = {c for c, _ in outcomes}
    assert codes == {"OK", "RESOURCE_EXHAUSTED"}, codes
    full = [d for c, d in outcomes if c == "RESOURCE_EXHAUSTED"]
    assert all("full" in d and "retry" in d for d in full), full[:2]
    ok = sum(c == "OK" for c, _ in outcomes)
    assert ok >= QUEUE
    assert server.metric("camserve_requests_total", code="RESOURCE_EXHAUSTED") == len(full)
    assert server.metric("camserve_batch_size_bucket", model="demo", le="2.0") == \
        server.metric("camserve_batch_size_count", model="demo")  # never more than the max batch
    assert stub.Explain(request(payloads[0]), metadata=AUTH, timeout=30).explanations  # recovers
    print(f"\nqueue {QUEUE}: {ok} OK, {len(full)} RESOURCE_EXHAUSTED of 120 concurrent calls")


def test_explain_before_warm_up_is_unavailable_and_says_so() -> None:
    """DESIGN's "UNAVAILABLE ... not ready" row: the port answers (health NOT_SERVING) while the
    worker still loads and compiles; an Explain then gets UNAVAILABLE (retryable) and a message."""
    srv = start_server(wait=False)
    try:
        while (status := srv.health()) != "NOT_SERVING":  # None until the port answers
            assert status != "SERVING", "the server became ready before the test could look"
            assert srv.alive(), srv.log_tail()
            time.sleep(0.02)  # polling the port, bounded by the test's timeout
        with srv.channel() as ch, pytest.raises(grpc.RpcError) as err:
            pb_grpc.ExplainServiceStub(ch).Explain(request(png(digit_images(1)[0])), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert "still loading" in err.value.details()
    finally:
        assert srv.stop() == 0

"""Why a call ended, as the server counts it: a deadline is DEADLINE_EXCEEDED, a cancel is CANCELLED.

One server (demo model, one CPU worker). Each test holds the worker with SIGSTOP, so calls wait in the
worker or in the queue for as long as the test wants, and the outcome never depends on how fast the
machine is; SIGCONT at the end lets whatever was held finish. Only the server's own counters are read:
``camserve_requests_total{code}`` and ``camserve_requests_dropped_total{reason}``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest
from camserve_proto import explain_pb2 as pb
from camserve_proto import explain_pb2_grpc as pb_grpc
from front_helpers import code_name, digit_images, png, request
from serverproc import ServerProcess, server_fixture

pytestmark = pytest.mark.timeout(300)
SHORT = 0.4  # seconds: the deadline of the calls that time out (they wait on a stopped worker)


server = server_fixture(workers="cpu:1")  # the bundled demo model


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.ExplainServiceStub]:
    channel = server.channel()
    yield pb_grpc.ExplainServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def image() -> bytes:
    return png(digit_images(1)[0])


class Counts:
    """The server's counters of ended calls and dropped requests, read as changes since creation."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.start = self.read()

    def read(self) -> dict[str, float]:
        m = self.server.metric
        return {"DEADLINE_EXCEEDED": m("camserve_requests_total", method="Explain", code="DEADLINE_EXCEEDED"),
                "CANCELLED": m("camserve_requests_total", method="Explain", code="CANCELLED"),
                "batch DEADLINE_EXCEEDED": m("camserve_requests_total", method="ExplainBatch",
                                            code="DEADLINE_EXCEEDED"),
                "batch CANCELLED": m("camserve_requests_total", method="ExplainBatch", code="CANCELLED"),
                "dropped deadline": m("camserve_requests_dropped_total", reason="deadline"),
                "dropped cancelled": m("camserve_requests_dropped_total", reason="cancelled"),
                "batches": m("camserve_batch_size_count", model="demo"),
                "queued": m("camserve_queue_depth", model="demo")}

    def delta(self) -> dict[str, float]:
        now = self.read()
        return {k: now[k] - self.start[k] for k in now if k != "queued"} | {"queued": now["queued"]}

    def wait(self, done: Callable[[dict[str, float]], bool], what: str,
             timeout: float = 60.0) -> dict[str, float]:
        """Poll the counters until ``done`` holds (an event on the server, not a duration)."""
        give_up = time.monotonic() + timeout  # a bound on waiting for the event, not on its timing
        while not done(d := self.delta()):
            if time.monotonic() > give_up:
                raise TimeoutError(f"never {what}: {d}")
        return d


@contextlib.contextmanager
def worker_stopped(server: ServerProcess) -> Iterator[None]:
    """SIGSTOP the only worker (it holds whatever it was sent); SIGCONT on the way out."""
    (pid,) = server.worker_pids()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_timed_out_call_is_deadline_exceeded_and_its_batch_never_computed(
        server: ServerProcess, stub, image: bytes) -> None:
    """One call sent to a worker that does not start it in time: DEADLINE_EXCEEDED on both sides, and
    since its only caller left before the worker started it, the batch is skipped (dropped "deadline")."""
    counts = Counts(server)
    with worker_stopped(server):
        assert code_name(stub.Explain.future(request(image), timeout=SHORT)) == "DEADLINE_EXCEEDED"
        d = counts.wait(lambda d: d["DEADLINE_EXCEEDED"] + d["CANCELLED"] >= 1, "counted")
        assert d["DEADLINE_EXCEEDED"] == 1 and d["CANCELLED"] == 0, d
        assert d["batches"] == 1, d  # it had been sent to the worker
        # A round trip through the server's event loop: the worker has been told by now.
        stub.ListModels(pb.ListModelsRequest(), timeout=30)
    d = counts.wait(lambda d: d["dropped deadline"] + d["dropped cancelled"] >= 1, "dropped")
    assert d["dropped deadline"] == 1 and d["dropped cancelled"] == 0, d  # skipped, not computed
    assert code_name(stub.Explain.future(request(image), timeout=60)) == "OK"  # the worker serves again


def test_eight_queued_timed_out_calls_are_deadline_exceeded_and_dropped_as_deadline(
        server: ServerProcess, stub, image: bytes) -> None:
    """Eight calls queued behind a held batch all time out, whoever notices first (the queue's
    deadline timer or gRPC cancelling the handler): each is DEADLINE_EXCEEDED, dropped "deadline"."""
    counts = Counts(server)
    with worker_stopped(server):
        held = stub.Explain.future(request(image), timeout=120)
        counts.wait(lambda d: d["batches"] >= 1, "sent to the worker")  # it holds this one now
        late = [stub.Explain.future(request(image), timeout=SHORT) for _ in range(8)]
        assert [code_name(f) for f in late] == ["DEADLINE_EXCEEDED"] * 8
        d = counts.wait(lambda d: d["DEADLINE_EXCEEDED"] + d["CANCELLED"] >= 8, "counted all eight")
        assert d["DEADLINE_EXCEEDED"] == 8 and d["CANCELLED"] == 0, d
        assert d["dropped deadline"] == 8 and d["dropped cancelled"] == 0, d
        assert d["batches"] == 1 and d["queued"] == 0, d  # none of them was computed
    assert code_name(held) == "OK"


def test_a_caller_that_cancels_stays_cancelled(server: ServerProcess, stub, image: bytes) -> None:
    """A real cancel long before the deadline: CANCELLED, dropped "cancelled"."""
    counts = Counts(server)
    with worker_stopped(server):
        held = stub.Explain.future(request(image), timeout=120)
        counts.wait(lambda d: d["batches"] >= 1, "sent to the worker")
        waiting = stub.Explain.future(request(image), timeout=120)
        counts.wait(lambda d: d["queued"] == 1, "queued")
        assert waiting.cancel()
        d = counts.wait(lambda d: d["CANCELLED"] + d["DEADLINE_EXCEEDED"] >= 1, "counted")
        assert d["CANCELLED"] == 1 and d["DEADLINE_EXCEEDED"] == 0, d
        d = counts.wait(lambda d: d["dropped cancelled"] + d["dropped deadline"] >= 1, "dropped")
        assert d["dropped cancelled"] == 1 and d["dropped deadline"] == 0, d
    assert code_name(held) == "OK"


def test_an_explain_batch_that_times_out_in_the_queue(server: ServerProcess, stub) -> None:
    """ExplainBatch: its images time out together; the call is DEADLINE_EXCEEDED and every queued
    image is dropped "deadline"."""
    images = [png(img) for img in digit_images(3, seed=11)]
    counts = Counts(server)
    with worker_stopped(server):
        held = stub.Explain.future(request(images[0]), timeout=120)
        counts.wait(lambda d: d["batches"] >= 1, "sent to the worker")
        batch = stub.ExplainBatch.future(pb.ExplainBatchRequest(requests=[request(i) for i in images]),
                                         timeout=SHORT)
        assert code_name(batch) == "DEADLINE_EXCEEDED"
        d = counts.wait(lambda d: d["batch DEADLINE_EXCEEDED"] + d["batch CANCELLED"] >= 1, "counted")
        assert d["batch DEADLINE_EXCEEDED"] == 1 and d["batch CANCELLED"] == 0, d
        d = counts.wait(lambda d: d["dropped deadline"] + d["dropped cancelled"] >= 3, "dropped all three")
        assert d["dropped deadline"] == 3 and d["dropped cancelled"] == 0, d
    assert code_name(held) == "OK"

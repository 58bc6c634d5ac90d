"""A scripted ExplainService on loopback, for client behaviour that must be counted exactly.

Not a stand-in for camserve (tests against the real server live in test_client_server.py): it
records every attempt, the metadata and the exact Image it received, and fails on request with
the codes a test scripts, which the real server cannot be made to do on demand.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
from camserve_proto import explain_pb2 as pb
from camserve_proto import explain_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

HEATMAP = (np.arange(20, dtype=np.float32).reshape(4, 5) / 19.0).astype(np.float32)


@dataclass
class Script:
    """Codes to fail with, in order, before answering normally (with ``trailers`` on each failure, e.g.
    a retry pushback); delay before each answer; ``hold``: each answer waits until the test sets it
    (at most ``hold_s``), so a test can keep a call unanswered for as long as it needs, not for a time."""

    failures: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)
    gather: int = 0  # hold each scripted call until this many are in flight at once (at most 2 s)
    always: tuple[grpc.StatusCode, str] | None = None
    trailers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    only: set[str] | None = None  # the methods the script applies to (None: all)
    hold: threading.Event | None = None
    hold_s: float = 60.0


class FakeExplain(pb_grpc.ExplainServiceServicer):
    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.script = Script()
        self.attempts: dict[str, int] = defaultdict(int)
        self.requests: list[pb.ExplainRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.peers: set[str] = set()  # the client address:port of every scripted call (one per connection)
        self.lock = threading.Lock()
        self.in_flight = 0  # Explain/ExplainBatch calls inside the handler now, and the most at once
        self.max_in_flight = 0
        self._changed = threading.Condition(self.lock)

    def _gate(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.attempts[method] += 1
            self.metadata.append(dict(context.invocation_metadata()))
            self.peers.add(context.peer())
            if self.script.only is not None and method not in self.script.only:
                return
            failure = self.script.failures.pop(0) if self.script.failures else self.script.always
            if self.script.gather:
                self._changed.wait_for(lambda: self.in_flight >= self.script.gather, timeout=2.0)
        if self.script.delay_s:
            time.sleep(self.script.delay_s)
        if self.script.hold is not None:
            self.script.hold.wait(self.script.hold_s)
        if failure is not None:
            if self.script.trailers:
                context.set_trailing_metadata(self.script.trailers)
            context.abort(failure[0], failure[1])

    def _answer(self, req: pb.ExplainRequest) -> pb.ExplainResponse:
        first = req.class_index if req.HasField("class_index") else 0
        exps = []
        for k in range(max(1, req.top_k)):
            cls = first + k
            exps.append(pb.ClassExplanation(
                class_index=cls, label=f"class{cls}", probability=0.5 / (k + 1), score=3.0 - k,
                heatmap=None if req.output.omit_tensor else pb.Tensor(
                    dtype=pb.FLOAT32, shape=[4, 5], data=HEATMAP.astype("<f4").tobytes()),
                heatmap_png=b"PNG" if req.output.heatmap_png else b"",
                overlay=b"OVERLAY%d" % req.output.overlay if req.output.overlay else b""))
        return pb.ExplainResponse(
            request_id=req.request_id or "server-made", model=req.model or self.name, model_version=1,
            method=req.method or pb.GRAD_CAM, target_layer=req.target_layer or "conv",
            explanations=exps,
            top_predictions=[pb.Prediction(class_index=0, label="class0", probability=0.5)],
            timing=pb.Timing(queue_ms=1.5, compute_ms=2.5, batch_size=3, total_ms=5.0))

    def _enter(self, delta: int) -> None:
        with self.lock:
            self.in_flight += delta
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._changed.notify_all()

    def Explain(self, request, context):
        self._enter(1)
        try:
            self._gate("Explain", context)
            with self.lock:
                self.requests.append(request)
            return self._answer(request)
        finally:
            self._enter(-1)

    def ExplainBatch(self, request, context):
        self._enter(1)
        try:
            self._gate("ExplainBatch", context)
            with self.lock:
                self.requests.extend(request.requests)
            return pb.ExplainBatchResponse(responses=[self._answer(r) for r in request.requests])
        finally:
            self._enter(-1)

    def ListModels(self, request, context):
        self._gate("ListModels", context)
        return pb.ListModelsResponse(models=[self._info()])

    def GetModel(self, request, context):
        self._gate("GetModel", context)
        if request.model not in ("", self.name):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model!r}; served: {self.name}")
        return self._info()

    def _info(self) -> pb.ModelInfo:
        return pb.ModelInfo(
            name=self.name, version=1, ready=True, input_shape=[32, 32, 3], preprocessing="tf",
            num_classes=10,
            labels=[f"class{i}" for i in range(10)], default_target_layer="conv",
            layers=[pb.LayerInfo(name="conv", grid=[4, 5], channels=8, cam_supported=True)],
            methods=[pb.CAM, pb.GRAD_CAM], max_batch_size=8, batch_buckets=[1, 2, 4, 8],
            max_queue_delay_ms=2.0, backend="tensorflow", compile_mode="graph")


class FakeServer:
    """A threaded grpc server with FakeExplain + the stock health servicer on a free loopback port
    (over TLS with ``credentials``)."""

    def __init__(self, name: str = "fake", port: int = 0,
                 credentials: grpc.ServerCredentials | None = None) -> None:
        self.service = FakeExplain(name)
        self.health = health.HealthServicer()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        pb_grpc.add_ExplainServiceServicer_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = f"127.0.0.1:{port}"
        self.port = (self.server.add_secure_port(address, credentials) if credentials is not None
                     else self.server.add_insecure_port(address))
        self.target = f"127.0.0.1:{self.port}"
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

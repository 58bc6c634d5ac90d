"""The Open Inference Protocol servicer (``inference.GRPCInferenceService``, "KServe v2"), grpc.aio.

Stock Triton and KServe clients (tritonclient, perf_analyzer, KServe's Python client) get heatmaps
from camserve through it, beside ``camserve.v1.ExplainService`` on the same port, behind the same
interceptors (token, malformed bodies), over the same Dispatcher: a request of N rows is N images in
the model's queue, batched with camserve.v1 callers' images. Calls run through the front process's
:class:`~camserve.front.calls.CallRunner` (in-flight limit, deadlines, status codes from
``status``'s table, ``camserve_requests_total{method=<RPC>}``). ``oip_infer`` maps a ModelInfer
onto camserve's records; ``oip_models`` describes the models. The methods of the protocol that are
not served (streaming, repository, shared memory, trace, logging: Triton's grpc_service.proto has
them) are answered by :class:`UnservedMethods`: UNIMPLEMENTED at once, saying what to do instead
(gRPC's own answer, "Method not found!", says neither); ModelStreamInfer says it in a reply's
``error_message`` first, as Triton reports errors on a stream.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import grpc
from camserve_proto import grpc_service_pb2 as pb
from camserve_proto import grpc_service_pb2_grpc as pb_grpc
from camserve_proto import oip as oip_wire

from camserve.front import codec
from camserve.front.calls import Call, CallRunner, FrontServicer, compute, shed_if_full
from camserve.front.metrics import Metrics
from camserve.front.oip_infer import (
    InferCall,
    build_reply,
    check_maps,
    decode_rows,
    model_at,
    parse_infer,
)
from camserve.front.oip_models import model_config, model_metadata, model_statistics
from camserve.front.replies import check_reply
from camserve.front.requests import RequestParser
from camserve.front.status import abort, shown, status_of, trailers_of
from camserve.records import ErrorKind, Failure
from camserve.repository import ModelConfig
from camserve.scheduling.batcher import WorkItem

__all__ = ["EXTENSIONS", "SERVER_NAME", "UNSERVED", "InferenceServicer", "UnservedMethods"]

SERVER_NAME = "camserve"


def _version() -> str:
    """The installed distribution's version (importing the ``camserve`` package would load the engine)."""
    try:
        return importlib.metadata.version("camserve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"

#: The protocol extensions ServerMetadata advertises: only those implemented. "parameters": request
#: parameters are read (and echoed in the reply's); "model_configuration" and "statistics": Triton's
#: ModelConfig and ModelStatistics; "classification": PROBABILITIES as the best classes' strings
#: (``camserve_proto.oip.CLASSIFICATION``). Not "schedule_policy": ``timeout`` is honoured but
#: ``priority`` is not.
EXTENSIONS: tuple[str, ...] = ("parameters", "model_configuration", "statistics", "classification")

_REPOSITORY = ("no model repository extension; the models of --model-repository are loaded when the server "
               "starts and served until it stops, and ModelStatistics with no name lists them")
_SHARED_MEMORY = ("no shared-memory extension; send inputs in raw_input_contents and read outputs from "
                  "raw_output_contents")
#: Each method of Triton's ``inference.GRPCInferenceService`` camserve does not serve, and why.
UNSERVED: dict[str, str] = {
    "ModelStreamInfer": "no streaming inference; send each request with ModelInfer (tritonclient: infer or "
                        "async_infer, not start_stream/async_stream_infer nor the aio client's stream_infer; "
                        "perf_analyzer: without --streaming)",
    "RepositoryIndex": _REPOSITORY,
    "RepositoryModelLoad": _REPOSITORY,
    "RepositoryModelUnload": _REPOSITORY,
    **{f"{kind}SharedMemory{op}": _SHARED_MEMORY
       for kind in ("System", "Cuda") for op in ("Status", "Register", "Unregister")},
    "TraceSetting": "no trace extension; each reply's parameters carry queue_ms, compute_ms, batch_size and "
                    "total_ms, and /metrics has the server's histograms",
    "LogSettings": "no logging extension; the log level is set when the server starts (--log-level)",
}


class UnservedMethods(grpc.GenericRpcHandler):
    """Answers every method of ``inference.GRPCInferenceService`` that camserve does not serve (the
    :data:`UNSERVED` ones, and names the protocol does not have) with UNIMPLEMENTED at once, saying
    what is served or what to do instead, whatever the call's streaming kind: a stock client's
    ModelStreamInfer stream ends with it before a request is read. ``on_reject(method, code)`` counts
    each such call."""

    def __init__(self, on_reject: Callable[[str, str], None] | None = None) -> None:
        self._on_reject = on_reject
        self._prefix = f"/{oip_wire.SERVICE_NAME}/"

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method or ""
        name = method[len(self._prefix):] if method.startswith(self._prefix) else None
        if name is None or name in oip_wire.RPC_METHODS:
            return None
        why = UNSERVED.get(name)
        served = ", ".join(oip_wire.RPC_METHODS)
        message = (f"camserve does not serve {name}: {why}. It serves {served}" if why is not None else
                   f"{oip_wire.SERVICE_NAME} has no method {shown(name)}. camserve serves {served}")
        failure = Failure(message, ErrorKind.UNIMPLEMENTED)

        async def refuse(_requests: Any, context: grpc.aio.ServicerContext) -> None:
            if self._on_reject is not None:  # counted here: a call the token check refused counts once
                self._on_reject(method, status_of(failure.kind).name)
            if name == "ModelStreamInfer":
                # Triton's C++ client (perf_analyzer --streaming) drops a stream's final status and would
                # wait for replies forever: like Triton, say it in a reply's error_message first.
                await context.write(_stream_error(message))
            await abort(context, failure, trailers_of(failure.kind))

        # The bidirectional-streaming shape answers a call of any shape: nothing is read before the status.
        return grpc.stream_stream_rpc_method_handler(refuse)


def _stream_error(message: str) -> bytes:
    """A serialized ModelStreamInferResponse holding only ``error_message`` (field 1, a string, in Triton's
    grpc_service.proto); camserve's copy of the proto leaves streaming out, and a refusal needs no more."""
    data = message.encode()
    size, length = len(data), bytearray()
    while size > 0x7F:  # the length as a protobuf varint
        length.append(0x80 | (size & 0x7F))
        size >>= 7
    length.append(size)
    return b"\x0a" + bytes(length) + data


class InferenceServicer(FrontServicer, pb_grpc.GRPCInferenceServiceServicer):
    """The eight RPCs of camserve's Open Inference Protocol endpoint, over a Dispatcher.

    Built like :class:`~camserve.front.service.ExplainServicer` from the parts of
    :class:`~camserve.front.calls.FrontServicer`, so each front-end process registers its own.
    ``draining()`` tells whether the server is shutting down (ServerReady and ModelReady are then
    false, while ServerLive stays true).
    """

    def __init__(self, dispatcher: Any, parser: RequestParser, metrics: Metrics, executor: Executor, *,
                 max_image_pixels: int = codec.DEFAULT_MAX_PIXELS, max_send_bytes: int = 16 << 20,
                 calls: CallRunner | None = None, draining: Callable[[], bool] = lambda: False) -> None:
        super().__init__(dispatcher, parser, metrics, executor, max_image_pixels=max_image_pixels,
                         max_send_bytes=max_send_bytes, calls=calls)
        self.draining = draining

    # ------------------------------------------------------------------------ helpers

    def _model(self, name: str, version: str) -> ModelConfig:
        """The served model ``name`` ('' = the default) at ``version`` ('' = newest): NOT_FOUND otherwise."""
        return model_at(self.parser, name, version, "version")

    def _ready(self, model: str | None = None) -> bool:
        return not self.draining() and bool(self.dispatcher.ready(model))

    async def _answer(self, context: grpc.aio.ServicerContext, method: str, model: str | None,
                      reply: Callable[[], Any]) -> Any:
        """A call without images: ``reply()`` builds the answer (a Failure ends it with its status)."""

        async def work(_call: Call) -> Any:
            return reply()

        return await self.calls.run(context, method, model, work)

    # ------------------------------------------------------------------------ health and metadata

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ServerLiveResponse:
        return await self._answer(context, "ServerLive", None, lambda: pb.ServerLiveResponse(live=True))

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
                          ) -> pb.ServerReadyResponse:
        return await self._answer(context, "ServerReady", None,
                                  lambda: pb.ServerReadyResponse(ready=self._ready()))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ModelReadyResponse:
        def reply() -> pb.ModelReadyResponse:
            cfg = self._model(request.name, request.version)
            return pb.ModelReadyResponse(ready=self._ready(cfg.name))

        return await self._answer(context, "ModelReady", request.name or self.parser.default_model, reply)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
                             ) -> pb.ServerMetadataResponse:
        return await self._answer(context, "ServerMetadata", None, lambda: pb.ServerMetadataResponse(
            name=SERVER_NAME, version=_version(), extensions=list(EXTENSIONS)))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
                            ) -> pb.ModelMetadataResponse:
        def reply() -> pb.ModelMetadataResponse:
            cfg = self._model(request.name, request.version)
            return model_metadata(cfg, self.dispatcher.model_summary(cfg.name))

        return await self._answer(context, "ModelMetadata", request.name or self.parser.default_model, reply)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
                          ) -> pb.ModelConfigResponse:
        def reply() -> pb.ModelConfigResponse:
            cfg = self._model(request.name, request.version)
            return pb.ModelConfigResponse(config=model_config(cfg, self.dispatcher.model_summary(cfg.name)))

        return await self._answer(context, "ModelConfig", request.name or self.parser.default_model, reply)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
                              ) -> pb.ModelStatisticsResponse:
        def reply() -> pb.ModelStatisticsResponse:
            if request.name:
                configs = [self._model(request.name, request.version)]
            else:
                configs = list(self.parser.repository.values())
            return pb.ModelStatisticsResponse(model_stats=[
                model_statistics(cfg, self.metrics.statistics.counters(cfg.name)) for cfg in configs])

        return await self._answer(context, "ModelStatistics", request.name or None, reply)

    # ------------------------------------------------------------------------ inference

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ModelInferResponse:
        model = request.model_name or self.parser.default_model
        return await self.calls.run(context, "ModelInfer", model, lambda call: self._infer(request, call))

    async def _infer(self, request: pb.ModelInferRequest, admission: Call) -> pb.ModelInferResponse:
        call = parse_infer(self.parser, request, self.max_image_pixels)
        sizes = call.sizes
        check_maps(call, sizes, self.max_send_bytes)
        admission.admit(len(call))  # the rows it carries, checked: never the count it claims
        shed_if_full(self.dispatcher, call.config.name, len(call))
        deadline, started = admission.deadline, admission.started
        if call.timeout_s is not None:  # Triton's queue timeout: the earlier of it and the caller's deadline
            deadline = min(deadline or float("inf"), started + call.timeout_s)
        if self._inline(call, sizes):
            images = decode_rows(call, self.max_image_pixels)
        else:
            images = await self.in_pool(decode_rows, call, self.max_image_pixels)
        check_maps(call, [img.original_size for img in images], self.max_send_bytes)
        results = await compute(self.dispatcher, [
            WorkItem(model=call.config.name, pixels=img.pixels, spec=call.spec, deadline=deadline)
            for img in images])
        admission.computed(results)
        if call.output.costly:
            reply = await self.in_pool(lambda: build_reply(call, images, results, self.clock() - started,
                                                           self.max_send_bytes))
        else:
            reply = build_reply(call, images, results, self.clock() - started, self.max_send_bytes)
        check_reply(reply, self.max_send_bytes)
        return reply

    @staticmethod
    def _inline(call: InferCall, sizes: list[tuple[int, int]]) -> bool:
        """Pixels need no decoding; one tiny encoded image (``sizes``: the rows' (h, w) as sent) decodes
        faster than a hop to the pool."""
        if not isinstance(call.rows, list):
            return True
        return len(sizes) == 1 and codec.inline(*sizes[0])

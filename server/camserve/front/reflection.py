"""Server reflection under both names stock tools ask for: ``grpc.reflection.v1`` and ``v1alpha``.

Why our own few lines: grpcurl, grpcui, Postman and Java/Go clients ask ``grpc.reflection.v1`` first
(v1alpha is deprecated in gRPC-Java), but grpcio-reflection serves only v1alpha, up to the newest
release of our grpcio line (grpc/grpc#38576 asks for v1 in Python and is open). The two protocols
are one .proto under two package names: the same messages with the same field numbers, so the same
bytes. v1 is served by the same servicer, through a handler with the v1alpha message classes,
and its own descriptor (v1alpha's with the package renamed) is added to the pool, so that a client
can also ask reflection about ``grpc.reflection.v1`` itself.

Two more repairs of grpcio-reflection's servicer (:class:`ReflectionServicer`):

* ``file_containing_symbol`` of a method (``inference.GRPCInferenceService.ModelInfer``, what
  ``grpcurl describe SERVICE.METHOD`` sends) answered NOT_FOUND: protobuf's
  ``DescriptorPool.FindFileContainingSymbol`` finds services, messages, fields and enum values but
  not methods (grpc/grpc#34743, open). A method's file is its service's.
* A reflection stream lives as long as its client keeps it open (grpcurl's and grpcui's clients
  reuse one), and one still open when a draining front end stops gRPC held the stop for all of
  ``--drain-seconds``. It now ends, UNAVAILABLE with the drain's retry pushback, when the front end
  stops taking calls (:class:`camserve.front.health.StreamsEnd`), as health Watch streams do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as messages

from camserve.front.health import StreamsEnd
from camserve.front.status import abort, trailers_of
from camserve.records import ErrorKind, Failure

__all__ = ["SERVICE_NAMES", "V1_SERVICE_NAME", "ReflectionServicer", "add_reflection"]

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
#: Both reflection services, newest first.
SERVICE_NAMES = (V1_SERVICE_NAME, reflection.SERVICE_NAME)
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _register_v1(pool: descriptor_pool.DescriptorPool) -> None:
    """Add ``grpc.reflection.v1``'s file to ``pool``: v1alpha's, its package renamed (once)."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    proto = descriptor_pb2.FileDescriptorProto()
    messages.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    proto.options.Clear()  # v1alpha's java/objc options name v1alpha packages
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old):]
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old):]
            method.output_type = new + method.output_type[len(old):]
    pool.Add(proto)


class ReflectionServicer(reflection.aio.ReflectionServicer):
    """grpcio-reflection's asyncio servicer over ``pool``, which also finds a method's file and whose
    streams end when ``streams`` ends (see the module docstring)."""

    def __init__(self, service_names: Iterable[str], pool: descriptor_pool.DescriptorPool,
                 streams: StreamsEnd | None = None) -> None:
        super().__init__(service_names, pool=pool)
        self._descriptors = pool
        self.streams = streams if streams is not None else StreamsEnd()

    def _file_containing_symbol(self, request: messages.ServerReflectionRequest,
                                fully_qualified_name: str) -> messages.ServerReflectionResponse:
        answer = super()._file_containing_symbol(request, fully_qualified_name)
        if not answer.HasField("error_response"):
            return answer
        try:
            method = self._descriptors.FindMethodByName(fully_qualified_name)
        except KeyError:
            return answer
        return super()._file_containing_symbol(request, method.containing_service.full_name)

    async def ServerReflectionInfo(self, request_iterator: AsyncIterator[messages.ServerReflectionRequest],
                                   context: grpc.aio.ServicerContext
                                   ) -> AsyncIterator[messages.ServerReflectionResponse]:
        async for answer in super().ServerReflectionInfo(self.streams.until_end(request_iterator), context):
            yield answer
        if self.streams.ended:
            failure = Failure("the server is shutting down; ask another replica or the restarted server",
                              ErrorKind.DRAINING)
            await abort(context, failure, trailers_of(failure.kind))


def add_reflection(server: grpc.aio.Server, service_names: Iterable[str],
                   streams: StreamsEnd | None = None) -> None:
    """Serve reflection on ``server`` (not started) under v1 and v1alpha, listing ``service_names``
    and both reflection services; its streams end when ``streams`` ends."""
    pool = descriptor_pool.Default()
    _register_v1(pool)
    servicer = ReflectionServicer((*service_names, *SERVICE_NAMES), pool, streams)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=messages.ServerReflectionRequest.FromString,
        response_serializer=messages.ServerReflectionResponse.SerializeToString)
    for name in SERVICE_NAMES:
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}),))

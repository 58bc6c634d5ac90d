"""The one table from failure kind to gRPC status code, and how a failed RPC is ended.

Every error a caller can cause reaches the front as a :class:`~camserve.records.Failure` with an
:class:`~camserve.records.ErrorKind`; :data:`STATUS` says which gRPC code each kind gets, so the
camserve.v1 service, the metrics and every other front-end service agree. INTERNAL is reserved for
bugs. Permanent refusals carry ``grpc-retry-pushback-ms: -1``, gRPC's own signal that a client's
retry policy must not retry the call (a reply too large stays too large).
"""

from __future__ import annotations

from typing import Any

import grpc

from camserve.records import ErrorKind, Failure

__all__ = ["NO_RETRY", "STATUS", "failure_of", "refusal_handler", "status_of", "trailers_of"]

STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_INPUT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNKNOWN_LAYER: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.CLASS_INDEX: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.CAM_NOT_SUPPORTED: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.UNKNOWN_MODEL: grpc.StatusCode.NOT_FOUND,
    ErrorKind.QUEUE_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.NOT_READY: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.WORKER_LOST: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}
assert set(STATUS) == set(ErrorKind), "every ErrorKind needs a status code"

#: Kinds no retry can fix: answered with ``grpc-retry-pushback-ms: -1``.
NO_RETRY: frozenset[ErrorKind] = frozenset({ErrorKind.TOO_LARGE})


def failure_of(exc: BaseException) -> Failure:
    """``exc`` as a Failure: itself when it is one, else INTERNAL naming only the exception type."""
    if isinstance(exc, Failure):
        return exc
    return Failure(f"internal error ({type(exc).__name__}); see the server log", ErrorKind.INTERNAL)


def status_of(kind: ErrorKind) -> grpc.StatusCode:
    """The gRPC status code for ``kind``."""
    return STATUS[kind]


def trailers_of(kind: ErrorKind) -> tuple[tuple[str, str], ...]:
    """Trailing metadata to send with a failure of ``kind`` (the no-retry pushback, or nothing)."""
    return (("grpc-retry-pushback-ms", "-1"),) if kind in NO_RETRY else ()


def refusal_handler(handler: grpc.RpcMethodHandler | None, failure: Failure) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s streaming shape that ends the call with ``failure`` (its status code,
    message and trailers) without deserialising the request."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(status_of(failure.kind), failure.message,
                            trailing_metadata=trailers_of(failure.kind))

    if handler is None or (not handler.request_streaming and not handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_stream_rpc_method_handler(refuse)

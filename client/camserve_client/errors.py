"""Typed exceptions for gRPC failures, so callers can `except NotFound` instead of parsing codes."""

from __future__ import annotations

import grpc


class CamserveError(Exception):
    """A failed camserve call. `code` is the grpc.StatusCode, `details` the server's message.

    ``unreachable`` is True when the call failed because no connection to the server was made
    (UNAVAILABLE at once with ``retries=0``, or DEADLINE_EXCEEDED after waiting for it); ``details``
    then names the target, what gRPC saw (connection refused, TLS mismatch, unknown host, ...) and
    the fix.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    unreachable: bool = False

    def __init__(self, details: str, code: grpc.StatusCode | None = None) -> None:
        if code is not None:
            self.code = code
        self.details = details
        super().__init__(f"{self.code.name}: {details}")


class NotFound(CamserveError):
    """Unknown model or version (or unknown health service)."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(CamserveError, ValueError):
    """The request itself is wrong: image, tensor, class index, layer or output options.

    Also a ValueError, since the client raises it for arguments it can check before sending.
    """

    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(CamserveError):
    """The model cannot do what was asked, e.g. CAM on a model without a GAP -> dense head."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(CamserveError):
    """The server's queue or in-flight limit is full (retried within the deadline, then raised), or a
    request, its metadata or the reply is larger than the server accepts (never retried)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(CamserveError):
    """The call's deadline passed before the answer came."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(CamserveError):
    """The server is not reachable, not ready, draining, or lost the worker running the request."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(CamserveError):
    """A token is missing or wrong."""

    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[CamserveError]] = {
    cls.code: cls
    for cls in (NotFound, InvalidArgument, FailedPrecondition, ResourceExhausted, DeadlineExceeded,
                Unavailable, Unauthenticated)
}


def error_from_code(code: grpc.StatusCode, details: str) -> CamserveError:
    """The typed exception for a status code (the base class for codes without a subclass)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return CamserveError(details, code)
    return cls(details)


def error_from_rpc(exc: grpc.RpcError) -> CamserveError:
    """Convert a grpc.RpcError (sync or aio) into its typed exception."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    return error_from_code(code or grpc.StatusCode.UNKNOWN, details or "")

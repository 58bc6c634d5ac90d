"""The one table from failure kind to gRPC status code, and how a failed RPC is ended.

Every error a caller can cause reaches the front as a :class:`~camserve.records.Failure` with an
:class:`~camserve.records.ErrorKind`; :data:`STATUS` says which gRPC code each kind gets, so the
camserve.v1 service, the metrics and every other front-end service agree. INTERNAL is reserved for
bugs.

A failure also tells a client's gRPC retry policy (service config ``retryPolicy``) when to retry,
through gRPC's ``grpc-retry-pushback-ms`` trailer:

* ``-1`` on refusals no retry can fix (:data:`NO_RETRY`: a request or reply too large stays too large,
  a method the server does not serve stays unserved);
* on DRAINING (this server is shutting down), :data:`DRAINING_PUSHBACK_S`: a front end refuses new
  calls for at most that long before it stops gRPC, so the retry finds another replica, or (a
  restart) nothing listening, where the client's ``waitForReady`` waits without spending attempts;
* on NOT_READY (loading, no live worker), a delay that spreads (with doubling gaps) the attempts
  the client has left over the time its deadline leaves (:func:`retry_pushback_ms`). gRPC makes at most
  :data:`MAX_ATTEMPTS` attempts of a call, so fixed short back-offs give up within a second while a
  server restarts; spread this way, the last attempt comes shortly before the deadline, and a restart
  shorter than the caller's deadline is ridden out. (While nothing listens at all, the client's
  ``waitForReady`` waits without spending attempts.)
* nothing otherwise: the client's own exponential back-off applies (a lost worker, a full queue).

A status message travels in the ``grpc-message`` trailer, percent-encoded, and clients refuse trailers
over 8 KiB (Java, C++'s soft limit) or 16 KiB (every client's hard limit): a message that echoed a
caller's 100 KB model name would end the call on the client's side as RESOURCE_EXHAUSTED "Stream
removed", not with its own status. So every message is cut to :data:`MAX_MESSAGE_BYTES` on the wire
(:func:`message_of`, used by :func:`abort`), and messages quote a caller's values with :func:`shown`.
"""

from __future__ import annotations

from typing import Any

import grpc

from camserve.records import ErrorKind, Failure

__all__ = ["DRAINING_PUSHBACK_S", "MAX_ATTEMPTS", "MAX_MESSAGE_BYTES", "NO_RETRY", "STATUS", "abort",
           "failure_of", "message_of", "refusal_handler", "retry_pushback_ms", "shown", "status_of",
           "trailers_of"]

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
    ErrorKind.DRAINING: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.WORKER_LOST: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}
assert set(STATUS) == set(ErrorKind), "every ErrorKind needs a status code"

#: Kinds no retry can fix: answered with ``grpc-retry-pushback-ms: -1``.
NO_RETRY: frozenset[ErrorKind] = frozenset({ErrorKind.TOO_LARGE, ErrorKind.UNIMPLEMENTED})


def failure_of(exc: BaseException) -> Failure:
    """``exc`` as a Failure: itself when it is one, else INTERNAL naming only the exception type."""
    if isinstance(exc, Failure):
        return exc
    return Failure(f"internal error ({type(exc).__name__}); see the server log", ErrorKind.INTERNAL)


def status_of(kind: ErrorKind) -> grpc.StatusCode:
    """The gRPC status code for ``kind``."""
    return STATUS[kind]


#: The most bytes a status message takes in its ``grpc-message`` trailer (percent-encoded: a byte
#: outside printable ASCII, or ``%``, takes 3), far under every client's 8 KiB trailer limit.
MAX_MESSAGE_BYTES = 2048
#: The most characters of a caller's value :func:`shown` quotes.
SHOWN_CHARS = 64


def _wire_bytes(text: str) -> int:
    return sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in text.encode("utf-8", "replace"))


def message_of(failure: Failure) -> str:
    """``failure.message`` as sent: whole when it fits :data:`MAX_MESSAGE_BYTES` on the wire, else cut
    and saying so."""
    text = failure.message
    if _wire_bytes(text) <= MAX_MESSAGE_BYTES:
        return text
    suffix = f" ... (message cut: {len(text)} characters in all)"
    budget = MAX_MESSAGE_BYTES - len(suffix)
    end = 0
    for end, ch in enumerate(text):  # noqa: B007  (end is used after the loop)
        budget -= _wire_bytes(ch)
        if budget < 0:
            break
    return text[:end] + suffix


#: The most items of a caller's list (a shape, names) :func:`shown` lists.
SHOWN_ITEMS = 8


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A caller's value quoted in a message (``repr``): of a string, its first ``limit`` characters
    when longer; of a list or tuple (a shape, names), its first :data:`SHOWN_ITEMS` items; each
    saying how long it is. An echoed name or parameter never crowds out what the message says is valid."""
    if isinstance(value, str | bytes) and len(value) > limit:
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{value[:limit]!r}... ({len(value)} {unit})"
    if isinstance(value, list | tuple):
        items = [shown(v, limit // 4) for v in value[:SHOWN_ITEMS]]
        more = f", ... ({len(value)} items)" if len(value) > SHOWN_ITEMS else ""
        return f"[{', '.join(items)}{more}]"
    return repr(value)


async def abort(context: Any, failure: Failure, trailing_metadata: tuple[tuple[str, str], ...] = ()) -> None:
    """End the call with ``failure``: its status code and its message (cut by :func:`message_of`)."""
    await context.abort(status_of(failure.kind), message_of(failure), trailing_metadata=trailing_metadata)


#: gRPC clients make at most this many attempts of one call (gRPC caps ``retryPolicy.maxAttempts`` at 5).
MAX_ATTEMPTS = 5
#: The last attempt is placed at least this long (or a tenth of what is left) before the deadline.
PUSHBACK_RESERVE_S = 0.25
#: A draining front end refuses new calls for at most this long (then stops gRPC), and a DRAINING
#: refusal asks for its retry no sooner (seconds).
DRAINING_PUSHBACK_S = 1.0
#: Without a deadline, NOT_READY retries wait 0.5, 1, 2, 4 s.
PUSHBACK_NO_DEADLINE_S = 0.5
PUSHBACK_MIN_S = 0.05
PREVIOUS_ATTEMPTS = "grpc-previous-rpc-attempts"  # metadata gRPC adds to every retried attempt


def retry_pushback_ms(kind: ErrorKind, time_remaining: float | None,
                      previous_attempts: int = 0) -> int | None:
    """The ``grpc-retry-pushback-ms`` value for a failure of ``kind``; None sends none.

    ``time_remaining``: seconds left before the caller's deadline (None: no deadline);
    ``previous_attempts``: attempts of this call before this one. For DRAINING it is
    :data:`DRAINING_PUSHBACK_S`. For NOT_READY the delay is
    ``(time_remaining - reserve) / (2 ** attempts_left - 1)``, at least 50 ms: the attempts left are
    spread over the time left with doubling gaps (a short outage is ridden out soon, a long one still
    reaches the deadline: with 4 left, retries come at 1/15, 3/15, 7/15 and all of it), and the last one
    keeps ``reserve`` = max(0.25 s, a tenth of the time left) to be served.
    """
    if kind in NO_RETRY:
        return -1
    if kind is ErrorKind.DRAINING:
        return int(DRAINING_PUSHBACK_S * 1000)
    if kind is not ErrorKind.NOT_READY:
        return None
    left = MAX_ATTEMPTS - 1 - max(0, previous_attempts)
    if left <= 0:
        return None
    if time_remaining is None:
        return int(PUSHBACK_NO_DEADLINE_S * 2 ** max(0, previous_attempts) * 1000)
    reserve = max(PUSHBACK_RESERVE_S, 0.1 * time_remaining)
    if time_remaining <= reserve:
        return None
    return int(max(PUSHBACK_MIN_S, (time_remaining - reserve) / (2 ** left - 1)) * 1000)


def _previous_attempts(context: Any) -> int:
    for key, value in context.invocation_metadata() or ():
        if key == PREVIOUS_ATTEMPTS:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def trailers_of(kind: ErrorKind, context: Any = None) -> tuple[tuple[str, str], ...]:
    """Trailing metadata to send with a failure of ``kind``: the retry pushback, or nothing.

    ``context`` (the call's ServicerContext) gives the caller's deadline and attempt number; without
    it only the fixed pushbacks (no retry; draining) are sent.
    """
    if kind in NO_RETRY:
        return (("grpc-retry-pushback-ms", "-1"),)
    if kind is ErrorKind.DRAINING:
        return (("grpc-retry-pushback-ms", str(retry_pushback_ms(kind, None))),)
    if context is None or kind is not ErrorKind.NOT_READY:
        return ()
    ms = retry_pushback_ms(kind, context.time_remaining(), _previous_attempts(context))
    return () if ms is None else (("grpc-retry-pushback-ms", str(ms)),)


def refusal_handler(handler: grpc.RpcMethodHandler | None, failure: Failure) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s streaming shape that ends the call with ``failure`` (its status code,
    message and trailers) without deserialising the request."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await abort(context, failure, trailers_of(failure.kind))

    if handler is None or (not handler.request_streaming and not handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_stream_rpc_method_handler(refuse)

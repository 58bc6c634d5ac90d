"""The limits a call must fit before any handler reads it, and the count of calls refused below camserve.

gRPC's own limits end a call before a handler runs, so a servicer never learns of it: left to gRPC,
such refusals reach neither the request counter nor the log, and carry nothing that tells a client's
retry policy not to repeat them. camserve therefore enforces the limits a caller can trip itself,
here, and keeps gRPC's copies only as backstops far above them (``front.server.grpc_options``):

* request metadata over ``max_header_bytes``, counted as HTTP/2 counts a header list (every key and
  value plus 32 bytes per entry, RFC 7541 4.1; pseudo-headers aside): TOO_LARGE;
* a request message over ``max_message_bytes``: TOO_LARGE;
* more than ``max_concurrent_rpcs`` calls in progress (health and reflection included): BUSY.

TOO_LARGE is RESOURCE_EXHAUSTED with ``grpc-retry-pushback-ms: -1``, so no retry policy repeats it;
BUSY is RESOURCE_EXHAUSTED to retry later. A call that gRPC ends before its request reaches camserve
is seen here only as a call whose handler never ran, and counted with reason ``not_received``: gRPC
refused metadata or a message beyond its backstops, or the caller left first (its deadline passed or
it cancelled while the request still waited to be read, e.g. on an overloaded server).

Each refusal is reported through ``on_refuse(method, reason, code)`` (the metrics count it by reason,
and as an answered RPC when ``code`` is known) and logged at WARNING at most once per
:data:`LOG_INTERVAL_S` per reason, with how many more there were since the previous line.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from camserve.front.status import abort, refusal_handler, shown, status_of, trailers_of
from camserve.records import ErrorKind, Failure

__all__ = ["LOG_INTERVAL_S", "REASONS", "LimitsInterceptor", "metadata_bytes"]

log = logging.getLogger(__name__)

#: Why a call was refused before a handler read it (the ``reason`` label of the metric).
REASONS = ("header_too_large", "message_too_large", "concurrency_limit", "not_received")
LOG_INTERVAL_S = 10.0
HEADER_ENTRY_OVERHEAD = 32  # bytes HTTP/2 adds per header entry (RFC 7541 section 4.1)

RefuseHook = Callable[[str, str, "str | None"], None]  # (full method, reason, status code name or None)
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def metadata_bytes(metadata: Sequence[tuple[str, str | bytes]] | None) -> tuple[int, str, int]:
    """(size of the header list as HTTP/2 counts it, its largest entry's key, that entry's size)."""
    total = largest = 0
    key_of_largest = ""
    for key, value in metadata or ():
        size = len(key) + len(value) + HEADER_ENTRY_OVERHEAD  # str values are ASCII (bytes for -bin keys)
        total += size
        if size > largest:
            largest, key_of_largest = size, key
    return total, key_of_largest, largest


class _Call:
    """Per call: did a handler (or a refusal of ours) get to it; is it counted as in progress?"""

    __slots__ = ("admitted", "reached")

    def __init__(self) -> None:
        self.reached = False
        self.admitted = False


_CALL: contextvars.ContextVar[_Call] = contextvars.ContextVar("camserve_call")


class _Every:
    """``logger.warning`` at most once per ``interval_s`` per key, telling how many were held back."""

    def __init__(self, logger: logging.Logger, interval_s: float, clock: Callable[[], float]) -> None:
        self.logger, self.interval_s, self.clock = logger, interval_s, clock
        self.last: dict[str, float] = {}
        self.held: Counter[str] = Counter()

    def warning(self, key: str, message: str) -> None:
        now = self.clock()
        last = self.last.get(key)
        if last is not None and now - last < self.interval_s:
            self.held[key] += 1
            return
        self.last[key] = now
        more = self.held.pop(key, 0)
        suffix = f" ({more} more since the previous such line)" if more else ""
        self.logger.warning("%s%s", message, suffix)


class LimitsInterceptor(grpc.aio.ServerInterceptor):
    """Refuse calls over the header, message and concurrency limits; count what gRPC refused itself.

    Place it first: it sees every call before the token check and the body parsing. Unary-request
    coroutine handlers are wrapped to check the message size; this expects the raw body, which
    ``MalformedRequestInterceptor`` (after it in the chain) hands to handlers. The interceptor runs
    inside the call's own task, whose end tells whether a handler ever ran.
    """

    def __init__(self, *, max_header_bytes: int, max_message_bytes: int, max_concurrent_rpcs: int = 0,
                 on_refuse: RefuseHook | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_header_bytes = int(max_header_bytes)
        self.max_message_bytes = int(max_message_bytes)
        self.max_concurrent_rpcs = max(0, int(max_concurrent_rpcs))
        self.active = 0  # admitted calls not ended yet (refused ones never count, as in gRPC's limiter)
        self._on_refuse = on_refuse
        self._log = _Every(log, LOG_INTERVAL_S, clock)
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        """Admit the call (or return a handler that refuses it), and watch whether a handler gets to it."""
        method = handler_call_details.method or ""
        call = _Call()
        task = asyncio.current_task()
        if task is not None:
            _CALL.set(call)
            task.add_done_callback(functools.partial(self._ended, method, call))
        else:  # not inside a call's task (never the case in grpc.aio): nothing to watch
            call.reached = True
        size, key, key_size = metadata_bytes(handler_call_details.invocation_metadata)
        if size > self.max_header_bytes:
            return self._refuse(method, call, "header_too_large", Failure(
                f"the request metadata is {size / 1024:.1f} KiB, more than this server accepts "
                f"({self.max_header_bytes / 1024:g} KiB, --max-header-kb; keys, values and 32 bytes per "
                f"entry); its largest entry is {shown(key)} ({key_size / 1024:.1f} KiB)",
                ErrorKind.TOO_LARGE))
        if self.max_concurrent_rpcs and self.active >= self.max_concurrent_rpcs:
            return self._refuse(method, call, "concurrency_limit", Failure(
                f"the server is handling its limit of {self.max_concurrent_rpcs} calls at once "
                "(--max-concurrent-rpcs); retry later with back-off", ErrorKind.BUSY))
        if task is not None:
            call.admitted = True
            self.active += 1
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or not inspect.iscoroutinefunction(
                handler.unary_unary):
            call.reached = True  # not a unary-unary coroutine: its handler is not watched
            return handler
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = self._guard(handler, method)
        self._cache[method] = (handler, guarded)
        return guarded

    def _guard(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` marking its call as reached and refusing a request body over the message limit."""
        inner = handler.unary_unary
        limit = self.max_message_bytes

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _CALL.get(None)
            if call is not None:
                call.reached = True
            if isinstance(request, bytes | bytearray | memoryview) and len(request) > limit:
                failure = Failure(f"the request message is {len(request) / 2**20:.2f} MiB, more than this "
                                  f"server accepts ({limit / 2**20:g} MiB, --max-message-mb)",
                                  ErrorKind.TOO_LARGE)
                self._report(method, "message_too_large", failure, context.peer())
                await abort(context, failure, trailers_of(failure.kind))
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    def _refuse(self, method: str, call: _Call, reason: str, failure: Failure) -> grpc.RpcMethodHandler:
        """A unary handler that ends the call with ``failure``; the inner interceptors (token check,
        parsing) never see it. Streaming clients get the same status after their first message."""
        call.reached = True
        self._report(method, reason, failure, None)
        return refusal_handler(None, failure)

    def _report(self, method: str, reason: str, failure: Failure, peer: str | None) -> None:
        if self._on_refuse is not None:
            self._on_refuse(method, reason, status_of(failure.kind).name)
        where = f" from {peer}" if peer else ""
        self._log.warning(reason, f"refused a call to {method}{where}: {failure.message}")

    def _ended(self, method: str, call: _Call, _task: asyncio.Task[Any]) -> None:
        if call.admitted:
            self.active -= 1
        if call.reached:
            return
        if self._on_refuse is not None:
            self._on_refuse(method, "not_received", None)
        self._log.warning("not_received", f"a call to {method} ended before its request reached camserve: "
                          "gRPC refused metadata or a message over twice --max-header-kb or "
                          "--max-message-mb, or the caller's deadline or cancellation came first")

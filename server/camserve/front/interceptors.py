"""What every call passes before its handler: the bearer-token check and the malformed-body mapping.

* :class:`TokenAuthInterceptor` (with ``--auth-token-file``): every RPC except ``grpc.health.v1`` and
  server reflection must carry ``authorization: Bearer <token>``, else it ends UNAUTHENTICATED with
  a message saying what to send, without its body ever being parsed. Kubernetes probes and grpcurl
  keep working without the secret. Tokens are compared in constant time over SHA-256 digests (equal
  length whatever was sent), against every configured token, so timing reveals neither a prefix nor
  which token matched; a presented token is never logged.
* :class:`MalformedRequestInterceptor` (always on): a body that is not a valid protobuf message is
  answered INVALID_ARGUMENT with a message (grpc's aio server would answer UNKNOWN).

Both report each refusal through ``on_reject(method, code)`` so the request counter sees calls that
never reach a servicer. Codes come from ``camserve.front.status``'s table.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc

from camserve.front.security import SecurityConfig, SecurityConfigError
from camserve.front.status import abort, refusal_handler, status_of
from camserve.records import ErrorKind, Failure

__all__ = [
    "AUTH_EXEMPT_PREFIXES",
    "MalformedRequestInterceptor",
    "TokenAuthInterceptor",
    "server_interceptors",
]

log = logging.getLogger(__name__)
RejectHook = Callable[[str, str], None]  # (full method name, status code name)

#: RPC method prefixes that never need a token: probes and tooling must work without secrets.
AUTH_EXEMPT_PREFIXES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]

#: Parses one raw request message of a call, ending the call INVALID_ARGUMENT when it is malformed.
Parse = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Require ``authorization: Bearer <token>`` on every RPC except the exempt prefixes.

    A denied call is answered by a handler of the same streaming kind that aborts UNAUTHENTICATED
    without deserialising the request, so unauthenticated bytes never reach a parser or the service.
    """

    def __init__(self, tokens: Iterable[str], exempt_prefixes: Sequence[str] = AUTH_EXEMPT_PREFIXES,
                 on_reject: RejectHook | None = None) -> None:
        self._digests = tuple(_digest(t.encode("utf-8")) for t in tokens)
        if not self._digests:
            raise SecurityConfigError("TokenAuthInterceptor needs at least one token")
        self._exempt = tuple(exempt_prefixes)
        self._on_reject = on_reject

    def check(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
        """Return None when the metadata carries an accepted token, else the reason (safe to send and log)."""
        values = [v for k, v in (metadata or ()) if k.lower() == "authorization"]
        if not values:
            return "missing credentials: send metadata 'authorization: Bearer <token>'"
        if len(values) > 1:
            return "more than one 'authorization' metadata entry: send exactly one 'Bearer <token>'"
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        scheme, _, presented = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return "malformed 'authorization' metadata: expected 'Bearer <token>'"
        got = _digest(presented.strip().encode("utf-8"))
        ok = 0
        for d in self._digests:  # no early exit: time does not depend on which token matched
            ok |= hmac.compare_digest(got, d)
        return None if ok else "invalid bearer token"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Pass authorised and exempt calls through; replace the handler of everything else."""
        method = handler_call_details.method or ""
        if method.startswith(self._exempt):
            return await continuation(handler_call_details)
        reason = self.check(handler_call_details.invocation_metadata)
        if reason is None:
            return await continuation(handler_call_details)
        log.debug("unauthenticated call to %s: %s", method, reason)
        if self._on_reject is not None:
            self._on_reject(method, status_of(ErrorKind.UNAUTHENTICATED).name)
        handler = await continuation(handler_call_details)
        return refusal_handler(handler, Failure(reason, ErrorKind.UNAUTHENTICATED))


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Answer INVALID_ARGUMENT, with a message, to a request body that is not a valid protobuf message.

    Left alone, grpc's aio server answers UNKNOWN ("Unexpected DecodeError") to undecodable bytes, a
    code that tells a caller nothing and that DESIGN.md reserves for nobody. This interceptor swaps the
    handler's deserialiser for the identity and parses inside the handler, where the failure can be
    mapped: every unary-request method, and streaming ones whose handler is an async generator
    (reflection's ServerReflectionInfo, where grpc answered UNKNOWN "Unexpected DecodeError" to a
    malformed message). Wrapped handlers are cached per method.
    """

    def __init__(self, on_reject: RejectHook | None = None) -> None:
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._on_reject = on_reject

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Return the method's handler with parsing moved inside it."""
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method or ""
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _parse_inside(handler, method, self._on_reject)
        self._cache[method] = (handler, wrapped)
        return wrapped


def _parse_inside(handler: grpc.RpcMethodHandler, method: str,
                  on_reject: RejectHook | None = None) -> grpc.RpcMethodHandler:
    """``handler`` with an identity deserialiser and a behaviour that parses first, mapping failures."""
    parse = handler.request_deserializer
    what = method.lstrip("/") or "this method"

    async def parsed(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return parse(raw)
        except Exception as e:  # DecodeError, or whatever a custom deserialiser raises
            if on_reject is not None:
                on_reject(method, status_of(ErrorKind.INVALID_INPUT).name)
            await abort(context, Failure(
                f"the request body is not a valid protobuf message for {what} ({type(e).__name__}: {e}); "
                "send a message serialised from the service's .proto", ErrorKind.INVALID_INPUT))

    if handler.request_streaming:
        return _parse_stream_inside(handler, parsed)
    if not handler.response_streaming:
        inner = handler.unary_unary
        if not inspect.iscoroutinefunction(inner):  # sync handlers run in grpc's pool: leave them be
            return handler

        async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            result = inner(await parsed(raw, context), context)
            return await result if inspect.isawaitable(result) else result

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=None, response_serializer=handler.response_serializer)

    stream_inner = handler.unary_stream
    if inspect.isasyncgenfunction(stream_inner):

        async def stream_gen(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            async for item in stream_inner(await parsed(raw, context), context):
                yield item

        behavior: Any = stream_gen
    elif inspect.iscoroutinefunction(stream_inner):

        async def stream_coro(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            return await stream_inner(await parsed(raw, context), context)

        behavior = stream_coro
    else:  # a sync generator run by grpc's thread pool: leave it exactly as registered
        return handler
    return grpc.unary_stream_rpc_method_handler(
        behavior, request_deserializer=None, response_serializer=handler.response_serializer)


def _parse_stream_inside(handler: grpc.RpcMethodHandler, parsed: Parse) -> grpc.RpcMethodHandler:
    """A bidirectional-streaming ``handler`` whose requests are parsed one by one as it reads them
    (async generator handlers only; others are left exactly as registered)."""
    inner = handler.stream_stream
    if not handler.response_streaming or not inspect.isasyncgenfunction(inner):
        return handler

    async def requests(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for message in raw:
            yield await parsed(message, context)

    async def stream(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for item in inner(requests(raw, context), context):
            yield item

    return grpc.stream_stream_rpc_method_handler(
        stream, request_deserializer=None, response_serializer=handler.response_serializer)


def server_interceptors(cfg: SecurityConfig,
                        on_reject: RejectHook | None = None) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors the aio server needs, in order: bearer-token check (when tokens are set), then
    the malformed-request mapping (always), so an unauthenticated body is never even parsed.

    ``on_reject(method, code)`` is told of every call these refuse, so the request counter sees calls
    that never reach the servicer."""
    auth: list[grpc.aio.ServerInterceptor] = (
        [TokenAuthInterceptor(cfg.auth_tokens, on_reject=on_reject)] if cfg.auth else [])
    return [*auth, MalformedRequestInterceptor(on_reject)]

"""Transport security and caller authentication for the gRPC port.

Three independent switches, all off by default (plaintext, no auth), as the CLI flags set them:

* TLS: ``--tls-cert`` + ``--tls-key`` (PEM) serve the port over TLS.
* mTLS: ``--tls-client-ca`` additionally *requires* a client certificate signed by that CA; the TLS
  handshake refuses anything else, so no RPC handler ever sees an unverified peer.
* Bearer tokens: ``--auth-token-file`` (one token per line, ``#`` comments and blank lines ignored).
  Every RPC except ``grpc.health.v1`` and server reflection must carry metadata
  ``authorization: Bearer <token>``; otherwise it ends UNAUTHENTICATED with a message saying what to send.
  Kubernetes probes and grpcurl therefore keep working without the secret.

Always on: a request body that is not a valid protobuf message is answered INVALID_ARGUMENT with a
message (grpc's aio server would answer UNKNOWN), see ``MalformedRequestInterceptor``.

Secrets never reach logs: ``SecurityConfig``'s repr and ``describe()`` show only counts and paths, and
the interceptor never logs a presented token. Tokens are compared in constant time over SHA-256 digests
(equal length whatever was sent), against every configured token, so timing reveals neither a prefix nor
which token matched.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

__all__ = [
    "AUTH_EXEMPT_PREFIXES",
    "MalformedRequestInterceptor",
    "SecurityConfig",
    "SecurityConfigError",
    "TokenAuthInterceptor",
    "add_listening_port",
    "add_security_arguments",
    "load_tokens",
    "security_config_from_args",
    "server_credentials",
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

_ENV = {
    "tls_cert": "CAMSERVE_TLS_CERT",
    "tls_key": "CAMSERVE_TLS_KEY",
    "tls_client_ca": "CAMSERVE_TLS_CLIENT_CA",
    "auth_token_file": "CAMSERVE_AUTH_TOKEN_FILE",
}


class SecurityConfigError(ValueError):
    """A security flag is inconsistent or names a file that cannot be used (a caller/operator error)."""


@dataclass(frozen=True)
class SecurityConfig:
    """What the gRPC port needs: TLS material (paths) and the accepted bearer tokens.

    ``auth_tokens`` is hidden from ``repr`` so that logging the config (Triton-style start-up line)
    cannot leak a secret.
    """

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        """Reject combinations that would silently serve less securely than asked."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SecurityConfigError(
                "TLS needs both --tls-cert and --tls-key (PEM files); only one of them was given"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise SecurityConfigError(
                "--tls-client-ca (mutual TLS) needs the server's own --tls-cert and --tls-key too"
            )
        if any((not t) or t != t.strip() or any(c.isspace() for c in t) for t in self.auth_tokens):
            raise SecurityConfigError("auth tokens must be non-empty and contain no whitespace")

    @property
    def tls(self) -> bool:
        """True when the port serves TLS."""
        return self.tls_cert is not None

    @property
    def mtls(self) -> bool:
        """True when clients must present a certificate signed by ``tls_client_ca``."""
        return self.tls_client_ca is not None

    @property
    def auth(self) -> bool:
        """True when RPCs (other than health/reflection) need a bearer token."""
        return bool(self.auth_tokens)

    def describe(self) -> str:
        """One log-safe line for the start-up configuration: modes and counts, never a secret."""
        transport = "mtls" if self.mtls else ("tls" if self.tls else "plaintext")
        parts = [f"transport={transport}"]
        if self.tls:
            parts.append(f"cert={self.tls_cert}")
        if self.mtls:
            parts.append(f"client_ca={self.tls_client_ca}")
        parts.append(f"auth={'bearer(' + str(len(self.auth_tokens)) + ' tokens)' if self.auth else 'off'}")
        return " ".join(parts)


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --tls-cert, --tls-key, --tls-client-ca, --auth-token-file (defaults from CAMSERVE_* env vars)."""
    group = parser.add_argument_group(
        "security", "TLS, mutual TLS and bearer-token auth for the gRPC port (all off by default)"
    )
    group.add_argument(
        "--tls-cert",
        default=os.environ.get(_ENV["tls_cert"]) or None,
        metavar="PEM",
        help="server certificate chain (PEM); with --tls-key serves the gRPC port over TLS "
        f"[env {_ENV['tls_cert']}]",
    )
    group.add_argument(
        "--tls-key",
        default=os.environ.get(_ENV["tls_key"]) or None,
        metavar="PEM",
        help=f"server private key (PEM) for --tls-cert [env {_ENV['tls_key']}]",
    )
    group.add_argument(
        "--tls-client-ca",
        default=os.environ.get(_ENV["tls_client_ca"]) or None,
        metavar="PEM",
        help="mutual TLS: require every client to present a certificate signed by this CA bundle (PEM); "
        f"needs --tls-cert/--tls-key [env {_ENV['tls_client_ca']}]",
    )
    group.add_argument(
        "--auth-token-file",
        default=os.environ.get(_ENV["auth_token_file"]) or None,
        metavar="FILE",
        help="require 'authorization: Bearer <token>' metadata on every RPC except health and reflection; "
        "FILE holds the accepted tokens, one per line ('#' comments and blank lines ignored) "
        f"[env {_ENV['auth_token_file']}]",
    )


def _readable_file(path: str | os.PathLike[str] | None, flag: str) -> Path | None:
    """Resolve a flag's path and fail early, naming the flag, if the file is missing or unreadable."""
    if path is None or str(path) == "":
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise SecurityConfigError(f"{flag}: no such file: {p}")
    try:
        with p.open("rb") as f:
            head = f.read(1)
    except OSError as e:
        raise SecurityConfigError(f"{flag}: cannot read {p}: {e.strerror or e}") from None
    if not head:
        raise SecurityConfigError(f"{flag}: file is empty: {p}")
    return p


def load_tokens(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Read accepted tokens: one per line, whitespace stripped, blank lines and '#' comments skipped."""
    p = _readable_file(path, "--auth-token-file")
    assert p is not None
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SecurityConfigError(f"--auth-token-file: {p} is not UTF-8 text") from None
    tokens: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if any(c.isspace() for c in line):
            # Never echo the line: it may be a secret with a stray space.
            raise SecurityConfigError(
                f"--auth-token-file: line {lineno} of {p} contains whitespace inside the token"
            )
        tokens.append(line)
    if not tokens:
        raise SecurityConfigError(f"--auth-token-file: {p} holds no token (one per line expected)")
    return tuple(dict.fromkeys(tokens))


def security_config_from_args(args: argparse.Namespace) -> SecurityConfig:
    """Build and validate the config from parsed flags; raises SecurityConfigError with a clear message.

    The CLI should turn the error into ``parser.error(str(e))`` (exit 2, no traceback).
    """
    cert = _readable_file(getattr(args, "tls_cert", None), "--tls-cert")
    key = _readable_file(getattr(args, "tls_key", None), "--tls-key")
    client_ca = _readable_file(getattr(args, "tls_client_ca", None), "--tls-client-ca")
    token_file = getattr(args, "auth_token_file", None)
    tokens = load_tokens(token_file) if token_file else ()
    return SecurityConfig(tls_cert=cert, tls_key=key, tls_client_ca=client_ca, auth_tokens=tokens)


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


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
            self._on_reject(method, "UNAUTHENTICATED")
        handler = await continuation(handler_call_details)
        return _deny_handler(handler, reason)


def _deny_handler(handler: grpc.RpcMethodHandler | None, reason: str) -> grpc.RpcMethodHandler:
    """A handler with the same request/response streaming shape that aborts UNAUTHENTICATED."""

    async def deny(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    if handler is None or (not handler.request_streaming and not handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(deny)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    return grpc.unary_stream_rpc_method_handler(deny)


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Answer INVALID_ARGUMENT, with a message, to a request body that is not a valid protobuf message.

    Left alone, grpc's aio server answers UNKNOWN ("Unexpected DecodeError") to undecodable bytes, a
    code that tells a caller nothing and that DESIGN.md reserves for nobody. This interceptor swaps the
    handler's deserialiser for the identity and parses inside the handler, where the failure can be
    mapped. Unary-request handlers only: every camserve RPC is unary, and streaming-request services
    (reflection) keep grpc's own handling. Wrapped handlers are cached per method.
    """

    def __init__(self, on_reject: RejectHook | None = None) -> None:
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._on_reject = on_reject

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Return the method's handler with parsing moved inside it (unary-request methods only)."""
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
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
                on_reject(method, "INVALID_ARGUMENT")
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request body is not a valid protobuf message for {what} ({type(e).__name__}: {e}); "
                "send a message serialised from the camserve.v1 .proto",
            )

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


def server_interceptors(cfg: SecurityConfig,
                        on_reject: RejectHook | None = None) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors the aio server needs, in order: bearer-token check (when tokens are set), then
    the malformed-request mapping (always), so an unauthenticated body is never even parsed.

    ``on_reject(method, code)`` is told of every call these refuse, so the request counter sees calls
    that never reach the servicer."""
    auth: list[grpc.aio.ServerInterceptor] = (
        [TokenAuthInterceptor(cfg.auth_tokens, on_reject=on_reject)] if cfg.auth else [])
    return [*auth, MalformedRequestInterceptor(on_reject)]


def server_credentials(cfg: SecurityConfig) -> grpc.ServerCredentials | None:
    """TLS (or mTLS when a client CA is set) credentials for ``cfg``; None for plaintext."""
    if not cfg.tls:
        return None
    assert cfg.tls_cert is not None and cfg.tls_key is not None
    try:
        cert = cfg.tls_cert.read_bytes()
        key = cfg.tls_key.read_bytes()
        client_ca = cfg.tls_client_ca.read_bytes() if cfg.tls_client_ca is not None else None
    except OSError as e:
        raise SecurityConfigError(f"cannot read TLS material: {e}") from None
    for name, blob in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if blob is not None and b"-----BEGIN" not in blob:
            raise SecurityConfigError(f"{name}: not a PEM file (no '-----BEGIN' line)")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def add_listening_port(server: grpc.aio.Server, address: str, cfg: SecurityConfig) -> int:
    """Bind ``address`` (e.g. ``[::]:50051``; port 0 picks a free one) securely per ``cfg``; return the port.

    Raises OSError naming the address when it cannot be bound, instead of grpc's bare RuntimeError/0.
    """
    creds = server_credentials(cfg)
    try:
        if creds is not None:
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise OSError(f"cannot listen on {address}: {e}") from None
    if not port:
        raise OSError(f"cannot listen on {address} (address in use or invalid?)")
    log.info("gRPC listening on %s (%s)", address.rsplit(":", 1)[0] + f":{port}", cfg.describe())
    return port

"""camserve.front.security and .interceptors against a tiny real grpc.aio server (health + two echo
methods), real TLS handshakes.

No part under test is mocked: the server, the interceptor, the TLS stack and the client are grpc's own;
certificates come from ``openssl`` (see pki.py). The references are independent: grpc status codes seen
by a stock client, and the bytes echoed back.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from camserve.front.cli import add_security_arguments
from camserve.front.interceptors import MalformedRequestInterceptor, TokenAuthInterceptor, server_interceptors
from camserve.front.security import (
    SecurityConfig,
    SecurityConfigError,
    add_listening_port,
    load_tokens,
    security_config_from_args,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pki import Pki, make_pki

pytestmark = pytest.mark.timeout(120)

TOKENS = ("s3cret-token-A", "tok_B.2")
ECHO = "/camserve.test.Echo/Unary"
ECHO_STREAM = "/camserve.test.Echo/ServerStream"


def _identity(b: bytes) -> bytes:
    return b


class TinyServer:
    """A grpc.aio server on its own event-loop thread: health (SERVING) and an echo service."""

    def __init__(self, cfg: SecurityConfig) -> None:
        self.cfg = cfg
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("tiny server did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            server = grpc.aio.server(interceptors=server_interceptors(self.cfg))

            async def unary(req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
                return b"echo:" + req

            async def stream(req: bytes, ctx: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
                for i in range(3):
                    yield req + bytes([i])

            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("camserve.test.Echo", {
                "Unary": grpc.unary_unary_rpc_method_handler(unary, _identity, _identity),
                "ServerStream": grpc.unary_stream_rpc_method_handler(stream, _identity, _identity),
            }),))
            hs = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(hs, server)
            res = hs.set("", health_pb2.HealthCheckResponse.SERVING)
            if asyncio.iscoroutine(res):
                await res
            self.port = add_listening_port(server, "127.0.0.1:0", self.cfg)
            await server.start()
        except BaseException as e:  # surfaced in the constructor
            self._error = e
            self._started.set()
            return
        self._started.set()
        await self._stop.wait()
        await server.stop(0)

    def close(self) -> None:
        """Stop the server and join its thread."""
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def _call(channel: grpc.Channel, token: str | None = None, payload: bytes = b"hi",
          metadata: list[tuple[str, str]] | None = None) -> bytes:
    md = list(metadata or [])
    if token is not None:
        md.append(("authorization", f"Bearer {token}"))
    fn = channel.unary_unary(ECHO, request_serializer=_identity, response_deserializer=_identity)
    return fn(payload, metadata=md, timeout=10)


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def token_server() -> Iterator[TinyServer]:
    s = TinyServer(SecurityConfig(auth_tokens=TOKENS))
    yield s
    s.close()


# ---------------------------------------------------------------- bearer tokens (plaintext port)

def test_token_required_and_accepted(token_server: TinyServer) -> None:
    with grpc.insecure_channel(token_server.target) as ch:
        assert _call(ch, TOKENS[0]) == b"echo:hi"
        assert _call(ch, TOKENS[1], payload=b"x") == b"echo:x"
        # scheme is case-insensitive, as in RFC 6750
        assert _call(ch, metadata=[("authorization", f"bearer {TOKENS[0]}")]) == b"echo:hi"


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        ([], "missing credentials"),
        ([("authorization", "Bearer wrong")], "invalid bearer token"),
        ([("authorization", f"Bearer {TOKENS[0]}x")], "invalid bearer token"),
        ([("authorization", f"Bearer {TOKENS[0][:-1]}")], "invalid bearer token"),
        ([("authorization", f"Basic {TOKENS[0]}")], "expected 'Bearer <token>'"),
        ([("authorization", "Bearer ")], "expected 'Bearer <token>'"),
        ([("authorization", TOKENS[0])], "expected 'Bearer <token>'"),
        ([("authorization", "Bearer wrong"), ("authorization", f"Bearer {TOKENS[0]}")], "more than one"),
    ],
)
def test_token_refused_with_clear_message(token_server: TinyServer, metadata: list[tuple[str, str]],
                                          fragment: str) -> None:
    with grpc.insecure_channel(token_server.target) as ch, pytest.raises(grpc.RpcError) as ei:
        _call(ch, metadata=metadata)
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert fragment in ei.value.details()
    assert TOKENS[0] not in ei.value.details()


def test_streaming_method_denied_too(token_server: TinyServer) -> None:
    with grpc.insecure_channel(token_server.target) as ch:
        fn = ch.unary_stream(ECHO_STREAM, request_serializer=_identity, response_deserializer=_identity)
        assert list(fn(b"a", metadata=[("authorization", f"Bearer {TOKENS[1]}")], timeout=10)) == [
            b"a\x00", b"a\x01", b"a\x02"]
        with pytest.raises(grpc.RpcError) as ei:
            list(fn(b"a", timeout=10))
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_unknown_method_without_token_is_unauthenticated(token_server: TinyServer) -> None:
    with grpc.insecure_channel(token_server.target) as ch, pytest.raises(grpc.RpcError) as ei:
        ch.unary_unary("/camserve.test.Echo/Nope", _identity, _identity)(b"", timeout=10)
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_exempt(token_server: TinyServer) -> None:
    with grpc.insecure_channel(token_server.target) as ch:
        assert _health(ch) == health_pb2.HealthCheckResponse.SERVING


def test_no_tokens_no_auth_interceptor() -> None:
    kinds = [type(i) for i in server_interceptors(SecurityConfig())]
    assert kinds == [MalformedRequestInterceptor]
    kinds = [type(i) for i in server_interceptors(SecurityConfig(auth_tokens=TOKENS))]
    assert kinds == [TokenAuthInterceptor, MalformedRequestInterceptor]
    with pytest.raises(SecurityConfigError):
        TokenAuthInterceptor([])


def test_denial_logs_no_secret(token_server: TinyServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="camserve")
    presented = "Bearer almost-" + TOKENS[0]
    with grpc.insecure_channel(token_server.target) as ch, pytest.raises(grpc.RpcError):
        _call(ch, metadata=[("authorization", presented)])
    cfg = SecurityConfig(auth_tokens=TOKENS)
    text = caplog.text + repr(cfg) + cfg.describe() + str(cfg)
    assert "almost-" not in text and TOKENS[0] not in text and TOKENS[1] not in text
    assert "2 tokens" in SecurityConfig(auth_tokens=TOKENS).describe()


# ---------------------------------------------------------------- TLS / mTLS

def test_tls_server(pki: Pki) -> None:
    s = TinyServer(SecurityConfig(tls_cert=pki.server_cert, tls_key=pki.server_key))
    try:
        good = grpc.ssl_channel_credentials(root_certificates=pki.read("ca_cert"))
        with grpc.secure_channel(s.target, good) as ch:
            assert _call(ch) == b"echo:hi"
            assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
        # a plaintext client cannot talk to the TLS port
        with grpc.insecure_channel(s.target) as ch, pytest.raises(grpc.RpcError) as ei:
            _call(ch)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        # a client that trusts another CA refuses the server
        wrong = grpc.ssl_channel_credentials(root_certificates=pki.read("rogue_ca_cert"))
        with grpc.secure_channel(s.target, wrong) as ch, pytest.raises(grpc.RpcError) as ei:
            _call(ch)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        s.close()


def test_mtls_server(pki: Pki) -> None:
    s = TinyServer(SecurityConfig(tls_cert=pki.server_cert, tls_key=pki.server_key,
                                  tls_client_ca=pki.ca_cert, auth_tokens=TOKENS))
    try:
        good = grpc.ssl_channel_credentials(pki.read("ca_cert"), pki.read("client_key"),
                                            pki.read("client_cert"))
        with grpc.secure_channel(s.target, good) as ch:
            assert _call(ch, TOKENS[0]) == b"echo:hi"
            with pytest.raises(grpc.RpcError) as ei:  # mTLS and token auth are independent layers
                _call(ch)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        no_cert = grpc.ssl_channel_credentials(pki.read("ca_cert"))
        rogue = grpc.ssl_channel_credentials(pki.read("ca_cert"), pki.read("rogue_client_key"),
                                             pki.read("rogue_client_cert"))
        for creds in (no_cert, rogue):
            with grpc.secure_channel(s.target, creds) as ch, pytest.raises(grpc.RpcError) as ei:
                _call(ch, TOKENS[0])
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
            with grpc.secure_channel(s.target, creds) as ch, pytest.raises(grpc.RpcError):
                _health(ch)  # health is exempt from tokens, never from the handshake
        with grpc.insecure_channel(s.target) as ch, pytest.raises(grpc.RpcError) as ei:
            _call(ch, TOKENS[0])
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        s.close()


# ---------------------------------------------------------------- flags, env, files

def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_security_arguments(p)
    return p.parse_args(argv)


def test_flags_and_token_file(tmp_path: Path, pki: Pki) -> None:
    tf = tmp_path / "tokens"
    tf.write_text(f"# comment\n\n  {TOKENS[0]}  \n{TOKENS[1]}\n{TOKENS[0]}\n")
    cfg = security_config_from_args(_parse([
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.ca_cert), "--auth-token-file", str(tf)]))
    assert cfg.tls and cfg.mtls and cfg.auth
    assert cfg.auth_tokens == TOKENS  # stripped, comments skipped, de-duplicated
    assert security_config_from_args(_parse([])) == SecurityConfig()


def test_env_vars(tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = tmp_path / "tokens"
    tf.write_text("envtoken\n")
    monkeypatch.setenv("CAMSERVE_TLS_CERT", str(pki.server_cert))
    monkeypatch.setenv("CAMSERVE_TLS_KEY", str(pki.server_key))
    monkeypatch.setenv("CAMSERVE_AUTH_TOKEN_FILE", str(tf))
    cfg = security_config_from_args(_parse([]))
    assert cfg.tls_cert == pki.server_cert and not cfg.mtls and cfg.auth_tokens == ("envtoken",)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--tls-cert", "{cert}"], "needs both --tls-cert and --tls-key"),
        (["--tls-key", "{key}"], "needs both --tls-cert and --tls-key"),
        (["--tls-client-ca", "{ca}"], "needs the server's own --tls-cert"),
        (["--tls-cert", "{missing}", "--tls-key", "{key}"], "--tls-cert: no such file"),
        (["--auth-token-file", "{missing}"], "--auth-token-file: no such file"),
        (["--auth-token-file", "{empty}"], "file is empty"),
        (["--auth-token-file", "{comments}"], "holds no token"),
        (["--auth-token-file", "{spaced}"], "line 2"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, pki: Pki, argv: list[str], fragment: str) -> None:
    (tmp_path / "empty").write_text("")
    (tmp_path / "comments").write_text("# nothing\n\n")
    (tmp_path / "spaced").write_text("ok\nsecret with-space\n")
    paths = {"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca_cert, "missing": tmp_path / "nope",
             "empty": tmp_path / "empty", "comments": tmp_path / "comments", "spaced": tmp_path / "spaced"}
    with pytest.raises(SecurityConfigError) as ei:
        security_config_from_args(_parse([a.format(**paths) for a in argv]))
    assert fragment in str(ei.value)
    assert "secret" not in str(ei.value)


def test_non_pem_material_is_a_clear_error(tmp_path: Path, pki: Pki) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a certificate")
    cfg = SecurityConfig(tls_cert=junk, tls_key=pki.server_key)

    async def bind() -> None:  # grpc.aio.server() needs a running event loop
        server = grpc.aio.server()
        with pytest.raises(SecurityConfigError, match="not a PEM file"):
            add_listening_port(server, "127.0.0.1:0", cfg)

    asyncio.run(bind())


def test_load_tokens_roundtrip(tmp_path: Path) -> None:
    tf = tmp_path / "t"
    tf.write_text("a\r\nb\n")
    assert load_tokens(tf) == ("a", "b")


def test_check_is_exact() -> None:
    """Independent reference: only an exact listed token passes; prefixes/suffixes/case changes do not."""
    icpt = TokenAuthInterceptor(TOKENS)
    assert icpt.check([("authorization", f"Bearer {TOKENS[0]}")]) is None
    assert icpt.check([("Authorization", f"BEARER  {TOKENS[1]} ")]) is None
    for bad in (TOKENS[0].upper(), TOKENS[0] + TOKENS[1], "", " ", TOKENS[1][1:]):
        assert icpt.check([("authorization", f"Bearer {bad}")]) is not None


# ---------------------------------------------------------------- malformed protobuf bodies

@pytest.mark.parametrize("body", [b"\xff\xff\xff", b"\x0a\xff", b"\x0a\x05ab", bytes(range(256))])
def test_corrupt_body_is_invalid_argument(token_server: TinyServer, body: bytes) -> None:
    """grpc alone answers UNKNOWN to undecodable bytes; the interceptor makes it INVALID_ARGUMENT."""
    with grpc.insecure_channel(token_server.target) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check", _identity, _identity)
        with pytest.raises(grpc.RpcError) as ei:
            check(body, timeout=10)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid protobuf message" in ei.value.details()
        watch = ch.unary_stream("/grpc.health.v1.Health/Watch", _identity, _identity)
        with pytest.raises(grpc.RpcError) as ei:
            list(watch(body, timeout=10))
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # a valid body still works through the same wrapped handler, streaming included
        ok = health_pb2.HealthCheckRequest(service="").SerializeToString()
        assert health_pb2.HealthCheckResponse.FromString(check(ok, timeout=10)).status == \
            health_pb2.HealthCheckResponse.SERVING
        stream = watch(ok, timeout=10)
        first = next(stream)
        stream.cancel()
        assert health_pb2.HealthCheckResponse.FromString(first).status == \
            health_pb2.HealthCheckResponse.SERVING

"""TLS, mutual TLS and bearer tokens on the real ``camserve serve`` subprocess.

One server, the strictest configuration: ``--tls-cert/--tls-key`` (certificates made by openssl for this
test), ``--tls-client-ca`` (mTLS: client certificates required) and ``--auth-token-file``, run with one
front-end process and with two (``--frontends``: each test opens new connections, which the kernel
spreads over the front ends, so every rule must hold in each). Checked from outside, with stock grpc
clients and with the SDK: who can connect, who can call, what is exempt (health, reflection), and that
no secret reaches the server log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from camserve_client import Client, TLSConfig
from camserve_client.errors import Unauthenticated
from camserve_proto import explain_pb2, explain_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pki import Pki, make_pki
from serverproc import ServerProcess, start_server

pytestmark = pytest.mark.timeout(240)

REPOSITORY = Path(__file__).resolve().parents[1] / "reliability" / "data" / "repository"
TOKEN = "camserve-test-token-7f3a9c"
NEAR_MISS = TOKEN[:-1] + "X"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _creds(pki: Pki, client: str | None = "client", ca: str = "ca_cert") -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(pki.read(ca))
    return grpc.ssl_channel_credentials(pki.read(ca), pki.read(f"{client}_key"), pki.read(f"{client}_cert"))


@pytest.fixture(scope="module", params=(1, 2), ids=("frontends1", "frontends2"))
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    tokens = tmp_path_factory.mktemp("secrets") / "tokens"
    tokens.write_text(f"# camserve test tokens\n{TOKEN}\n")
    tokens.chmod(0o600)
    srv = start_server("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                       "--tls-client-ca", str(pki.ca_cert), "--auth-token-file", str(tokens),
                       "--frontends", str(request.param), repository=REPOSITORY, credentials=_creds(pki))
    try:
        yield srv
    finally:
        srv.stop()


def _request() -> explain_pb2.ExplainRequest:
    pixels = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    return explain_pb2.ExplainRequest(image=explain_pb2.Image(tensor=explain_pb2.Tensor(
        dtype=explain_pb2.UINT8, shape=[48, 48, 3], data=pixels.tobytes())))


def _explain(channel: grpc.Channel, token: str | None) -> explain_pb2.ExplainResponse:
    md = [("authorization", f"Bearer {token}")] if token is not None else None
    return explain_pb2_grpc.ExplainServiceStub(channel).Explain(_request(), metadata=md, timeout=30)


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def test_startup_line_names_modes_not_secrets(server: ServerProcess) -> None:
    log = server.log()
    assert "transport=mtls" in log and "auth=bearer(1 tokens)" in log
    assert TOKEN not in log
    listening = [line for line in log.splitlines() if "gRPC listening on" in line]
    assert len(listening) == int(server.proc.args[server.proc.args.index("--frontends") + 1])
    assert all("transport=mtls" in line and "auth=bearer(1 tokens)" in line for line in listening), listening


def test_plaintext_client_cannot_reach_tls_server(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as ch:
        for call in (lambda: _explain(ch, TOKEN), lambda: _health(ch)):
            with pytest.raises(grpc.RpcError) as ei:
                call()
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("client", [None, "rogue_client"], ids=["no-client-cert", "cert-from-another-ca"])
def test_mtls_refuses_clients_without_a_trusted_certificate(server: ServerProcess, pki: Pki,
                                                            client: str | None) -> None:
    with grpc.secure_channel(server.target, _creds(pki, client)) as ch:
        for call in (lambda: _explain(ch, TOKEN), lambda: _health(ch)):
            with pytest.raises(grpc.RpcError) as ei:
                call()
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_that_does_not_trust_the_server_refuses_it(server: ServerProcess, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(pki.read("rogue_ca_cert"), pki.read("client_key"),
                                         pki.read("client_cert"))
    with grpc.secure_channel(server.target, creds) as ch, pytest.raises(grpc.RpcError) as ei:
        _explain(ch, TOKEN)
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("token", [None, "wrong", NEAR_MISS, TOKEN + "x", ""])
def test_token_required(server: ServerProcess, pki: Pki, token: str | None) -> None:
    with grpc.secure_channel(server.target, _creds(pki)) as ch:
        for call in (lambda: _explain(ch, token),
                     lambda: explain_pb2_grpc.ExplainServiceStub(ch).ListModels(
                         explain_pb2.ListModelsRequest(),
                         metadata=[("authorization", f"Bearer {token}")] if token else None, timeout=10)):
            with pytest.raises(grpc.RpcError) as ei:
                call()
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "Bearer" in ei.value.details() or "bearer" in ei.value.details()


def test_valid_certificate_and_token_are_served(server: ServerProcess, pki: Pki) -> None:
    with grpc.secure_channel(server.target, _creds(pki)) as ch:
        resp = _explain(ch, TOKEN)
        assert resp.explanations and resp.explanations[0].heatmap.shape
        heat = np.frombuffer(resp.explanations[0].heatmap.data, dtype="<f4")
        assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0


def test_health_and_reflection_are_exempt_from_tokens(server: ServerProcess, pki: Pki) -> None:
    with grpc.secure_channel(server.target, _creds(pki)) as ch:
        assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]), timeout=10))
        names = {s.name for s in replies[0].list_services_response.service}
        assert "camserve.v1.ExplainService" in names


def test_sdk_client_with_mtls_and_token(server: ServerProcess, pki: Pki) -> None:
    tls = TLSConfig(root_certificates=pki.ca_cert, certificate_chain=pki.client_cert,
                    private_key=pki.client_key)
    pixels = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    with Client(server.target, tls=tls, token=TOKEN, retries=0) as c:
        result = c.explain(pixels)
        assert result is not None
    with Client(server.target, tls=tls, token=NEAR_MISS, retries=0) as c, pytest.raises(Unauthenticated):
        c.explain(pixels)


def test_no_secret_in_server_log(server: ServerProcess, pki: Pki) -> None:
    """After accepted and refused calls (near-miss tokens included), the log holds no token text."""
    with grpc.secure_channel(server.target, _creds(pki)) as ch:
        _explain(ch, TOKEN)
        for bad in (NEAR_MISS, "Bearer-looking-" + TOKEN):
            with pytest.raises(grpc.RpcError):
                _explain(ch, bad)
    log = server.log()
    assert TOKEN not in log and NEAR_MISS not in log and TOKEN[:12] not in log

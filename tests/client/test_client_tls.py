"""The client over TLS, mutual TLS and bearer tokens, against the real server (security flags on)."""

from __future__ import annotations

import sys
from pathlib import Path

import camserve_client as cc
import grpc
import numpy as np
import pytest
from camserve_client.tools.cli import main
from client_repo import make_repository
from serverproc import start_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
from pki import make_pki

pytestmark = pytest.mark.timeout(300)
TOKEN = "client-test-token-123"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("tls")
    pki = make_pki(d / "pki")
    (d / "tokens").write_text(f"# test tokens\n{TOKEN}\n")
    creds = grpc.ssl_channel_credentials(pki.read("ca_cert"), pki.read("client_key"), pki.read("client_cert"))
    srv = start_server("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                       "--tls-client-ca", str(pki.ca_cert), "--auth-token-file", str(d / "tokens"),
                       repository=make_repository(d / "repo"), host="localhost", credentials=creds)
    yield srv, pki, d
    srv.stop()


def _tls(pki, **kw) -> cc.TLSConfig:
    args = {"root_certificates": pki.ca_cert, "certificate_chain": pki.client_cert,
            "private_key": pki.client_key}
    args.update(kw)
    return cc.TLSConfig(**args)


def test_mtls_and_token(tls_server) -> None:
    srv, pki, _ = tls_server
    with cc.Client(srv.target, tls=_tls(pki), token=TOKEN, model="tiny") as client:
        assert [m.name for m in client.list_models()] == ["flat", "tiny"]
        assert client.explain(np.zeros((32, 32, 3), np.uint8)).heatmap.shape == (7, 7)
    # PEM bytes instead of paths, and an IP target verified against the name in the certificate
    tls = _tls(pki, root_certificates=pki.read("ca_cert"), server_name="localhost")
    with cc.Client(f"127.0.0.1:{srv.grpc_port}", tls=tls, token=TOKEN) as client:
        assert client.health("tiny") == "SERVING"


def test_missing_or_wrong_token_is_unauthenticated_and_not_retried(tls_server) -> None:
    srv, pki, _ = tls_server
    for token in (None, "wrong"):
        refused = {"method": "ListModels", "code": "UNAUTHENTICATED"}
        before = srv.metric("camserve_requests_total", **refused)
        with cc.Client(srv.target, tls=_tls(pki), token=token, retries=4) as client:
            assert client.health() == "SERVING"  # health is exempt from auth (probes)
            with pytest.raises(cc.Unauthenticated) as info:
                client.list_models()
            assert "bearer" in info.value.details.lower()
        assert srv.metric("camserve_requests_total", **refused) - before == 1  # sent once: never retried


def test_without_client_certificate_or_tls_the_call_fails(tls_server) -> None:
    srv, pki, _ = tls_server
    tls = cc.TLSConfig(root_certificates=pki.ca_cert)
    with cc.Client(srv.target, tls=tls, token=TOKEN, retries=0, timeout=10) as client, \
            pytest.raises(cc.Unavailable):
        client.list_models()
    with cc.Client(srv.target, token=TOKEN, retries=0, timeout=10) as client, pytest.raises(cc.Unavailable):
        client.list_models()
    with pytest.raises(ValueError, match="both certificate_chain and private_key"):
        cc.Client(srv.target, tls=cc.TLSConfig(certificate_chain=pki.client_cert))


def test_cli_tls_flags(tls_server, capsys) -> None:
    srv, pki, d = tls_server
    (d / "token.txt").write_text(TOKEN + "\n")
    flags = ["--target", srv.target, "--ca", str(pki.ca_cert), "--cert", str(pki.client_cert),
             "--key", str(pki.client_key), "--token-file", str(d / "token.txt")]
    assert main(["models", *flags]) == 0
    assert "tiny" in capsys.readouterr().out
    assert main(["models", *flags[:-2]]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert main(["models", *flags[:6]]) == 2  # --cert without --key

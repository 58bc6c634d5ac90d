"""A newcomer's usual mistakes meet one line that says what to do, never a traceback or a bare code.

Wrong port or no server, TLS on one side only, a CA the client does not trust, an HTTP/1 port, an
unknown host, a URL for a target, a missing token, an unknown model, an output folder that does not
exist, contradictory flags: each through the SDK and the `camserve` command. Real gRPC servers on
loopback (the scripted one of client_fake.py, plain or over TLS; a stdlib HTTP/1 server); no camserve
server start-up. The texts checked are the advice in camserve_client/connection.py.
"""

from __future__ import annotations

import argparse
import http.server
import json
import sys
import threading
from pathlib import Path

import camserve_client as cc
import grpc
import numpy as np
import pytest
from camserve_client.connection import advice
from camserve_client.tools.benchcmd import add_load_arguments
from camserve_client.tools.cli import build_parser, main
from camserve_client.tools.testimages import encode_png
from client_fake import FakeServer
from serverproc import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
from pki import make_pki

pytestmark = pytest.mark.timeout(60)
IMAGE = np.zeros((4, 4, 3), np.uint8)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(np.full((9, 9, 3), 60, np.uint8)))
    return path


def test_no_server_there_says_start_it_or_fix_the_address() -> None:
    target = f"127.0.0.1:{free_port()}"
    # Waiting for the server (the default) ends at the deadline, and still says why.
    with cc.Client(target, timeout=0.5) as client, pytest.raises(cc.DeadlineExceeded) as waited:
        client.explain(IMAGE)
    with cc.Client(target, retries=0) as client, pytest.raises(cc.Unavailable) as at_once:
        client.list_models()
    with cc.Client(target) as client, pytest.raises(cc.Unavailable) as health:
        client.health()
    for info in (waited, at_once, health):
        assert info.value.unreachable, info.value
        assert target in info.value.details and "nothing is listening there" in info.value.details
    assert "in 0.5 s" in waited.value.details


def test_a_slow_server_is_not_called_unreachable() -> None:
    with FakeServer() as fake:
        fake.service.script.hold = threading.Event()
        try:
            with cc.Client(fake.target, timeout=0.2) as client, pytest.raises(cc.DeadlineExceeded) as info:
                client.explain(IMAGE)
        finally:
            fake.service.script.hold.set()
    assert not info.value.unreachable and info.value.details == "Deadline Exceeded"


def test_tls_on_one_side_only_or_an_untrusted_ca(pki) -> None:
    creds = grpc.ssl_server_credentials([(pki.read("server_key"), pki.read("server_cert"))])
    with FakeServer(credentials=creds) as tls_server, FakeServer() as plain_server:
        tls_target = f"localhost:{tls_server.port}"
        cases = [  # (target, tls, what the message must say)
            (tls_target, None, "it probably requires TLS"),
            (tls_target, cc.TLSConfig(), "not signed by a CA this client trusts"),
            (plain_server.target, cc.TLSConfig(root_certificates=pki.ca_cert), "does not speak TLS"),
        ]
        for target, tls, says in cases:
            for retries in (0, 4):
                with cc.Client(target, tls=tls, retries=retries, timeout=1) as client, \
                        pytest.raises(cc.CamserveError) as info:
                    client.list_models()
                assert info.value.unreachable and says in info.value.details, (target, tls, info.value)
        with cc.Client(tls_target, tls=cc.TLSConfig(root_certificates=pki.ca_cert)) as client:
            assert client.list_models()[0].name == "fake"


def test_an_http1_port_unknown_host_and_url_target() -> None:
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with cc.Client(f"127.0.0.1:{httpd.server_port}", retries=0) as client, \
                pytest.raises(cc.Unavailable) as info:
            client.list_models()
        assert "answers HTTP/1, not gRPC" in info.value.details
    finally:
        httpd.shutdown()
    with cc.Client("nosuchhost.invalid:50051", retries=0) as client, pytest.raises(cc.Unavailable) as info:
        client.list_models()
    assert "does not resolve" in info.value.details
    for url in ("http://localhost:50051", "https://camserve:443", ["grpc://a:1", "b:2"]):
        with pytest.raises(ValueError, match="is a URL: give host:port"):
            cc.Client(url)
    # gRPC's default port when none is given (the connection refused there, as gRPC words it)
    refused = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:443: Failed to "
               "connect to remote host: Connection refused")
    assert "no port" in advice("localhost", refused, tls=False)
    assert "no port" not in advice("localhost:50051", refused, tls=False)


def test_health_of_an_unknown_model_names_it() -> None:
    with FakeServer() as fake, cc.Client(fake.target) as client:
        with pytest.raises(cc.NotFound, match="model 'nope' is not served here"):
            client.health("nope")
        with pytest.raises(cc.NotFound, match="model 'nope' is not served here"):
            client.wait_ready(timeout=5, model="nope")


def test_cli_says_which_flag_fixes_it_and_exits_3_when_unreachable(png, tmp_path, capsys,
                                                                    monkeypatch) -> None:
    nobody = ["--target", f"127.0.0.1:{free_port()}"]
    # The notice while a call waits: at once here; a refused connection is seen in milliseconds, and
    # the calls that wait for a server wait 2 s.
    monkeypatch.setattr("camserve_client.tools.common.NOTICE_AFTER_S", 0.0)
    for argv in (["explain", str(png), "--timeout", "2"], ["models", "--timeout", "2"],
                 ["health"], ["health", "--wait", "0.5"], ["bench", "--wait", "0.5", "--quick", "--quiet"]):
        assert main([*argv, *nobody]) == 3, argv
        err = capsys.readouterr().err
        assert "nothing is listening there" in err and "--target or CAMSERVE_TARGET" in err, (argv, err)
        assert "Traceback" not in err
        if argv[0] in ("explain", "models"):  # calls that wait for a server say so while they wait
            assert "no answer yet, still waiting" in err, (argv, err)
    with FakeServer() as fake:
        target = ["--target", fake.target]
        fake.service.script.always = (grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")
        assert main(["explain", str(png), *target]) == 1
        assert "--token, --token-file or CAMSERVE_TOKEN" in capsys.readouterr().err
        fake.service.script.always = None
        # an unknown model ends the benchmark at once (not after --wait)
        assert main(["bench", "--model", "nope", "--quick", "--quiet", *target]) == 1
        assert "model 'nope' is not served here" in capsys.readouterr().err
        # an output folder that does not exist yet is made; one that cannot be is refused before any call
        out = tmp_path / "new" / "sub" / "o.png"
        assert main(["explain", str(png), "--overlay", str(out), *target]) == 0 and out.exists()
        calls = fake.service.attempts["Explain"]
        blocker = tmp_path / "file"
        blocker.write_text("")
        assert main(["explain", str(png), "--heatmap", str(blocker / "m.npy"), *target]) == 2
        assert f"cannot write {blocker / 'm.npy'}" in capsys.readouterr().err
        assert main(["explain", str(png), "--class", "3", "--top-k", "2", *target]) == 2
        assert "not both" in capsys.readouterr().err
        assert fake.service.attempts["Explain"] == calls  # neither was sent
        # a folder of one image answers as a folder does (a JSON list, outputs named by stem)
        capsys.readouterr()
        assert main(["explain", str(png.parent), "--json", "--quiet", "--overlay", str(tmp_path / "ov.png"),
                     *target]) == 0
        assert [Path(r["image"]).name for r in json.loads(capsys.readouterr().out)] == ["x.png"]
        assert (tmp_path / "ov_x.png").exists()


def test_every_flag_of_every_command_explains_itself(capsys) -> None:
    from camserve.front.cli import build_parser as serve_parser  # the parser only: no TensorFlow

    parser = build_parser()
    commands = {name: sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                for name, sub in action.choices.items()}
    bench = argparse.ArgumentParser()
    add_load_arguments(bench)
    commands.update(bench=bench, serve=serve_parser(), camserve=parser)
    for name, sub in commands.items():
        for action in sub._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"camserve {name}: {action.option_strings or action.dest} has no help"
    for argv in (["--help"], ["explain", "--help"], ["models", "--help"], ["health", "--help"],
                 ["bench", "--help"], ["serve", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert "exit status" in out and "default: None" not in out, argv

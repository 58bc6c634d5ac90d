"""`camserve serve` as an operator meets it: --help, environment variables, clear start-up errors.

No model is loaded here: every case ends before (or instead of) starting a worker.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ("--model-repository", "--workers", "--compile", "--backend", "--max-batch-size",
         "--max-queue-delay-ms", "--max-queue-size", "--host", "--grpc-port", "--metrics-port",
         "--max-message-mb", "--max-connection-age-s", "--pre-stop-seconds", "--drain-seconds", "--tls-cert",
         "--auth-token-file", "--max-inflight", "--batch-timeout-s", "--startup-timeout-s", "--max-header-kb",
         "--keepalive-time-s", "--keepalive-timeout-s", "--min-ping-interval-s",
         "--max-connection-age-grace-s", "--handshake-timeout-s", "--metrics-max-connections",
         "--metrics-timeout-s")
FLAT_REPO = Path(__file__).resolve().parent / "data" / "repository"


def serve(*args: str, env: dict[str, str] | None = None, timeout: float = 60
          ) -> subprocess.CompletedProcess[str]:
    """Run `python -m camserve.front.cli serve ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "camserve.front.cli", "serve", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def test_help_explains_every_flag_and_its_env_var() -> None:
    proc = serve("--help")
    assert proc.returncode == 0
    for flag in FLAGS:
        assert flag in proc.stdout, flag
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    assert text.count("[env CAMSERVE_") >= 24  # every flag but --help
    assert "CAMSERVE_BATCH_TIMEOUT_S" in text and "CAMSERVE_MAX_INFLIGHT" in text


def test_client_entry_point_dispatches_serve() -> None:
    proc = subprocess.run([sys.executable, "-m", "camserve_client.tools.cli", "serve", "--help"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0 and "--grpc-port" in proc.stdout


def one_clear_line(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


def test_missing_repository(tmp_path: Path) -> None:
    one_clear_line(serve("--model-repository", str(tmp_path / "nope")), "does not exist")


def test_bad_config(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"name": "m", "input_shape": [1, 2]}')
    one_clear_line(serve("--model-repository", str(tmp_path)), "config.json", "field")


def test_jax_backend_refuses_graph_compile_and_bad_timeouts_are_clear() -> None:
    one_clear_line(serve("--backend", "jax", "--compile", "graph"), "jax.jit")
    one_clear_line(serve(env={"CAMSERVE_BACKEND": "jax", "CAMSERVE_COMPILE": "graph"}), "--compile xla")
    one_clear_line(serve("--batch-timeout-s", "0"), "> 0")
    one_clear_line(serve(env={"CAMSERVE_BATCH_TIMEOUT_S": "soon"}), "seconds")
    one_clear_line(serve("--max-inflight", "-1"), ">= 0")


def test_environment_defaults_are_checked() -> None:
    one_clear_line(serve(env={"CAMSERVE_COMPILE": "fast"}), "compile mode 'fast'")
    one_clear_line(serve(env={"CAMSERVE_WORKERS": "cpu:zero"}), "cpu:N")
    one_clear_line(serve(env={"CAMSERVE_GRPC_PORT": "70000"}), "outside")
    one_clear_line(serve("--model-repository", str(FLAT_REPO), env={"CAMSERVE_MAX_BATCH_SIZE": "0"}), ">= 1")


def test_every_choice_read_from_the_environment_is_checked(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (no server start): argparse checks choices on the command line only; parse_args
    checks those of every flag read from the environment (a bad log level was a traceback)."""
    from camserve.front.cli import parse_args

    for env, value in (("CAMSERVE_LOG_LEVEL", "LOUD"), ("CAMSERVE_BACKEND", "torch"),
                       ("CAMSERVE_COMPILE", "jit")):
        with monkeypatch.context() as m:
            m.setenv(env, value)
            with pytest.raises(SystemExit) as exc:
                parse_args([])
            assert exc.value.code == 2
            assert f"{value!r} (from the environment) is not one of" in capsys.readouterr().err
    assert parse_args(["--log-level", "DEBUG"]).log_level == "DEBUG"


def test_missing_tls_file(tmp_path: Path) -> None:
    one_clear_line(serve("--model-repository", str(FLAT_REPO), "--tls-cert", str(tmp_path / "c.pem"),
                         "--tls-key", str(tmp_path / "k.pem")), "--tls-cert")


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or os.environ.get("CUDA_VISIBLE_DEVICES"),
                    reason="this machine may have a GPU")
def test_gpu_workers_without_gpu() -> None:
    one_clear_line(serve("--model-repository", str(FLAT_REPO), "--workers", "gpu"), "no GPU")


@pytest.mark.parametrize("which", ["--grpc-port", "--metrics-port"])
def test_busy_port_fails_before_any_worker_starts(which: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = "--metrics-port" if which == "--grpc-port" else "--grpc-port"
        proc = serve("--model-repository", str(FLAT_REPO), "--host", "127.0.0.1", which, str(port),
                     other, "0", "--workers", "cpu:1", timeout=60)
    one_clear_line(proc, str(port))
    assert "worker 0 started" not in proc.stderr


def test_a_host_that_is_no_address_is_named_with_what_host_takes() -> None:
    """A unix: socket or an unknown name was refused as "[Errno -2] Name or service not known" alone."""
    for host in ("unix:/tmp/camserve.sock", "nosuchhost.invalid"):
        one_clear_line(serve("--model-repository", str(FLAT_REPO), "--host", host, "--grpc-port", "0",
                             timeout=60), f"cannot listen on {host}:0", "--host takes an IP address")


def test_server_modules_do_not_import_tensorflow() -> None:
    code = ("import sys, camserve.front.cli, camserve.front.server, camserve.front.service, "
            "camserve.front.codec, camserve.front.metrics, camserve.front.requests, camserve.front.replies, "
            "camserve.front.interceptors, camserve.scheduling.dispatcher; "
            "bad = [m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr

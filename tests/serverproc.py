"""Run the real camserve server as a subprocess: the one helper tests and benchmarks start servers with.

Why a subprocess and not an in-process server: the acceptance tests need what users get, including
signals (SIGTERM drain, exit code), worker processes that can be killed, and a parent process that
never imports TensorFlow; the benchmarks measure what users run. Benchmarks import it as
``tests.serverproc`` (run from the repository root); it needs grpcio and grpcio-health-checking, and
pytest only for :func:`server_fixture`. Usage::

    from serverproc import start_server, server_fixture

    server = server_fixture("--max-batch-size", "8")          # a module-scoped pytest fixture

    def test_x(server):
        channel = grpc.insecure_channel(server.target)
        ...

    with start_server("--max-queue-size", "2") as srv:       # or by hand
        ...
        assert srv.stop() == 0                                 # SIGTERM, wait, exit code

The server logs to a file (`srv.log_path`, read with `srv.log()`), so a chatty server never blocks
on a full pipe; the log tail is included in every startup error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_START_TIMEOUT = 240.0
PORT_ATTEMPTS = 3  # starts of a server whose picked port was taken before it bound it


def free_port() -> int:
    """A port that was free on loopback a moment ago (the kernel picks it)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` different ports that were free on loopback a moment ago (all held open while picking, so
    the kernel cannot hand out one twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def wait_for(condition: Callable[[], Any], timeout: float, poll: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something true (returned) or ``timeout`` passes (TimeoutError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout:.1f} s")
        time.sleep(poll)


@dataclass(eq=False)
class ServerProcess:
    """A started `python -m camserve.front.cli serve` subprocess and how to reach it."""

    proc: subprocess.Popen[bytes]
    grpc_port: int
    metrics_port: int
    log_path: Path
    host: str = "127.0.0.1"
    credentials: grpc.ChannelCredentials | None = None
    channel_options: Sequence[tuple[str, Any]] = ()
    exit_code: int | None = field(default=None, init=False)
    startup_s: float = field(default=0.0, init=False)  # seconds from start to SERVING (set by start_server)

    # -- addresses ------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        """gRPC target, e.g. '127.0.0.1:50123'."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def channel(self, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A new sync channel to the server (TLS when the helper was given credentials)."""
        opts = [*self.channel_options, *options]
        if self.credentials is not None:
            return grpc.secure_channel(self.target, self.credentials, options=opts)
        return grpc.insecure_channel(self.target, options=opts)

    # -- observation ----------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """Everything the server wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def health(self, service: str = "", timeout: float = 2.0) -> str | None:
        """'SERVING' / 'NOT_SERVING' / ... for `service` ('' = overall), or None when unreachable."""
        with self.channel() as ch:
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            except grpc.RpcError:
                return None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_health(self, status: str = "SERVING", service: str = "", timeout: float = DEFAULT_START_TIMEOUT,
                    poll: float = 0.1) -> float:
        """Block until health of `service` is `status`; returns seconds waited. Raises with the log tail."""
        t0 = time.monotonic()
        while True:
            if not self.alive():
                raise RuntimeError(f"server exited with {self.proc.returncode} before {status}:\n"
                                   f"{self.log_tail()}")
            if self.health(service, timeout=min(2.0, max(poll, 0.5))) == status:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"server not {status} within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(poll)

    def wait_serving(self, timeout: float = DEFAULT_START_TIMEOUT) -> float:
        return self.wait_health("SERVING", "", timeout)

    def metrics_text(self, timeout: float = 5.0) -> str:
        return urllib.request.urlopen(self.metrics_url, timeout=timeout).read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0.0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for fam in text_string_to_metric_families(self.metrics_text()):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def worker_pids(self) -> list[int]:
        """PIDs of the worker processes (children started by multiprocessing spawn; Linux /proc only)."""
        pids: list[int] = []
        task_dir = Path(f"/proc/{self.pid}/task")
        children: set[int] = set()
        for task in task_dir.glob("*"):
            with contextlib.suppress(OSError):
                children.update(int(p) for p in (task / "children").read_text().split())
        for pid in sorted(children):
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                if b"spawn_main" in cmd and b"resource_tracker" not in cmd:
                    pids.append(pid)
        return pids

    def frontend_pids(self) -> list[int]:
        """PIDs of the front-end processes (``python -m camserve.front.frontend`` children; Linux /proc)."""
        pids: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                for pid in (task / "children").read_text().split():
                    with contextlib.suppress(OSError):
                        if b"camserve.front.frontend" in Path(f"/proc/{pid}/cmdline").read_bytes():
                            pids.append(int(pid))
        return sorted(pids)

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds (user + system) used so far by (the server's own processes: the supervisor and its
        front ends, its worker processes), from /proc (Linux); a process that already exited is not
        counted."""
        tick = os.sysconf("SC_CLK_TCK")

        def cpu(pid: int) -> float:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick

        workers = front = 0.0
        for pid in self.worker_pids():
            with contextlib.suppress(OSError):
                workers += cpu(pid)
        for pid in self.frontend_pids():
            with contextlib.suppress(OSError):
                front += cpu(pid)
        return cpu(self.pid) + front, workers

    def mapped_files(self) -> str:
        """The parent's /proc/PID/maps (to prove which shared libraries it loaded)."""
        return Path(f"/proc/{self.pid}/maps").read_text()

    # -- stopping -------------------------------------------------------------------------------

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 120.0) -> int:
        self.exit_code = self.proc.wait(timeout=timeout)
        return self.exit_code

    def stop(self, timeout: float = 120.0, sig: int = signal.SIGTERM) -> int:
        """SIGTERM (drain) and wait; kills after `timeout`. Returns the exit code (negative = killed)."""
        if self.exit_code is not None:
            return self.exit_code
        self.send_signal(sig)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.wait(30)

    def kill(self) -> None:
        """SIGKILL the server and its workers (test clean-up after a failure)."""
        for pid in self.worker_pids() if self.alive() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.alive():
            self.proc.kill()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(*args: str, repository: str | os.PathLike[str] | None = None, workers: str = "cpu:1",
                 pre_stop_seconds: float = 0.0, env: dict[str, str] | None = None,
                 wait: bool = True, timeout: float = DEFAULT_START_TIMEOUT, host: str = "127.0.0.1",
                 credentials: grpc.ChannelCredentials | None = None,
                 channel_options: Sequence[tuple[str, Any]] = (),
                 grpc_port: int | None = None, metrics_port: int | None = None,
                 log_path: Path | None = None) -> ServerProcess:
    """Start `python -m camserve.front.cli serve` on free loopback ports; by default wait for SERVING.

    `args` are extra CLI flags (e.g. "--max-queue-size", "2"); `repository` None serves the bundled
    demo model. `credentials` (and `host`, e.g. "localhost" to match a test certificate) are used by
    the helper's own health checks and `channel()`; pass the matching --tls-* flags in `args`.
    `metrics_port` -1 serves no metrics; `log_path` None logs to a new temporary file. When a port
    this helper picked is taken before the server binds it, the server is started again on others
    (``PORT_ATTEMPTS`` in all).
    """
    picked = grpc_port is None or metrics_port is None
    for attempt in range(PORT_ATTEMPTS):
        ports = free_ports(2)
        server = _spawn(args, repository, workers, pre_stop_seconds, env, host, credentials, channel_options,
                        ports[0] if grpc_port is None else grpc_port,
                        ports[1] if metrics_port is None else metrics_port, log_path)
        if not wait:
            return server
        try:
            server.startup_s = server.wait_serving(timeout)
            return server
        except BaseException:
            server.kill()
            with contextlib.suppress(Exception):
                server.wait(30)
            # A port free a moment ago can be taken (another process's connection) before the server
            # binds it: start again on other ports, never on ports the caller chose.
            taken = "address already in use" in server.log().lower()
            if not (picked and taken and attempt + 1 < PORT_ATTEMPTS):
                raise
            if log_path is None:
                server.log_path.unlink(missing_ok=True)
    raise AssertionError("unreachable")


def _spawn(args: Sequence[str], repository: str | os.PathLike[str] | None, workers: str,
           pre_stop_seconds: float, env: dict[str, str] | None, host: str,
           credentials: grpc.ChannelCredentials | None, channel_options: Sequence[tuple[str, Any]],
           grpc_port: int, metrics_port: int, log_path: Path | None) -> ServerProcess:
    cmd = [sys.executable, "-m", "camserve.front.cli", "serve", "--host", "127.0.0.1",
           "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), "--workers", workers,
           "--pre-stop-seconds", str(pre_stop_seconds)]
    if repository is not None:
        cmd += ["--model-repository", str(repository)]
    cmd += list(args)
    child_env = dict(os.environ)
    child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env.update(env or {})
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="camserve-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=child_env, cwd=ROOT)
    return ServerProcess(proc, grpc_port, metrics_port, log_path, host=host, credentials=credentials,
                         channel_options=channel_options)


def server_fixture(*args: str, scope: str = "module", **kwargs: Any) -> Any:
    """A pytest fixture (module-scoped by default) yielding a SERVING `ServerProcess`, stopped after."""
    import pytest

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def _server() -> Iterator[ServerProcess]:
        srv = start_server(*args, **kwargs)
        try:
            yield srv
        finally:
            srv.stop()
            with contextlib.suppress(OSError):
                srv.log_path.unlink()

    return _server

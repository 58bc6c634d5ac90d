"""Start and stop a `camserve serve` subprocess for a benchmark (free loopback port, wait for SERVING)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from camserve_client import Client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BenchServer:
    """`camserve serve` on 127.0.0.1:<free port>, logging to a temp file; stop() sends SIGTERM."""

    def __init__(self, repository: Path, extra: list[str] | None = None,
                 ready_timeout_s: float = 900) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        fd, log = tempfile.mkstemp(prefix="camserve-bench-", suffix=".log")
        self.log_path = Path(log)
        cmd = [sys.executable, "-m", "camserve.cli", "serve", "--host", "127.0.0.1", "--grpc-port",
               str(self.port), "--metrics-port", "-1", "--model-repository", str(repository), *(extra or [])]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        with os.fdopen(fd, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        t0 = time.monotonic()
        with Client(self.target, retries=0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"camserve serve exited with {self.proc.returncode}:\n{self.tail()}")
                try:
                    if client.health(timeout=2) == "SERVING":
                        break
                except Exception:  # not listening yet
                    pass
                if time.monotonic() - t0 > ready_timeout_s:
                    self.stop()
                    raise RuntimeError(f"camserve not SERVING after {ready_timeout_s:.0f} s:\n{self.tail()}")
                time.sleep(0.5)
        self.startup_s = time.monotonic() - t0

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return int(self.proc.returncode)

"""The `camserve serve` process: the scheduler, the workers, the front-end processes, metrics, signals.

Process model (ARCHITECTURE.md, "Processes")::

    supervisor (this)  ── Dispatcher: batcher + worker pool ── worker processes (TF/JAX)
        │  hub (Unix socket) + board (shared counters)
        ├── front end 0 ─┐
        ├── front end 1 ─┼── gRPC, all on one port (SO_REUSEPORT)
        └── ...         ─┘

The supervisor holds the gRPC port bound (not listening) from the start (:func:`reserve_port`), so a
busy port fails before anything starts, port 0 picks one port for every front end, and no other
program can join the port while the server runs. Front ends that die are restarted with back-off
(their queued images are withdrawn; their callers already got UNAVAILABLE from their own gRPC).

SIGTERM: the hub tells every front end to drain (NOT_SERVING at once, the pre-stop window, then
stop accepting and finish in-flight calls); once they have exited, the scheduler finishes what is
left and stops the workers; exit 0, or ``EXIT_DRAIN_LOST`` (3) when the drain lost accepted calls (a
front end's drain window ended with calls in progress, or a front end had to be killed). A second
SIGTERM (or SIGINT) skips the rest of the pre-stop window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from camserve.front.metrics import MULTIPROC_ENV, Metrics, mark_process_dead
from camserve.front.metrics_http import MetricsHTTPServer
from camserve.front.security import server_credentials
from camserve.front.server import EXIT_DRAIN_LOST, ServerOptions, default_frontends, make_dispatcher
from camserve.front.statistics import InferenceStatistics, shared_table
from camserve.repository import ModelConfig
from camserve.scheduling.arena import PixelArena
from camserve.scheduling.board import Board
from camserve.scheduling.hub import Hub

__all__ = ["Supervisor", "reserve_port", "serve"]

log = logging.getLogger("camserve.supervisor")

#: Images each front end can hold in shared memory at once (beyond that they travel inline: slower,
#: never refused). 128 covers 64 callers' worth of queued and in-batch images per front end; for a
#: 224x224 model that is 19 MiB of /dev/shm per front end.
ARENA_SLOTS = 128
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` with SO_REUSEPORT without listening; the front ends then bind it too.

    Raises OSError naming the address when it is in use by anything else.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:  # its text alone ("Name or service not known") names no address
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}; --host takes an IP address (0.0.0.0 "
                      "every IPv4 address, :: every address) or a host name of this machine") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


class _Observer:
    """The scheduler's events to the metrics, the board (queue depths) and the hub (readiness)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.board: Board | None = None
        self.hub: Hub | None = None
        self._depths: dict[str, int] = {}  # the gauge's values still to write, this event-loop turn

    def batch_formed(self, model: str, size: int) -> None:
        self.metrics.batch_formed(model, size)

    def queue_depth(self, model: str, depth: int) -> None:
        # The board at once (front ends shed on it); the gauge once per event-loop turn: every image
        # queued or taken changes the depth, and a gauge write in multiprocess mode (a lock and a
        # write to its file) per image is work no scrape can tell from one write per turn.
        if self.board is not None:
            self.board.set_depth(model, depth)
        if not self._depths:
            asyncio.get_running_loop().call_soon(self._write_depths)
        self._depths[model] = depth

    def _write_depths(self) -> None:
        depths, self._depths = self._depths, {}
        for model, depth in depths.items():
            self.metrics.queue_depth(model, depth)

    def workers_alive(self, n: int) -> None:
        self.metrics.workers_alive(n)
        self._refresh()

    def worker_restarted(self) -> None:
        self.metrics.worker_restarted()

    def request_dropped(self, model: str, reason: str) -> None:
        self.metrics.request_dropped(model, reason)

    def model_ready(self, model: str, ready: bool) -> None:
        self.metrics.model_ready(model, ready)
        self._refresh()

    def _refresh(self) -> None:
        if self.hub is not None:
            asyncio.get_running_loop().call_soon(self.hub.refresh)


class _FrontProcess:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.backoff_s = BACKOFF_INITIAL_S
        self.restarts = 0
        self.started_at = 0.0


class Supervisor:
    """One camserve server in the running event loop; `start()`, then `wait()`."""

    def __init__(self, repository: dict[str, ModelConfig], opts: ServerOptions) -> None:
        self.repository = repository
        self.opts = opts
        self.run_dir = Path(tempfile.mkdtemp(prefix="camserve-"))
        try:
            self.metrics_dir = self.run_dir / "metrics"
            self.metrics_dir.mkdir()
            max_batch = max(c.batching.max_batch_size for c in repository.values())
            self.metrics = Metrics(list(repository), max_batch_size=max_batch,
                                   front_ends_dir=self.metrics_dir)
            self.observer = _Observer(self.metrics)
            self.dispatcher = make_dispatcher(repository, opts, self.observer)
            on_gpu = any(slot.device != "cpu" for slot in self.dispatcher.slots)
            self.frontends = opts.frontends or default_frontends(on_gpu)
            self.board = Board.create(self.run_dir / "board", list(repository), self.frontends)
            # ModelStatistics' counters: a row per front end, the last one this process's.
            table = shared_table(self.run_dir / "statistics", self.frontends + 1, len(repository),
                                 create=True)
            self.metrics.statistics = InferenceStatistics(list(repository), table, row=self.frontends)
            slot_bytes = max(math.prod(c.input_shape) for c in repository.values())  # uint8 images
            self.arenas = [PixelArena.create(ARENA_SLOTS, slot_bytes) for _ in range(self.frontends)]
        except BaseException:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        self.observer.board = self.board
        self.hub = Hub(self.dispatcher, self.run_dir / "hub.sock", self.frontends, self.arenas,
                       on_result=self.metrics.record_result)
        self.observer.hub = self.hub
        self.grpc_port = 0
        self.metrics_port = 0
        self._guard: socket.socket | None = None
        self._metrics_http: MetricsHTTPServer | None = None
        self._fronts = [_FrontProcess(i) for i in range(self.frontends)]
        self._spec_path = self.run_dir / "frontend.spec"
        self._stopping = False
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task[int] | None = None
        self._hurry = False
        self.exit_code = 0

    # ------------------------------------------------------------------------ start

    async def start(self) -> None:
        """Reserve the ports and check TLS material first (a busy port or a bad certificate fails
        before any worker starts), then the workers, the hub and the front ends."""
        opts = self.opts
        self._guard = reserve_port(opts.host, opts.grpc_port)
        self.grpc_port = int(self._guard.getsockname()[1])
        server_credentials(opts.security)  # raises SecurityConfigError on unusable files
        if opts.metrics_port >= 0:
            self._metrics_http = MetricsHTTPServer(self.metrics.exposition_registry(),
                                                   max_connections=opts.metrics_max_connections,
                                                   timeout_s=opts.metrics_timeout_s)
            try:
                self.metrics_port = await self._metrics_http.start(opts.host, opts.metrics_port)
            except OSError as exc:
                raise OSError(f"cannot serve metrics on {opts.host}:{opts.metrics_port}: "
                              f"{exc.strerror or exc}") from None
            log.info("metrics on http://%s:%d/metrics", opts.host, self.metrics_port)
        await self.hub.start()
        await self.dispatcher.start()
        self._write_spec()
        for front in self._fronts:
            self._spawn(front)
        log.info("%d front-end process(es) on port %d", self.frontends, self.grpc_port)

    def _spawn(self, front: _FrontProcess) -> None:
        """Start front end ``front.index`` as `python -m camserve.front.frontend` (its own command
        line, so operators and tests tell front ends from workers)."""
        if self._stopping:
            return
        self.board.reset_frontend(front.index)
        env = {**os.environ, MULTIPROC_ENV: str(self.metrics_dir)}  # front ends record into files
        try:
            proc = subprocess.Popen([sys.executable, "-m", "camserve.front.frontend", str(self._spec_path),
                                     str(front.index)], stdin=subprocess.DEVNULL, env=env)
        except OSError as exc:  # out of memory or pids: like a crash, try again after the back-off
            log.error("front end %d could not start: %s", front.index, exc)
            asyncio.get_running_loop().call_later(front.backoff_s, self._spawn, front)
            front.backoff_s = min(BACKOFF_MAX_S, front.backoff_s * 2)
            return
        front.process = proc
        front.started_at = time.monotonic()
        loop = asyncio.get_running_loop()

        def watch() -> None:
            code = proc.wait()
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
                loop.call_soon_threadsafe(self._front_exited, front, proc, code)

        threading.Thread(target=watch, name=f"camserve-front-{front.index}-watch", daemon=True).start()
        log.info("front end %d started (pid %s)", front.index, proc.pid)

    def _write_spec(self) -> None:
        spec = {"repository": self.repository, "options": self.opts, "port": self.grpc_port,
                "hub": str(self.hub.path), "board": str(self.board.path), "frontends": self.frontends,
                "statistics": str(self.run_dir / "statistics"),
                "arenas": [(a.name, a.slots, a.slot_bytes) for a in self.arenas],
                "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel())}
        self._spec_path.write_bytes(pickle.dumps(spec))
        self._spec_path.chmod(0o600)

    def _front_exited(self, front: _FrontProcess, proc: subprocess.Popen[bytes], code: int) -> None:
        mark_process_dead(proc.pid, self.metrics_dir)
        self.board.reset_frontend(front.index)
        if self._stopping or front.process is not proc:
            return
        if time.monotonic() - front.started_at > 60.0:  # it had been healthy: back-off starts over
            front.backoff_s = BACKOFF_INITIAL_S
        delay = front.backoff_s
        front.backoff_s = min(BACKOFF_MAX_S, delay * 2)
        front.restarts += 1
        log.error("front end %d died (exit code %s); restarting in %.1f s", front.index, code, delay)
        asyncio.get_running_loop().call_later(delay, self._spawn, front)

    def frontend_pids(self) -> list[int]:
        return [f.process.pid for f in self._fronts if f.process is not None and f.process.poll() is None]

    # ------------------------------------------------------------------------ stop

    def request_shutdown(self, hurry: bool = False) -> None:
        """Begin the drain sequence (idempotent); `hurry` skips what is left of the pre-stop window."""
        if self._shutdown_task is None:
            self._hurry = hurry
            self._shutdown_task = asyncio.get_running_loop().create_task(self.shutdown())
        elif hurry:
            self.hub.drain(hurry=True)

    async def shutdown(self) -> int:
        """Front ends drain (NOT_SERVING, pre-stop, finish calls), then the scheduler and workers stop.

        Returns the exit status: 0, or ``EXIT_DRAIN_LOST`` when a front end that was running at the
        drain's start did not exit 0 (its drain window ended with accepted calls in progress, or it
        had to be killed). What the scheduler fails at its own stop has no caller left by then: every
        front end has exited, withdrawing its queued images.
        """
        self._stopping = True
        log.info("answered RPCs at drain start: %s", json.dumps(self.metrics.rpc_totals()))
        log.info("draining: health NOT_SERVING; %s", "pre-stop window skipped (SIGINT)" if self._hurry else
                 f"front ends that reported SERVING serve {self.opts.pre_stop_s:.1f} s more (pre-stop)")
        self.hub.drain(hurry=self._hurry)
        budget = self.opts.pre_stop_s + self.opts.drain_s + 10.0
        procs = [f.process for f in self._fronts if f.process is not None and f.process.poll() is None]
        codes = await asyncio.to_thread(_wait_all, procs, budget)
        failed = {p.pid: c for p, c in zip(procs, codes, strict=True) if c != 0}
        if failed:
            self.exit_code = EXIT_DRAIN_LOST
            log.error("the drain lost accepted calls: front end exit codes %s (pid: code); exiting %d",
                      failed, EXIT_DRAIN_LOST)
        await self.dispatcher.stop(self.opts.drain_s)
        await self.hub.stop()
        log.info("answered RPCs at stop: %s", json.dumps(self.metrics.rpc_totals()))
        self._close()
        log.info("stopped (exit code %d)", self.exit_code)
        self._stopped.set()
        return self.exit_code

    def _close(self) -> None:
        if self._metrics_http is not None:
            self._metrics_http.close()
            self._metrics_http = None
        if self._guard is not None:
            self._guard.close()
            self._guard = None
        with contextlib.suppress(Exception):
            self.board.close()
        for arena in self.arenas:
            arena.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    async def abort(self) -> None:
        """Undo a failed start: stop whatever was started, without the drain sequence."""
        self._stopping = True
        for f in self._fronts:
            if f.process is not None and f.process.poll() is None:
                f.process.kill()
        with contextlib.suppress(Exception):
            await self.dispatcher.stop(0)
        with contextlib.suppress(Exception):
            await self.hub.stop()
        self._close()

    async def wait(self) -> int:
        """Run until SIGTERM/SIGINT has been handled (installs the handlers); returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig, hurry in ((signal.SIGTERM, False), (signal.SIGINT, True)):
            with contextlib.suppress(NotImplementedError):  # not on Windows
                loop.add_signal_handler(sig, self._on_signal, sig, hurry)
        await self._stopped.wait()
        return self.exit_code

    def _on_signal(self, sig: signal.Signals, hurry: bool) -> None:
        again = self._shutdown_task is not None
        log.info("%s received%s", sig.name, " again: skipping the pre-stop window" if again else "")
        self.request_shutdown(hurry=hurry or again)


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> list[int]:
    """Wait for every process up to ``timeout_s`` in all, killing those left; their exit codes."""
    deadline = time.monotonic() + timeout_s
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            log.warning("front end pid %d did not exit in %.0f s; killing it", p.pid, timeout_s)
            p.kill()
            codes.append(p.wait(5))
    return codes


async def serve(repository: dict[str, ModelConfig], opts: ServerOptions) -> int:
    """Start the server, log where it listens, and run until a signal drains it."""
    server = Supervisor(repository, opts)
    try:
        await server.start()
    except BaseException:
        await server.abort()
        raise
    log.info("serving %s on %s:%d (health NOT_SERVING until every model is warm)",
             ", ".join(repository), opts.host, server.grpc_port)
    return await server.wait()

"""Server assembly: gRPC aio server + service + Dispatcher + health + reflection + metrics + signals.

Why a class with explicit phases (start, drain, stop): Kubernetes sends SIGTERM while it may still
route traffic to the pod for a few seconds, so the shutdown order matters. On SIGTERM the server
(1) reports NOT_SERVING on every health name at once, (2) keeps serving for the pre-stop window (only
if it ever reported SERVING: otherwise no balancer routes to it), (3) stops accepting new RPCs and
lets in-flight ones finish (`server.stop(grace)`), (4) stops the workers (one still loading at once),
and exits 0. Every wait is bounded by --pre-stop-seconds or --drain-seconds. Health follows the
Dispatcher: SERVING only while `dispatcher.ready()` (every bucket compiled on a live worker),
NOT_SERVING while no worker lives or during drain.
No TensorFlow is imported in this process; only worker processes load models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from camserve_proto import explain_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from camserve.front import codec
from camserve.front.interceptors import server_interceptors
from camserve.front.metrics import Metrics, start_metrics_server
from camserve.front.requests import RequestParser
from camserve.front.security import SecurityConfig, add_listening_port
from camserve.front.service import SERVICE_NAME, ExplainServicer
from camserve.repository import ModelConfig
from camserve.scheduling.pool import DEFAULT_BATCH_TIMEOUT_S, DEFAULT_STARTUP_TIMEOUT_S

log = logging.getLogger(__name__)

MiB = 1 << 20


@dataclass
class ServerOptions:
    """Everything `camserve serve` can set (the repository's batching overrides are applied before)."""

    host: str = "0.0.0.0"
    grpc_port: int = 50051
    metrics_port: int = 9464           # 0 = any free port; negative = no metrics endpoint
    workers: str = "auto"              # auto | cpu:N | gpu | gpu:0,1
    compile_mode: str = "auto"         # auto | xla | graph
    backend: str = "tensorflow"        # tensorflow | jax
    pre_stop_s: float = 5.0            # keep serving this long after SIGTERM (NOT_SERVING already)
    drain_s: float = 30.0              # then wait this long for in-flight RPCs
    max_message_bytes: int = 16 * MiB  # receive and send limit of one gRPC message
    max_connection_age_s: float = 0.0  # 0 = connections live forever
    max_image_pixels: int = codec.DEFAULT_MAX_PIXELS
    max_concurrent_rpcs: int = 0       # 0 = unlimited; beyond it gRPC answers RESOURCE_EXHAUSTED
    max_inflight: int = 0              # images in Explain/ExplainBatch calls at once; 0 = unlimited
    batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S      # per-batch watchdog: a worker holding a
                                                          # batch longer is killed
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S  # a worker not ready this long is killed
    codec_threads: int = 4
    health_poll_s: float = 0.1
    security: SecurityConfig = field(default_factory=SecurityConfig)


def grpc_options(opts: ServerOptions) -> list[tuple[str, Any]]:
    """Channel arguments of the server: explicit message limits, no silent port sharing."""
    out: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", int(opts.max_message_bytes)),
        ("grpc.max_send_message_length", int(opts.max_message_bytes)),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
    ]
    if opts.max_connection_age_s > 0:
        out += [("grpc.max_connection_age_ms", int(opts.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(max(opts.drain_s, 1.0) * 1000))]
    return out


class ConfigError(ValueError):
    """A setting the operator chose cannot work on this machine (e.g. --workers gpu without a GPU)."""


def make_dispatcher(repository: dict[str, ModelConfig], opts: ServerOptions, observer: Any) -> Any:
    """The real Dispatcher (batcher + worker pool); ConfigError with its message on bad settings."""
    from camserve.scheduling.dispatcher import Dispatcher
    from camserve.scheduling.placement import WorkerPlan

    try:
        return Dispatcher(repository, WorkerPlan.parse(opts.workers), compile_mode=opts.compile_mode,
                          backend=opts.backend, observer=observer, batch_timeout_s=opts.batch_timeout_s,
                          startup_timeout_s=opts.startup_timeout_s)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class CamServer:
    """One camserve server in the running event loop; `start()`, then `wait()`, or `shutdown()`."""

    def __init__(self, repository: dict[str, ModelConfig], opts: ServerOptions,
                 dispatcher: Any | None = None) -> None:
        self.repository = repository
        self.opts = opts
        max_batch = max(c.batching.max_batch_size for c in repository.values())
        self.metrics = Metrics(list(repository), max_batch_size=max_batch)
        if dispatcher is None:
            dispatcher = make_dispatcher(repository, opts, self.metrics)
        self.dispatcher = dispatcher
        self.executor = ThreadPoolExecutor(max_workers=max(1, opts.codec_threads),
                                           thread_name_prefix="camserve-codec")
        self.health = health.aio.HealthServicer()
        self.health_names = ["", SERVICE_NAME, *repository]
        self.grpc_port = 0
        self.metrics_port = 0
        self.draining = False
        self.served = False  # health reported SERVING at least once (else SIGTERM skips the pre-stop window)
        self._server: grpc.aio.Server | None = None
        self._metrics_http: Any = None
        self._health_task: asyncio.Task[None] | None = None
        self._health_wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task[int] | None = None
        self._hurry = asyncio.Event()

    def _count_rejected(self, method: str, code: str) -> None:
        """Count a call the interceptors refused before the servicer (bad token, unparsable body)."""
        self.metrics.record_rpc(None, method.rsplit("/", 1)[-1], code, None)

    # ------------------------------------------------------------------------ start

    async def start(self) -> None:
        """Bind the ports first (a busy port fails before any worker starts), then start the workers
        (returns before they are ready: health says NOT_SERVING until they are) and the gRPC server."""
        opts = self.opts
        loop = asyncio.get_running_loop()
        self.metrics.on_change = lambda: loop.call_soon_threadsafe(self._health_wake.set)
        for name in self.health_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        server = grpc.aio.server(
            interceptors=server_interceptors(opts.security, on_reject=self._count_rejected),
            options=grpc_options(opts),
            maximum_concurrent_rpcs=opts.max_concurrent_rpcs or None,
        )
        parser = RequestParser(self.repository, self.dispatcher.model_summary)
        self.servicer = ExplainServicer(self.dispatcher, parser, self.metrics, self.executor,
                                        max_image_pixels=opts.max_image_pixels,
                                        max_send_bytes=opts.max_message_bytes, backend=opts.backend,
                                        max_inflight=opts.max_inflight)
        pb_grpc.add_ExplainServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        host = f"[{opts.host}]" if ":" in opts.host and not opts.host.startswith("[") else opts.host
        self.grpc_port = add_listening_port(server, f"{host}:{opts.grpc_port}", opts.security)
        self._server = server
        if opts.metrics_port >= 0:
            try:
                self._metrics_http = start_metrics_server(self.metrics, opts.metrics_port, opts.host)
            except OSError as exc:
                raise OSError(f"cannot serve metrics on {opts.host}:{opts.metrics_port}: "
                              f"{exc.strerror or exc}") from None
            self.metrics_port = int(self._metrics_http.server_port)
            log.info("metrics on http://%s:%d/metrics", opts.host, self.metrics_port)
        await self.dispatcher.start()
        await server.start()
        self._health_task = asyncio.create_task(self._health_loop(), name="camserve-health")

    async def _health_loop(self) -> None:
        """Mirror dispatcher readiness into grpc.health.v1 (poll, and at once on observer events)."""
        last: dict[str, int] = {}
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        while not self.draining:
            status: dict[str, int] = {}
            for model in self.repository:
                status[model] = serving if self.dispatcher.ready(model) else not_serving
            overall = serving if self.dispatcher.ready() else not_serving
            status[""] = status[SERVICE_NAME] = overall
            for name, value in status.items():
                if last.get(name) != value and not self.draining:
                    await self.health.set(name, value)
                    if name == "":
                        self.served = self.served or value == serving
                        log.info("health: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(value))
            last = status
            self._health_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._health_wake.wait(), self.opts.health_poll_s)

    # ------------------------------------------------------------------------ stop

    def request_shutdown(self, hurry: bool = False) -> None:
        """Begin the drain sequence (idempotent); `hurry` skips what is left of the pre-stop window."""
        if hurry:
            self._hurry.set()
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self.shutdown())

    async def shutdown(self) -> int:
        """NOT_SERVING, pre-stop window, stop accepting + finish in-flight, stop workers. Returns 0."""
        self.draining = True
        self._health_wake.set()
        await self.health.enter_graceful_shutdown()
        log.info("answered RPCs at drain start: %s", json.dumps(self.metrics.rpc_totals()))
        if not self.served:  # never in a load balancer's rotation: nobody to wait for
            log.info("draining: health NOT_SERVING; never reported SERVING, so no pre-stop window")
        elif self.opts.pre_stop_s > 0:
            log.info("draining: health NOT_SERVING; serving for %.1f s more (pre-stop)", self.opts.pre_stop_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), self.opts.pre_stop_s)
        if self._server is not None:
            log.info("draining: refusing new RPCs; waiting up to %.1f s for in-flight ones",
                     self.opts.drain_s)
            await self._server.stop(self.opts.drain_s)
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self.dispatcher.stop(self.opts.drain_s)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("answered RPCs at stop: %s", json.dumps(self.metrics.rpc_totals()))
        log.info("stopped")
        self._stopped.set()
        return 0

    async def abort(self) -> None:
        """Undo a failed start: stop whatever was started, without the drain sequence."""
        if self._server is not None:
            await self._server.stop(0)
        with contextlib.suppress(Exception):
            await self.dispatcher.stop(0)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def wait(self) -> int:
        """Run until SIGTERM/SIGINT has been handled (installs the handlers); returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig, hurry in ((signal.SIGTERM, False), (signal.SIGINT, True)):
            with contextlib.suppress(NotImplementedError):  # not on Windows
                loop.add_signal_handler(sig, self._on_signal, sig, hurry)
        await self._stopped.wait()
        return 0

    def _on_signal(self, sig: signal.Signals, hurry: bool) -> None:
        again = self._shutdown_task is not None
        log.info("%s received%s", sig.name, " again: skipping the pre-stop window" if again else "")
        self.request_shutdown(hurry=hurry or again)


async def serve(repository: dict[str, ModelConfig], opts: ServerOptions) -> int:
    """Start the server, log where it listens, and run until a signal drains it."""
    server = CamServer(repository, opts)
    try:
        await server.start()
    except BaseException:
        await server.abort()
        raise
    log.info("serving %s on %s:%d (health NOT_SERVING until every model is warm)",
             ", ".join(repository), opts.host, server.grpc_port)
    return await server.wait()

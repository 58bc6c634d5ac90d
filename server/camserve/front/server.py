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
from camserve_proto import grpc_service_pb2_grpc as oip_grpc
from camserve_proto import oip as oip_wire
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from camserve.front import codec
from camserve.front.calls import CallRunner
from camserve.front.interceptors import server_interceptors
from camserve.front.limits import LimitsInterceptor
from camserve.front.metrics import Metrics
from camserve.front.metrics_http import MetricsHTTPServer
from camserve.front.oip import InferenceServicer
from camserve.front.requests import RequestParser
from camserve.front.security import SecurityConfig, add_listening_port
from camserve.front.service import SERVICE_NAME, ExplainServicer
from camserve.repository import ModelConfig
from camserve.scheduling.pool import DEFAULT_BATCH_TIMEOUT_S, DEFAULT_STARTUP_TIMEOUT_S

log = logging.getLogger(__name__)

KiB = 1 << 10
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
    max_header_bytes: int = 64 * KiB   # request metadata (keys + values + 32 per entry, as HTTP/2 counts)
    max_connection_age_s: float = 0.0  # 0 = connections live forever
    max_connection_age_grace_s: float = 0.0  # after that, calls in flight may run this long; 0 = to their end
    keepalive_time_s: float = 30.0     # ping a connection quiet this long (keeps NAT/LB state of long calls)
    keepalive_timeout_s: float = 20.0  # close a connection whose ping is not answered this long
    min_ping_interval_s: float = 5.0   # clients may ping this often, with or without calls
    handshake_timeout_s: float = 10.0  # close a connection that has not completed HTTP/2 (and TLS) setup
    metrics_max_connections: int = 16  # open /metrics connections; the oldest unfinished one gives way
    metrics_timeout_s: float = 10.0    # a /metrics request not fully received this long is closed
    max_image_pixels: int = codec.DEFAULT_MAX_PIXELS
    max_concurrent_rpcs: int = 0       # 0 = unlimited; beyond it RPCs are refused RESOURCE_EXHAUSTED
    max_inflight: int = 0              # images in Explain/ExplainBatch/ModelInfer calls at once; 0 = none
    batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S      # per-batch watchdog: a worker holding a
                                                          # batch longer is killed
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S  # a worker not ready this long is killed
    codec_threads: int = 4
    health_poll_s: float = 0.1
    security: SecurityConfig = field(default_factory=SecurityConfig)


#: gRPC's own header and message limits sit this far above camserve's, so that camserve, not the
#: transport, refuses what is over (with a message, a count, a log line and no-retry pushback); the
#: transport's copy only bounds memory against what is far over.
TRANSPORT_BACKSTOP = 2


def grpc_options(opts: ServerOptions) -> list[tuple[str, Any]]:
    """Channel arguments of the server: every limit a caller can trip, chosen here, not by gRPC's defaults.

    gRPC ignores an argument it does not know (a misspelt name changes nothing), so each of these is
    checked by its effect in tests/transport. gRPC's defaults and why each is replaced:

    * keepalive: gRPC's server pings only after 2 h of silence and, without calls, punishes a client's
      ping more often than every 2 h (every 5 min with calls) with GOAWAY "too_many_pings" after 2
      strikes, which ends a long queued call. camserve pings quiet connections itself every
      ``keepalive_time_s`` and accepts client pings every ``min_ping_interval_s``, with or without calls.
      How long a ping may go unanswered is ``grpc.http2.ping_timeout_ms`` in gRPC 1.85 (1 min by
      default; ``grpc.keepalive_timeout_ms`` alone changes nothing): both get ``keepalive_timeout_s``.
    * header size: gRPC refuses metadata between its soft (8 KiB) and hard (16 KiB) limit at random.
      Both are set to one value, a backstop above ``max_header_bytes``, which camserve enforces itself
      (camserve.front.limits).
    * message size: received messages likewise (backstop above ``max_message_bytes``); sent ones at it.
    * connection age: GOAWAY after ``max_connection_age_s``; the grace after it is unlimited unless set,
      so an aged connection never cuts a call that is still running.
    * handshake: 120 s by default; a connection that never speaks HTTP/2 holds a descriptor until then.
    """
    ms = lambda seconds: int(seconds * 1000)  # noqa: E731
    header_backstop = int(opts.max_header_bytes) * TRANSPORT_BACKSTOP
    out: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", int(opts.max_message_bytes) * TRANSPORT_BACKSTOP),
        ("grpc.max_send_message_length", int(opts.max_message_bytes)),
        ("grpc.max_metadata_size", header_backstop),
        ("grpc.absolute_max_metadata_size", header_backstop),
        ("grpc.keepalive_time_ms", ms(opts.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(opts.keepalive_timeout_s)),
        ("grpc.http2.ping_timeout_ms", ms(opts.keepalive_timeout_s)),  # what gRPC 1.85 waits for an ack
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),  # our keepalive pings continue through a quiet call
        ("grpc.http2.min_ping_interval_without_data_ms", ms(opts.min_ping_interval_s)),
        ("grpc.server_handshake_timeout_ms", ms(opts.handshake_timeout_s)),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
    ]
    if opts.max_connection_age_s > 0:
        out.append(("grpc.max_connection_age_ms", ms(opts.max_connection_age_s)))
        if opts.max_connection_age_grace_s > 0:
            out.append(("grpc.max_connection_age_grace_ms", ms(opts.max_connection_age_grace_s)))
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
        self.health_names = ["", SERVICE_NAME, oip_wire.SERVICE_NAME, *repository]
        self.grpc_port = 0
        self.metrics_port = 0
        self.draining = False
        self.served = False  # health reported SERVING at least once (else SIGTERM skips the pre-stop window)
        self._server: grpc.aio.Server | None = None
        self._metrics_http: MetricsHTTPServer | None = None
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
        limits = LimitsInterceptor(max_header_bytes=opts.max_header_bytes,
                                   max_message_bytes=opts.max_message_bytes,
                                   max_concurrent_rpcs=opts.max_concurrent_rpcs,
                                   on_refuse=self.metrics.record_refusal)
        server = grpc.aio.server(
            interceptors=[limits, *server_interceptors(opts.security, on_reject=self._count_rejected)],
            options=grpc_options(opts),
        )
        parser = RequestParser(self.repository, self.dispatcher.model_summary)
        calls = CallRunner(self.metrics, max_inflight=opts.max_inflight)  # one in-flight limit for both
        self.servicer = ExplainServicer(self.dispatcher, parser, self.metrics, self.executor,
                                        max_image_pixels=opts.max_image_pixels,
                                        max_send_bytes=opts.max_message_bytes, backend=opts.backend,
                                        calls=calls)
        self.inference = InferenceServicer(self.dispatcher, parser, self.metrics, self.executor,
                                           max_image_pixels=opts.max_image_pixels,
                                           max_send_bytes=opts.max_message_bytes, calls=calls,
                                           draining=lambda: self.draining)
        pb_grpc.add_ExplainServiceServicer_to_server(self.servicer, server)
        oip_grpc.add_GRPCInferenceServiceServicer_to_server(self.inference, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (SERVICE_NAME, oip_wire.SERVICE_NAME,
                 health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        host = f"[{opts.host}]" if ":" in opts.host and not opts.host.startswith("[") else opts.host
        self.grpc_port = add_listening_port(server, f"{host}:{opts.grpc_port}", opts.security)
        self._server = server
        if opts.metrics_port >= 0:
            self._metrics_http = MetricsHTTPServer(self.metrics.registry,
                                                   max_connections=opts.metrics_max_connections,
                                                   timeout_s=opts.metrics_timeout_s)
            try:
                self.metrics_port = await self._metrics_http.start(opts.host, opts.metrics_port)
            except OSError as exc:
                raise OSError(f"cannot serve metrics on {opts.host}:{opts.metrics_port}: "
                              f"{exc.strerror or exc}") from None
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
            status[""] = status[SERVICE_NAME] = status[oip_wire.SERVICE_NAME] = overall
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
            await self._metrics_http.close()
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
            await self._metrics_http.close()
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

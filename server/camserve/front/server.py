"""What every front-end process serves: the options, the gRPC server and the services on it.

`ServerOptions` is everything `camserve serve` can set. `build_grpc_server` is the one place where
the services of a front-end process are put on its gRPC server (camserve.v1, the Open Inference
Protocol, grpc.health.v1, reflection), with the interceptors (transport limits, token check,
malformed bodies) and the channel options; every front-end process calls it, so TLS, tokens and
limits apply in each. The processes themselves are `camserve.front.supervisor` (the `camserve
serve` process: scheduler, workers, metrics endpoint, signals) and `camserve.front.frontend` (one
per ``--frontends``). No TensorFlow is imported in either; only worker processes load models.

`grpc_options` is the transport policy: every limit a caller or a connection can trip is chosen
there, not inherited from gRPC's defaults (see its docstring and tests/transport).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import grpc
from camserve_proto import explain_pb2_grpc as pb_grpc
from camserve_proto import grpc_service_pb2_grpc as oip_grpc
from camserve_proto import oip as oip_wire
from grpc_health.v1 import health_pb2, health_pb2_grpc

from camserve.front import codec
from camserve.front.calls import CallRunner
from camserve.front.health import StreamsEnd
from camserve.front.interceptors import server_interceptors
from camserve.front.limits import LimitsInterceptor
from camserve.front.metrics import Metrics
from camserve.front.oip import InferenceServicer, UnservedMethods
from camserve.front.reflection import add_reflection
from camserve.front.requests import RequestParser
from camserve.front.security import SecurityConfig
from camserve.front.service import SERVICE_NAME, ExplainServicer
from camserve.repository import ModelConfig
from camserve.scheduling.pool import DEFAULT_BATCH_TIMEOUT_S, DEFAULT_STARTUP_TIMEOUT_S

log = logging.getLogger(__name__)

KiB = 1 << 10
MiB = 1 << 20
#: `camserve serve`'s exit status when the drain lost accepted calls: RPCs still in progress when the
#: drain window (``--drain-seconds``) ended were cancelled, or a front end had to be killed (0: nothing
#: lost; 2: could not start).
EXIT_DRAIN_LOST = 3


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
    max_concurrent_rpcs: int = 0       # 0 = unlimited; beyond it a front end refuses RESOURCE_EXHAUSTED
    max_inflight: int = 0              # images in calls of either protocol at once, server-wide; 0 = none
    batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S      # per-batch watchdog: a worker holding a
                                                          # batch longer is killed
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S  # a worker not ready this long is killed
    codec_threads: int = 4
    frontends: int = 0                 # front-end processes sharing the gRPC port; 0 = auto
    runner: str | None = None          # "module:attr" stand-in for the worker's compute (benchmarks)
    security: SecurityConfig = field(default_factory=SecurityConfig)


#: gRPC's own header and message limits sit this far above camserve's, so that camserve, not the
#: transport, refuses what is over (with a message, a count, a log line and no-retry pushback); the
#: transport's copy only bounds memory against what is far over.
TRANSPORT_BACKSTOP = 2


def grpc_options(opts: ServerOptions) -> list[tuple[str, Any]]:
    """Channel arguments of a front end's server: every limit a caller can trip, chosen here, not by
    gRPC's defaults.

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

    The port is shared (SO_REUSEPORT) by the server's own front ends only: the supervisor holds it
    bound first (see `camserve.front.supervisor.reserve_port`), so another server on the same port
    still fails.
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
        ("grpc.so_reuseport", 1),
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
                          startup_timeout_s=opts.startup_timeout_s, runner=opts.runner)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def usable_cores(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a Kubernetes CPU
    limit) when one is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open(cpu_max) as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def default_frontends(workers_on_gpu: bool, cores: int | None = None) -> int:
    """``--frontends`` auto: one per two usable cores (at most 8) when workers run on GPUs, where the
    front end sets the pace; one with CPU workers, whose compute needs the cores."""
    if not workers_on_gpu:
        return 1
    return max(1, min(8, (usable_cores() if cores is None else cores) // 2))


#: The services every front end serves besides health and reflection (their names for health and
#: reflection): camserve.v1 and the Open Inference Protocol.
SERVICE_NAMES: tuple[str, ...] = (SERVICE_NAME, oip_wire.SERVICE_NAME)


def build_grpc_server(repository: dict[str, ModelConfig], opts: ServerOptions, dispatcher: Any,
                      metrics: Metrics, executor: Executor, health_servicer: Any,
                      on_reject: Callable[[str, str], None],
                      draining: Callable[[], bool] = lambda: False,
                      calls: CallRunner | None = None, streams: StreamsEnd | None = None) -> grpc.aio.Server:
    """A front end's aio server with every service on it (not bound, not started).

    ``health_servicer`` is a :class:`camserve.front.health.HealthServicer` (or grpcio-health-checking's);
    the reflection streams end when ``streams`` ends, as a draining front end ends them together with
    its health Watch streams.

    Both protocols share one :class:`CallRunner` (``calls``, or a new one), so ``--max-inflight``
    counts their images together (server-wide through the dispatcher's board) and the front end's
    drain sees every call in progress. ``draining()`` tells the Open Inference Protocol's
    ServerReady/ModelReady that the server is shutting down.
    """
    limits = LimitsInterceptor(max_header_bytes=opts.max_header_bytes,
                               max_message_bytes=opts.max_message_bytes,
                               max_concurrent_rpcs=opts.max_concurrent_rpcs, on_refuse=metrics.record_refusal)
    server = grpc.aio.server(
        interceptors=[limits, *server_interceptors(opts.security, on_reject=on_reject)],
        options=grpc_options(opts),
    )
    parser = RequestParser(repository, dispatcher.model_summary)
    if calls is None:
        calls = CallRunner(metrics, max_inflight=opts.max_inflight, admission=dispatcher)
    limits = {"max_image_pixels": opts.max_image_pixels, "max_send_bytes": opts.max_message_bytes}
    pb_grpc.add_ExplainServiceServicer_to_server(
        ExplainServicer(dispatcher, parser, metrics, executor, backend=opts.backend, calls=calls, **limits),
        server)
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(dispatcher, parser, metrics, executor, calls=calls, draining=draining, **limits),
        server)
    server.add_generic_rpc_handlers((UnservedMethods(on_reject),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_reflection(server, (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name),
                   streams)
    return server


def listen_address(opts: ServerOptions, port: int) -> str:
    """``host:port`` as grpc wants it (IPv6 literals bracketed)."""
    host = f"[{opts.host}]" if ":" in opts.host and not opts.host.startswith("[") else opts.host
    return f"{host}:{port}"

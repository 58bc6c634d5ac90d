"""`camserve serve`: serve a model repository over gRPC (metrics over HTTP).

Every flag has a CAMSERVE_* environment variable (the flag wins), so the same image runs from a
Kubernetes manifest or a shell; every default is :class:`~camserve.front.server.ServerOptions`'s. The
effective configuration (each option, each model's batching) is logged at start-up, Triton-style, so
an operator can see what the server actually runs with. Errors an operator can cause (a bad
repository, a busy port, unreadable certificates) end with one clear line and exit status 2, never a
traceback. After SIGTERM the exit status is 0 when the drain answered every accepted call, 3
(``EXIT_DRAIN_LOST``) when calls were still in progress at the end of ``--drain-seconds``.

Run as `camserve serve ...` or `python -m camserve.front.cli serve ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from camserve.front.security import SecurityConfigError, security_config_from_args
from camserve.front.server import EXIT_DRAIN_LOST, KiB, MiB, ServerOptions
from camserve.repository import ModelConfig
from camserve.vocabulary import BACKENDS, COMPILE_MODES

log = logging.getLogger("camserve")

ENV_PREFIX = "CAMSERVE_"
D = ServerOptions()  # every default below comes from here


def _number(cast: Callable[[str], Any], low: float, high: float = math.inf, *, above: bool = False,
            what: str = "a number") -> Callable[[str], Any]:
    """An argparse type: ``cast(text)`` within [low, high] (or > low with ``above``), finite."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or value > high or value < low or (above and value == low):
            if high != math.inf:
                raise argparse.ArgumentTypeError(f"{text!r} is outside {low:g}..{high:g}")
            raise argparse.ArgumentTypeError(f"{text!r} must be {'>' if above else '>='} {low:g}")
        return value

    return parse


_seconds = _number(float, 0, above=True, what="a number of seconds")
_nonneg_float = _number(float, 0)
_positive_float = _number(float, 0, above=True)
_positive_int = _number(int, 1, what="an integer")
_nonneg_int = _number(int, 0, what="an integer")
_port = _number(int, 0, 65535, what="a port number")


def _workers(text: str) -> str:
    from camserve.scheduling.placement import WorkerPlan  # no TensorFlow: only parses and discovers

    try:
        return str(WorkerPlan.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _flag(group: Any, flag: str, help: str, default: Any = None, **kwargs: Any) -> None:
    """Add ``flag`` whose default is the CAMSERVE_<FLAG> environment variable when set, else ``default``."""
    env = ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")
    value = os.environ.get(env)
    group.add_argument(flag, default=default if value in (None, "") else value, help=f"{help} [env {env}]",
                       **kwargs)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except None: those flags' help says what unset means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The `camserve serve` argument parser (every default from a CAMSERVE_* variable when set)."""
    p = argparse.ArgumentParser(
        prog="camserve serve",
        description="Serve CAM / Grad-CAM heatmaps for the models of a repository over gRPC "
                    "(camserve.v1.ExplainService and, on the same port, the Open Inference Protocol "
                    "inference.GRPCInferenceService for Triton/KServe clients; grpc.health.v1, "
                    "reflection), with Prometheus metrics.",
        epilog="Every flag also reads the environment variable shown in brackets; the flag wins. "
               f"exit status: 0 stopped by a signal with every accepted call answered; 2 a start-up error "
               f"(bad flag, repository, certificate, busy port); {EXIT_DRAIN_LOST} calls were still in "
               "progress at the end of --drain-seconds.",
        formatter_class=_HelpFormatter,
    )
    g = p.add_argument_group("models")
    _flag(g, "--model-repository", "folder with one sub-folder per model (config.json + model.keras + "
          "labels.txt); unset = the bundled demo model", metavar="DIR")
    _flag(g, "--workers", "worker processes: auto (one per visible GPU, else one CPU worker using every "
          "core), cpu:N (N CPU workers), gpu (every visible GPU), gpu:0,1 (these GPUs)", D.workers,
          type=_workers)
    _flag(g, "--compile", "compiled step: xla (jit_compile), graph (tf.function), or auto (graph on CPU, "
          "xla on GPU)", D.compile_mode, dest="compile_mode", choices=COMPILE_MODES)
    _flag(g, "--backend", "Keras backend of the workers; with jax the only compiled mode is xla (jax.jit), "
          "so --compile graph is refused", D.backend, choices=BACKENDS)
    _flag(g, "--batch-timeout-s", "per-batch watchdog: a worker that computes one batch longer than this is "
          "considered hung, killed (its callers get UNAVAILABLE) and restarted", D.batch_timeout_s,
          type=_seconds)
    _flag(g, "--startup-timeout-s", "a worker not ready (models loaded, every bucket compiled) this long "
          "after it started is killed and restarted", D.startup_timeout_s, type=_seconds)
    b = p.add_argument_group("batching (override every model's config.json)")
    _flag(b, "--max-batch-size", "most images per batch, also the largest compiled bucket (unset: each "
          "model's config.json)", type=_positive_int)
    _flag(b, "--max-queue-delay-ms", "longest wait after the oldest queued image for a batch to fill "
          "(unset: each model's config.json)", type=_nonneg_float)
    _flag(b, "--max-queue-size", "queued images per model beyond which requests are refused at once with "
          "RESOURCE_EXHAUSTED (unset: each model's config.json)", type=_positive_int)
    n = p.add_argument_group("network")
    _flag(n, "--host", "address to listen on (gRPC and metrics)", D.host)
    _flag(n, "--grpc-port", "gRPC port (0 = any free port, logged)", D.grpc_port, type=_port)
    _flag(n, "--metrics-port", "Prometheus /metrics HTTP port (0 = any free port, -1 = off)", D.metrics_port,
          type=_number(int, -1, 65535, what="a port number"))
    _flag(n, "--metrics-max-connections", "open /metrics connections at once; a new one beyond this closes "
          "the oldest whose request has not fully arrived", D.metrics_max_connections, type=_positive_int)
    _flag(n, "--metrics-timeout-s", "a /metrics connection whose request has not fully arrived this long "
          "after it opened is closed", D.metrics_timeout_s, type=_seconds)
    _flag(n, "--frontends", "front-end processes sharing the gRPC port (each terminates gRPC, validates "
          "and decodes; batches still fill across all of them; the kernel gives each client connection to "
          "one of them, so one connection uses one). 0 = auto: one per two cores, at most 8, "
          "when workers run on GPUs (the front end sets the pace there; cores = CPU affinity capped by a "
          "cgroup CPU limit); 1 with CPU workers",
          D.frontends, type=_nonneg_int)
    _flag(n, "--codec-threads", "threads per front end decoding large images (over 512x512) and encoding "
          "resized or drawn heatmaps off the event loop", D.codec_threads, type=_positive_int)
    t = p.add_argument_group(
        "transport limits (what one call or connection may do; refusals are counted in "
        "camserve_transport_refusals_total and logged at most every 10 s)")
    _flag(t, "--max-message-mb", "largest gRPC message received or sent, in MiB; a larger request is refused "
          "RESOURCE_EXHAUSTED and never retried by gRPC retry policies", D.max_message_bytes / MiB,
          type=_positive_float)
    _flag(t, "--max-header-kb", "largest request metadata in KiB (every key and value plus 32 bytes per "
          "entry, as HTTP/2 counts it; bearer tokens included): always accepted at or below, always refused "
          "above, RESOURCE_EXHAUSTED and never retried", D.max_header_bytes / KiB, type=_positive_float)
    _flag(t, "--keepalive-time-s", "ping a client connection that has been quiet this long, so NAT and load "
          "balancer state of a long queued call survives and dead clients are found", D.keepalive_time_s,
          type=_seconds)
    _flag(t, "--keepalive-timeout-s", "close a connection whose ping is not answered within this",
          D.keepalive_timeout_s, type=_seconds)
    _flag(t, "--min-ping-interval-s", "clients may send keepalive pings this often, with or without calls in "
          "flight; a client pinging more often gets GOAWAY too_many_pings after 2 such pings",
          D.min_ping_interval_s, type=_nonneg_float)
    _flag(t, "--max-connection-age-s", "close client connections (GOAWAY) after this many seconds so clients "
          "re-resolve and spread onto new pods (0 = never)", D.max_connection_age_s, type=_nonneg_float)
    _flag(t, "--max-connection-age-grace-s", "calls still running on a connection closed for its age may "
          "finish for this long before it is cut (0 = as long as they run)", D.max_connection_age_grace_s,
          type=_nonneg_float)
    _flag(t, "--handshake-timeout-s", "close a new connection that has not completed its TLS and HTTP/2 "
          "setup within this", D.handshake_timeout_s, type=_seconds)
    _flag(t, "--max-concurrent-rpcs", "RPCs handled at once by each front end (health and reflection "
          "included), beyond which a call is refused RESOURCE_EXHAUSTED (0 = no limit; the per-model queue "
          "bound and --max-inflight apply server-wide either way)", D.max_concurrent_rpcs, type=_nonneg_int)
    _flag(t, "--max-inflight", "images being handled at once in calls of either protocol, over all front "
          "ends (Explain counts 1, ExplainBatch its number of images, ModelInfer its rows); beyond it a call "
          "is refused at once with RESOURCE_EXHAUSTED, once it is checked (a malformed call gets its own "
          "status whatever the load). Health, metadata and reflection are never limited, "
          "unlike --max-concurrent-rpcs (0 = no limit)", D.max_inflight, type=_nonneg_int)
    _flag(t, "--max-image-pixels", "largest decoded image (width x height) accepted; checked from the header "
          "before decoding, against decompression bombs", D.max_image_pixels, type=_positive_int)
    s = p.add_argument_group("shutdown (SIGTERM: NOT_SERVING, pre-stop window, drain; exit 0, or "
                             f"{EXIT_DRAIN_LOST} when the drain lost accepted calls)")
    _flag(s, "--pre-stop-seconds", "after SIGTERM keep serving this long while health says NOT_SERVING, so "
          "load balancers stop routing first (SIGINT skips it)", D.pre_stop_s, type=_nonneg_float)
    _flag(s, "--drain-seconds", "then wait at most this long for in-flight RPCs before stopping the workers; "
          f"RPCs still in progress then are cancelled and the server exits {EXIT_DRAIN_LOST}", D.drain_s,
          type=_nonneg_float)
    # The benchmark's stand-in for the model step (bench/frontend); never documented for users.
    p.add_argument("--runner", default=None, help=argparse.SUPPRESS)
    _flag(p, "--log-level", "log verbosity", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
          type=str.upper)
    add_security_arguments(p)
    return p


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """--tls-cert, --tls-key, --tls-client-ca and --auth-token-file (read by security_config_from_args)."""
    g = parser.add_argument_group("security", "TLS, mutual TLS and bearer-token auth for the gRPC port "
                                  "(all off by default)")
    _flag(g, "--tls-cert", "server certificate chain (PEM); with --tls-key serves the gRPC port over TLS "
          "(unset: plaintext)", metavar="PEM")
    _flag(g, "--tls-key", "server private key (PEM) for --tls-cert", metavar="PEM")
    _flag(g, "--tls-client-ca", "mutual TLS: require every client to present a certificate signed by this "
          "CA bundle (PEM); needs --tls-cert/--tls-key (unset: no client certificate asked for)",
          metavar="PEM")
    _flag(g, "--auth-token-file", "require 'authorization: Bearer <token>' metadata on every RPC except "
          "health and reflection; FILE holds the accepted tokens, one per line ('#' comments and blank "
          "lines ignored) (unset: no token needed)", metavar="FILE")


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    """ServerOptions from parsed flags (raises SecurityConfigError for unusable TLS/token files)."""
    return ServerOptions(
        host=args.host, grpc_port=args.grpc_port, metrics_port=args.metrics_port, workers=args.workers,
        compile_mode=args.compile_mode, backend=args.backend, pre_stop_s=args.pre_stop_seconds,
        drain_s=args.drain_seconds, max_message_bytes=int(args.max_message_mb * MiB),
        max_header_bytes=int(args.max_header_kb * KiB), max_connection_age_s=args.max_connection_age_s,
        max_connection_age_grace_s=args.max_connection_age_grace_s, keepalive_time_s=args.keepalive_time_s,
        keepalive_timeout_s=args.keepalive_timeout_s, min_ping_interval_s=args.min_ping_interval_s,
        handshake_timeout_s=args.handshake_timeout_s, metrics_max_connections=args.metrics_max_connections,
        metrics_timeout_s=args.metrics_timeout_s, max_image_pixels=args.max_image_pixels,
        max_concurrent_rpcs=args.max_concurrent_rpcs, codec_threads=args.codec_threads,
        max_inflight=args.max_inflight, frontends=args.frontends, runner=args.runner,
        batch_timeout_s=args.batch_timeout_s,
        startup_timeout_s=args.startup_timeout_s, security=security_config_from_args(args))

def config_lines(opts: ServerOptions, repository_path: str | None,
                 repository: dict[str, ModelConfig]) -> list[str]:
    """The effective configuration, one `key value` per line (no secrets: security is described)."""
    lines = ["effective configuration:", f"  {'model_repository':<22} {repository_path or '(bundled demo)'}"]
    for f in dataclasses.fields(opts):
        value = getattr(opts, f.name)
        if f.name == "runner" and value is None:  # the benchmarks' hidden stand-in: shown only when used
            continue
        lines.append(f"  {f.name:<22} {value.describe() if f.name == 'security' else value}")
    for name, cfg in repository.items():
        b = cfg.batching
        lines.append(f"  model {name!r} v{cfg.version}: input {list(cfg.input_shape)} preprocessing "
                     f"{cfg.preprocessing} target {cfg.target_layer or '(auto)'} | max_batch_size "
                     f"{b.max_batch_size} max_queue_delay_ms {b.max_queue_delay_ms} max_queue_size "
                     f"{b.max_queue_size}")
    return lines


def parse_args(argv: list[str]) -> argparse.Namespace:
    """`camserve serve`'s arguments (after 'serve') and CAMSERVE_* environment -> its settings, with
    what argparse does not check (choices of a default read from the environment; backend against
    compile mode). Errors exit as argparse's do: SystemExit(2), the usage and one "error:" line on
    stderr. deploy/rules.py runs a container's arguments and environment through this."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for action in parser._actions:  # argparse checks choices on the command line only
        if action.choices is not None and (value := getattr(args, action.dest)) not in action.choices:
            parser.error(f"{action.dest.replace('_', ' ')} {value!r} (from the environment) is not one of "
                         f"{', '.join(map(str, action.choices))}")
    if args.backend == "jax" and args.compile_mode == "graph":
        parser.error("--compile graph is a TensorFlow mode (tf.function); the jax backend compiles only "
                     "with jax.jit: use --compile xla or auto")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of `camserve serve` (argv without the program name; a leading 'serve' is skipped)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        argv = argv[1:]
    args = parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from camserve.front.server import ConfigError
    from camserve.front.supervisor import serve
    from camserve.repository import RepositoryError, load_repository, with_batching

    try:
        repo_path = Path(args.model_repository) if args.model_repository else None
        repository = with_batching(load_repository(repo_path), max_batch_size=args.max_batch_size,
                                   max_queue_delay_ms=args.max_queue_delay_ms,
                                   max_queue_size=args.max_queue_size)
        opts = options_from_args(args)
    except (RepositoryError, SecurityConfigError) as exc:
        print(f"camserve serve: {exc}", file=sys.stderr)
        return 2
    for line in config_lines(opts, args.model_repository, repository):
        log.info("%s", line)
    try:
        return asyncio.run(serve(repository, opts))
    except (OSError, ConfigError, SecurityConfigError) as exc:  # a busy port, no GPU, bad certificates
        print(f"camserve serve: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 130


if __name__ == "__main__":
    sys.exit(main())

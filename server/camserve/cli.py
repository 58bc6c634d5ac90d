"""`camserve serve`: serve a model repository over gRPC (metrics over HTTP).

Every flag has a CAMSERVE_* environment variable (the flag wins), so the same image runs from a
Kubernetes manifest or a shell. The effective configuration (flags, each model's batching) is logged
at start-up, Triton-style, so an operator can see what the server actually runs with. Errors an
operator can cause (a bad repository, a busy port, unreadable certificates) end with one clear line
and exit status 2, never a traceback.

Run as `camserve serve ...` or `python -m camserve.cli serve ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from camserve import codec

log = logging.getLogger("camserve")

ENV_PREFIX = "CAMSERVE_"


def _env(name: str, default: object) -> object:
    """Default of a flag: the CAMSERVE_<NAME> environment variable if set and non-empty, else `default`."""
    value = os.environ.get(ENV_PREFIX + name)
    return default if value in (None, "") else value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0..65535")
    return value


def _metrics_port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not -1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside -1..65535")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds > 0")
    return value


def _workers(text: str) -> str:
    from camserve.placement import WorkerPlan  # no TensorFlow: placement only parses and discovers

    try:
        return str(WorkerPlan.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The `camserve serve` argument parser (every default from a CAMSERVE_* variable when set)."""
    p = argparse.ArgumentParser(
        prog="camserve serve",
        description="Serve CAM / Grad-CAM heatmaps for the models of a repository over gRPC "
                    "(camserve.v1.ExplainService, grpc.health.v1, reflection), with Prometheus metrics.",
        epilog="Every flag also reads the environment variable shown in brackets; the flag wins.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("models")
    g.add_argument("--model-repository", metavar="DIR", default=_env("MODEL_REPOSITORY", None),
                   help="folder with one sub-folder per model (config.json + model.keras + labels.txt); "
                        "unset = the bundled demo model [env CAMSERVE_MODEL_REPOSITORY]")
    g.add_argument("--workers", type=_workers, default=_env("WORKERS", "auto"),
                   help="worker processes: auto (one per visible GPU, else CPU), cpu:N, gpu (every "
                        "visible GPU), gpu:0,1 (these GPUs) [env CAMSERVE_WORKERS]")
    g.add_argument("--compile", dest="compile_mode", choices=("auto", "xla", "graph"),
                   default=_env("COMPILE", "auto"),
                   help="compiled step: xla (jit_compile), graph (tf.function), or auto (graph on CPU, "
                        "xla on GPU) [env CAMSERVE_COMPILE]")
    g.add_argument("--backend", choices=("tensorflow", "jax"), default=_env("BACKEND", "tensorflow"),
                   help="Keras backend of the workers; with jax the only compiled mode is xla (jax.jit), "
                        "so --compile graph is refused [env CAMSERVE_BACKEND]")
    g.add_argument("--batch-timeout-s", type=_seconds, default=_env("BATCH_TIMEOUT_S", 120.0),
                   help="per-batch watchdog: a worker that computes one batch longer than this is "
                        "considered hung, killed (its callers get UNAVAILABLE) and restarted "
                        "[env CAMSERVE_BATCH_TIMEOUT_S]")
    g.add_argument("--startup-timeout-s", type=_seconds, default=_env("STARTUP_TIMEOUT_S", 900.0),
                   help="a worker not ready (models loaded, every bucket compiled) this long after it "
                        "started is killed and restarted [env CAMSERVE_STARTUP_TIMEOUT_S]")
    b = p.add_argument_group("batching (override every model's config.json)")
    b.add_argument("--max-batch-size", type=_positive_int, default=_env("MAX_BATCH_SIZE", None),
                   help="most images per batch, also the largest compiled bucket "
                        "[env CAMSERVE_MAX_BATCH_SIZE]")
    b.add_argument("--max-queue-delay-ms", type=_positive_float, default=_env("MAX_QUEUE_DELAY_MS", None),
                   help="longest wait after the oldest queued image for a batch to fill "
                        "[env CAMSERVE_MAX_QUEUE_DELAY_MS]")
    b.add_argument("--max-queue-size", type=_positive_int, default=_env("MAX_QUEUE_SIZE", None),
                   help="queued images per model beyond which requests are refused at once with "
                        "RESOURCE_EXHAUSTED [env CAMSERVE_MAX_QUEUE_SIZE]")
    n = p.add_argument_group("network")
    n.add_argument("--host", default=_env("HOST", "0.0.0.0"),
                   help="address to listen on (gRPC and metrics) [env CAMSERVE_HOST]")
    n.add_argument("--grpc-port", type=_port, default=_env("GRPC_PORT", 50051),
                   help="gRPC port (0 = any free port, logged) [env CAMSERVE_GRPC_PORT]")
    n.add_argument("--metrics-port", type=_metrics_port, default=_env("METRICS_PORT", 9464),
                   help="Prometheus /metrics HTTP port (0 = any free port, -1 = off) "
                        "[env CAMSERVE_METRICS_PORT]")
    n.add_argument("--max-message-mb", type=_positive_float, default=_env("MAX_MESSAGE_MB", 16.0),
                   help="largest gRPC message received or sent, in MiB; larger requests get "
                        "RESOURCE_EXHAUSTED [env CAMSERVE_MAX_MESSAGE_MB]")
    n.add_argument("--max-connection-age-s", type=_positive_float, default=_env("MAX_CONNECTION_AGE_S", 0.0),
                   help="close client connections after this many seconds so clients re-resolve and "
                        "spread onto new pods (0 = never) [env CAMSERVE_MAX_CONNECTION_AGE_S]")
    n.add_argument("--max-concurrent-rpcs", type=int, default=_env("MAX_CONCURRENT_RPCS", 0),
                   help="RPCs handled at once, beyond which gRPC answers RESOURCE_EXHAUSTED (0 = no limit; "
                        "the per-model queue bound applies either way) [env CAMSERVE_MAX_CONCURRENT_RPCS]")
    n.add_argument("--max-inflight", type=_nonnegative_int, default=_env("MAX_INFLIGHT", 0),
                   help="images being handled at once in camserve.v1.ExplainService calls (Explain counts "
                        "1, ExplainBatch its number of images); beyond it a call is refused at once with "
                        "RESOURCE_EXHAUSTED. Health and reflection are never limited, unlike "
                        "--max-concurrent-rpcs (0 = no limit) [env CAMSERVE_MAX_INFLIGHT]")
    n.add_argument("--max-image-pixels", type=_positive_int,
                   default=_env("MAX_IMAGE_PIXELS", codec.DEFAULT_MAX_PIXELS),
                   help="largest decoded image (width x height) accepted; checked from the header before "
                        "decoding, against decompression bombs [env CAMSERVE_MAX_IMAGE_PIXELS]")
    n.add_argument("--codec-threads", type=_positive_int, default=_env("CODEC_THREADS", 4),
                   help="threads decoding images and encoding heatmaps off the event loop "
                        "[env CAMSERVE_CODEC_THREADS]")
    s = p.add_argument_group("shutdown (SIGTERM: NOT_SERVING, pre-stop window, drain, exit 0)")
    s.add_argument("--pre-stop-seconds", type=_positive_float, default=_env("PRE_STOP_SECONDS", 5.0),
                   help="after SIGTERM keep serving this long while health says NOT_SERVING, so load "
                        "balancers stop routing first (SIGINT skips it) [env CAMSERVE_PRE_STOP_SECONDS]")
    s.add_argument("--drain-seconds", type=_positive_float, default=_env("DRAIN_SECONDS", 30.0),
                   help="then wait at most this long for in-flight RPCs before stopping the workers "
                        "[env CAMSERVE_DRAIN_SECONDS]")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"),
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), type=str.upper,
                   help="log verbosity [env CAMSERVE_LOG_LEVEL]")
    try:
        from camserve.security import add_security_arguments
    except ImportError:  # pragma: no cover - the security module ships with the server
        pass
    else:
        add_security_arguments(p)
    return p


def _config_lines(args: argparse.Namespace, repository: dict, security: object) -> list[str]:
    """The effective configuration, one `key: value` per line (no secrets)."""
    lines = ["effective configuration:"]
    for key in ("model_repository", "workers", "compile_mode", "backend", "host", "grpc_port", "metrics_port",
                "max_message_mb", "max_connection_age_s", "max_concurrent_rpcs", "max_inflight",
                "max_image_pixels", "codec_threads", "batch_timeout_s", "startup_timeout_s",
                "pre_stop_seconds", "drain_seconds"):
        value = getattr(args, key)
        if key == "model_repository" and value is None:
            value = "(bundled demo repository)"
        lines.append(f"  {key:<22} {value}")
    describe = getattr(security, "describe", None)
    lines.append(f"  {'security':<22} {describe() if describe else 'plaintext'}")
    for name, cfg in repository.items():
        b = cfg.batching
        lines.append(f"  model {name!r} v{cfg.version}: input {list(cfg.input_shape)} preprocessing "
                     f"{cfg.preprocessing} target {cfg.target_layer or '(auto)'} | max_batch_size "
                     f"{b.max_batch_size} max_queue_delay_ms {b.max_queue_delay_ms} max_queue_size "
                     f"{b.max_queue_size}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point of `camserve serve` (argv without the program name; a leading 'serve' is skipped)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    for dest, choices in (("compile_mode", ("auto", "xla", "graph")), ("backend", ("tensorflow", "jax"))):
        value = getattr(args, dest)
        if value not in choices:  # argparse does not check defaults read from the environment
            parser.error(f"{dest.replace('_', ' ')} {value!r} (from the environment) is not one of "
                         f"{', '.join(choices)}")
    if args.backend == "jax" and args.compile_mode == "graph":
        parser.error("--compile graph is a TensorFlow mode (tf.function); the jax backend compiles only "
                     "with jax.jit: use --compile xla or auto")
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from camserve.repository import RepositoryError, load_repository, with_batching
    from camserve.security import SecurityConfig, SecurityConfigError, security_config_from_args
    from camserve.server import ConfigError, MiB, ServerOptions, serve

    try:
        repo_path = Path(args.model_repository) if args.model_repository else None
        repository = with_batching(load_repository(repo_path), max_batch_size=args.max_batch_size,
                                   max_queue_delay_ms=args.max_queue_delay_ms,
                                   max_queue_size=args.max_queue_size)
        security = security_config_from_args(args) if hasattr(args, "tls_cert") else SecurityConfig()
    except (RepositoryError, SecurityConfigError) as exc:
        print(f"camserve serve: {exc}", file=sys.stderr)
        return 2
    for line in _config_lines(args, repository, security):
        log.info("%s", line)
    opts = ServerOptions(
        host=args.host, grpc_port=args.grpc_port, metrics_port=args.metrics_port, workers=args.workers,
        compile_mode=args.compile_mode, backend=args.backend, pre_stop_s=args.pre_stop_seconds,
        drain_s=args.drain_seconds, max_message_bytes=int(args.max_message_mb * MiB),
        max_connection_age_s=args.max_connection_age_s, max_image_pixels=args.max_image_pixels,
        max_concurrent_rpcs=max(0, args.max_concurrent_rpcs), codec_threads=args.codec_threads,
        max_inflight=args.max_inflight, batch_timeout_s=args.batch_timeout_s,
        startup_timeout_s=args.startup_timeout_s,
        security=security)
    try:
        return asyncio.run(serve(repository, opts))
    except (OSError, ConfigError, SecurityConfigError) as exc:  # a busy port, no GPU, bad certificates
        print(f"camserve serve: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 130


if __name__ == "__main__":
    sys.exit(main())

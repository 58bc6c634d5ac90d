"""`camserve bench`: the load generator's command line (flags, the report it prints, its exit code).

The load itself is :mod:`camserve_client.tools.loadgen`; the counting rule and the report are
:mod:`camserve_client.tools.loadreport`. Exit 0 only when every step had successes and no error
(1 otherwise, naming each step's problem; 2 bad usage; 3 server not reachable or not serving).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from camserve_client.tools.loadgen import LoadConfig, run_load
from camserve_client.tools.loadreport import format_table, json_safe, step_problems, write_plot


def _levels(text: str, kind: type) -> list[Any]:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("levels must be > 0")
    return values


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The load flags, shared by `camserve bench` and `python -m bench.load`."""
    from camserve_client.types import METHODS

    parser.add_argument("--model", help="model name (default: the server's default model, the first of "
                        "its repository by name; `camserve models` lists them)")
    parser.add_argument("--method", default="gradcam", help=f"one of {', '.join(METHODS)} (default gradcam)")
    parser.add_argument("--top-k", type=int, default=1, help="classes explained per image (default 1)")
    parser.add_argument("--size", default="grid", choices=["grid", "input", "original"],
                        help="heatmap size requested (default grid: the least output work)")
    parser.add_argument("--concurrency", type=lambda t: _levels(t, int), default=None,
                        help="closed-loop sweep, e.g. 1,4,16,64 (default 1,4,16,64 unless --rate)")
    parser.add_argument("--rate", type=lambda t: _levels(t, float), default=[],
                        help="open-loop Poisson request rates per second, e.g. 20,50,100")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="measured seconds per step: the calls that complete in them count (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds of load before each measured window, not counted (default 3)")
    parser.add_argument("--images", default="auto",
                        help="a folder of images, or generated ones: digits (scikit-learn's), photos "
                             "(scikit-image's), noise (shapes, needs neither), auto (digits for inputs up "
                             "to 96 px, else photos, else noise; default)")
    parser.add_argument("--image-count", type=int, default=64,
                        help="images generated or read from the folder, sent in turn (default 64)")
    parser.add_argument("--image-size", type=int, help="generated image side (default: the model input)")
    parser.add_argument("--payload", default="png", choices=["png", "jpeg", "raw"],
                        help="how generated images travel: encoded png/jpeg (jpeg needs OpenCV), or raw "
                             "uint8 tensor (default png)")
    parser.add_argument("--batch-per-call", type=int, default=1,
                        help="images per call; > 1 uses ExplainBatch, or ModelInfer rows (default 1)")
    parser.add_argument("--protocol", default="camserve", choices=["camserve", "oip"],
                        help="camserve: camserve.v1 Explain (default); oip: the Open Inference Protocol's "
                             "ModelInfer (KServe v2), IMAGE rows (PIXELS for --payload raw)")
    parser.add_argument("--max-inflight", type=int, default=4096,
                        help="open loop: calls in flight at most; arrivals beyond it count as "
                             "CLIENT_OVERLOAD errors (default 4096)")
    parser.add_argument("--connections", type=int, default=1,
                        help="TCP connections the callers are shared out over (default 1); a server with "
                             "several front-end processes serves each connection in one of them")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images and arrivals")
    parser.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                        help="wait up to SECONDS for the server and model to report SERVING before the "
                             "first step (default 60)")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
    parser.add_argument("--plot", metavar="PATH.png", help="write a latency-throughput plot (needs "
                        "matplotlib: pip install 'camserve[tools]')")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: concurrency 1,4, 2 s per step, 1 s warm-up")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace, client_kwargs: dict[str, Any]) -> LoadConfig:
    cfg = LoadConfig(
        target=args.target, model=args.model, method=args.method, top_k=args.top_k, size=args.size,
        concurrency=(args.concurrency if args.concurrency is not None
                     else ([] if args.rate else [1, 4, 16, 64])),
        rates=args.rate, duration_s=args.duration, warmup_s=args.warmup, images=args.images,
        image_count=args.image_count, image_size=args.image_size, payload=args.payload,
        batch_per_call=args.batch_per_call, protocol=args.protocol,
        timeout_s=client_kwargs.get("timeout") or 30.0,
        max_inflight=args.max_inflight, ready_timeout_s=args.wait, seed=args.seed, quiet=args.quiet,
        connections=max(1, args.connections),
        client={k: v for k, v in client_kwargs.items() if k in ("tls", "token")})
    if args.quick:
        cfg.concurrency = [1, 4] if args.concurrency is None and not args.rate else cfg.concurrency
        cfg.duration_s, cfg.warmup_s = min(cfg.duration_s, 2.0), min(cfg.warmup_s, 1.0)
        cfg.image_count = min(cfg.image_count, 16)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """`camserve bench`: run the sweep, print the table, write JSON / PNG if asked."""
    from camserve_client.errors import CamserveError
    from camserve_client.tools.common import (
        EXIT_CODES,
        EXIT_UNAVAILABLE,
        EXIT_USAGE,
        UsageError,
        add_connection_arguments,
        client_kwargs,
        error_line,
        exit_status,
    )

    parser = argparse.ArgumentParser(
        prog="camserve bench",
        description="Load generator in the spirit of perf_analyzer: a closed-loop concurrency sweep "
                    "(--concurrency) or open-loop Poisson rates (--rate) against one model; prints "
                    "throughput, latency percentiles, errors by status code and the server's "
                    "queue/compute split per step. A call counts when it completes inside a step's "
                    "measured window.",
        epilog=EXIT_CODES.replace("1 a call failed (the message says why)",
                                  "1 a step had an error or no success (named), or a call failed"))
    add_load_arguments(parser)
    add_connection_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args, client_kwargs(args))
        report = run_load(cfg)
    except CamserveError as exc:  # from setup: model unknown, token, TLS, server not reachable
        print(f"camserve bench: {error_line(exc, args)}", file=sys.stderr)
        return exit_status(exc)
    except (UsageError, ValueError, OSError, RuntimeError) as exc:
        print(f"camserve bench: {exc}", file=sys.stderr)
        return EXIT_USAGE if not isinstance(exc, RuntimeError) else EXIT_UNAVAILABLE
    print(f"{cfg.target}  model {report['model'].get('name')}  {report['images']}")
    print(format_table(report["steps"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(json_safe(report), indent=2))
        print(f"wrote {args.json}")
    if args.plot and write_plot({"camserve": report["steps"]}, args.plot,
                                f"camserve {report['model'].get('name')} {cfg.method}"):
        print(f"wrote {args.plot}")
    problems = step_problems(report["steps"])
    for line in problems:
        print(f"camserve bench: {line}", file=sys.stderr)
    return 1 if problems else 0

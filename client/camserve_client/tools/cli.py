"""The `camserve` command: its parser, `models`, `health`, and the dispatch to the others.

`serve` needs the server extra (TensorFlow) and is imported lazily; every other command is
client-only: `explain` (:mod:`.explaincmd`), `models`, `health`, `bench` (:mod:`.benchcmd`). Errors
print one clear line, with the flag that fixes it where there is one, and exit non-zero
(:data:`~camserve_client.tools.common.EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from camserve_client.tools.common import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    UsageError,
    add_connection_arguments,
    client_kwargs,
    error_line,
    exit_status,
    unreachable_notice,
)
from camserve_client.tools.explaincmd import cmd_explain


def cmd_models(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from camserve_client import Client

    with Client(args.target, **client_kwargs(args)) as client, unreachable_notice(client, args):
        models = [client.get_model(args.name)] if args.name else client.list_models()
    if args.json:
        print(json.dumps([asdict(m) for m in models], indent=2))
        return 0
    if args.name:
        m = models[0]
        print(f"{m.name} v{m.version}  ready={m.ready}  input={'x'.join(map(str, m.input_shape))}  "
              f"preprocessing={m.preprocessing}  classes={m.num_classes}  "
              f"backend={m.backend}/{m.compile_mode}")
        print(f"  batching: max {m.max_batch_size}, buckets {m.batch_buckets}, "
              f"queue delay {m.max_queue_delay_ms:g} ms")
        print(f"  methods: {', '.join(m.methods)}")
        print(f"  default target layer: {m.default_target_layer}"
              + (f" ({m.default_target_reason})" if m.default_target_reason else ""))
        if m.head:
            print(f"  output head: {m.head} [maps of the {m.score_kind}]")
        for la in m.layers:
            cam = "  CAM" if la.cam_supported else ""
            tokens = f"  tokens (+{la.prefix_tokens} prefix)" if la.kind == "tokens" else ""
            print(f"    {la.name:40s} {'x'.join(map(str, la.grid)):>9s} x {la.channels}{cam}{tokens}")
        return 0
    print(f"{'MODEL':20s} {'VER':>3s} {'READY':5s} {'INPUT':>11s} {'CLASSES':>7s} {'MAXB':>4s}  TARGET LAYER")
    for m in models:
        print(f"{m.name:20s} {m.version:3d} {('yes' if m.ready else 'no'):5s} "
              f"{'x'.join(map(str, m.input_shape)):>11s} {m.num_classes:7d} {m.max_batch_size:4d}  "
              f"{m.default_target_layer}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from camserve_client import Client

    with Client(args.target, **client_kwargs(args)) as client, unreachable_notice(client, args):
        if args.wait:
            client.wait_ready(timeout=args.wait, model=args.model)
        status = client.health(args.model)
    print(f"{args.model or 'server'}: {status}")
    return 0 if status == "SERVING" else EXIT_UNAVAILABLE


def build_parser() -> argparse.ArgumentParser:
    from camserve_client import __version__
    from camserve_client.types import METHODS

    parser = argparse.ArgumentParser(
        prog="camserve", description="Class Activation Maps over gRPC: client commands, and `serve`.",
        epilog="`camserve COMMAND --help` explains each; `camserve serve --help` lists the server's flags "
               "(needs camserve[server]). The client commands' " + EXIT_CODES + ".")
    parser.add_argument("--version", action="version", version=f"camserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", help="run the server (needs the server extra; see `camserve serve --help`)",
                   add_help=False)

    ex = sub.add_parser(
        "explain", help="explain images and save overlays / heatmaps",
        description="Explain one or more images: print each one's explained classes (index, label, "
                    "probability) and the server's timing, and write the outputs asked for. Asks the "
                    "server only for what it writes.",
        epilog="Outputs of several images or classes: OUT gets each image's stem (OUT_stem.png, or "
               "OUT/stem.png for a folder) and, with --top-k > 1, _top1, _top2, ... per class; --heatmap "
               "stacks the k maps in one (k, h, w) .npy. Missing folders are created. " + EXIT_CODES + ".")
    ex.add_argument("images", nargs="+", metavar="IMAGE",
                    help="image file (JPEG, PNG, WebP, BMP; alpha is dropped), folder (its images), or - "
                         "for one image on stdin")
    ex.add_argument("--model", help="model name (default: the server's default model, the first of its "
                    "repository by name; `camserve models` lists them)")
    ex.add_argument("--method", default="gradcam", help=f"one of {', '.join(METHODS)} (default gradcam)")
    ex.add_argument("--class", dest="class_index", type=int, metavar="N",
                    help="class index to explain, 0-based (default: the top-1 class)")
    ex.add_argument("--top-k", type=int, default=1, metavar="K",
                    help="explain the K best classes in one pass (default 1; not with --class)")
    ex.add_argument("--target-layer", metavar="LAYER", help="layer name or outer/inner path, as `camserve "
                    "models MODEL` lists them (default: the model's target layer)")
    ex.add_argument("--size", choices=["grid", "input", "original"], default="original",
                    help="size of the written maps and overlays: conv grid, model input, or the image's own "
                         "(default original; the --heatmap map then travels at the conv grid and is "
                         "resized here, so any photo size fits one reply)")
    ex.add_argument("--overlay", metavar="OUT", help="write the colour overlay (.png or .jpg); with "
                    "several images OUT gets each image's stem, or give a folder")
    ex.add_argument("--heatmap", metavar="OUT.npy", help="write the float32 heatmap as .npy (top-k: "
                    "stacked); without it no float32 map is asked for")
    ex.add_argument("--heatmap-png", metavar="OUT.png", help="write the heatmap as 8-bit grayscale PNG")
    ex.add_argument("--alpha", type=float, default=0.4, help="heatmap weight in the overlay, in (0, 1] "
                    "(default 0.4)")
    ex.add_argument("--colormap", default="jet", choices=["jet", "turbo", "viridis", "inferno"],
                    help="overlay colormap (default jet)")
    ex.add_argument("--concurrency", type=int, default=4, metavar="N",
                    help="calls in flight for many images (default 4)")
    ex.add_argument("--json", action="store_true", help="print results as JSON (classes, probabilities, "
                    "timing, files written)")
    ex.add_argument("--quiet", action="store_true", help="no progress bar")
    add_connection_arguments(ex)
    ex.set_defaults(func=cmd_explain)

    mo = sub.add_parser("models", help="list served models, or show one model's details",
                        description="List the served models (name, version, readiness, input, classes, "
                                    "largest batch, target layer), or one model's details: its layers "
                                    "(the --target-layer choices, with their grids), methods and batching.",
                        epilog=EXIT_CODES + ".")
    mo.add_argument("name", nargs="?", help="show this model's layers, methods and batching")
    mo.add_argument("--json", action="store_true", help="print the models as JSON")
    add_connection_arguments(mo)
    mo.set_defaults(func=cmd_models)

    he = sub.add_parser("health", help="health of the server or of one model (exit 0 only if SERVING)",
                        description="Print the grpc.health.v1 status (SERVING, NOT_SERVING) of the server "
                                    "or of one model. A server reports SERVING once every model is "
                                    "loaded and compiled.",
                        epilog="exit status: 0 SERVING; 1 a call failed (e.g. an unknown model); 3 not "
                               "SERVING, or the server could not be reached.")
    he.add_argument("--model", help="check this model instead of the whole server")
    he.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                    help="wait up to SECONDS for SERVING, also for a server not yet listening (default 0: "
                         "answer at once)")
    add_connection_arguments(he)
    he.set_defaults(func=cmd_health)

    sub.add_parser("bench", help="load generator: concurrency sweep / request rate (see `camserve bench -h`)",
                   add_help=False)
    return parser


def quiet_grpc_logging() -> None:
    """Leave gRPC's own log lines below ERROR out of a client command's stderr: each failure already
    prints one line saying what went wrong and what fixes it (``error_line``), and gRPC's C core would
    print its details first (a refused TLS handshake writes "ssl_transport_security.cc ... Handshake
    failed ..." before the command's message). gRPC reads ``GRPC_VERBOSITY`` once, on import, so it is
    set before anything imports grpc (the package imports it lazily for that reason), only as a
    default (a caller's own value wins), and only here: importing the SDK changes nothing."""
    if "grpc" not in sys.modules:
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        try:
            from camserve.front.cli import main as serve_main
        except ImportError as exc:  # the light install has no TensorFlow
            print(f"camserve serve needs the server extra: pip install 'camserve[server]' ({exc})",
                  file=sys.stderr)
            return 2
        return serve_main(argv[1:])
    quiet_grpc_logging()
    if argv and argv[0] == "bench":
        from camserve_client.tools.benchcmd import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from camserve_client.errors import CamserveError

    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"camserve {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CamserveError as exc:
        print(f"camserve {args.command}: {error_line(exc, args)}", file=sys.stderr)
        return exit_status(exc)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except (OSError, ValueError) as exc:
        print(f"camserve {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

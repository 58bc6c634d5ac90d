"""The `camserve` command.

`serve` needs the server extra (TensorFlow) and is imported lazily; every other command is
client-only: `explain`, `models`, `health`, `bench`. Errors print one clear line and exit non-zero
(1: a call failed, 2: bad usage or input, 3: server unreachable or not serving).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every client command (also used by `camserve bench`)."""
    g = parser.add_argument_group("connection")
    g.add_argument("--target", default=os.environ.get("CAMSERVE_TARGET", "localhost:50051"),
                   help="server address host:port, a comma-separated list (round-robin), or dns:///name "
                        "(env CAMSERVE_TARGET; default %(default)s)")
    g.add_argument("--timeout", type=float, default=60.0, help="deadline per call in seconds (default 60)")
    g.add_argument("--retries", type=int, default=4, choices=range(5), metavar="{0..4}",
                   help="retries on UNAVAILABLE / RESOURCE_EXHAUSTED within the deadline, by gRPC's retry "
                        "policy; with 0 a call to an unreachable server fails at once (default 4)")
    g.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --ca)")
    g.add_argument("--ca", help="PEM file of the CA that signed the server certificate (implies --tls)")
    g.add_argument("--cert", help="client certificate PEM for mutual TLS (implies --tls)")
    g.add_argument("--key", help="client private key PEM for mutual TLS")
    g.add_argument("--server-name", help="name to verify in the server certificate (TLS)")
    g.add_argument("--token", default=os.environ.get("CAMSERVE_TOKEN"),
                   help="bearer token sent as 'authorization: Bearer <token>' (env CAMSERVE_TOKEN)")
    g.add_argument("--token-file", help="read the bearer token from this file")


def client_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Client(...) keyword arguments from the connection flags."""
    from camserve_client.client import TLSConfig

    token = args.token
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read token file {args.token_file}: {exc.strerror}") from None
    tls: TLSConfig | bool = False
    if args.tls or args.ca or args.cert or args.server_name:
        if bool(args.cert) != bool(args.key):
            raise UsageError("mutual TLS needs both --cert and --key")
        tls = TLSConfig(root_certificates=args.ca, certificate_chain=args.cert, private_key=args.key,
                        server_name=args.server_name)
    return {"timeout": args.timeout, "retries": args.retries, "tls": tls, "token": token}


class UsageError(Exception):
    """Bad flags or input files: exit 2 with the message."""


def _out_path(spec: str | None, image: str, suffix: str, many: bool, used: set[Path]) -> Path | None:
    """Where to write an output for `image`: a file, or inside a folder, or OUT with the image stem."""
    if not spec:
        return None
    stem = Path(image).stem if image != "-" else "stdin"
    out = Path(spec)
    if spec.endswith(("/", os.sep)) or out.is_dir():
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{stem}{suffix}"
    elif many:
        path = out.with_name(f"{out.stem}_{stem}{out.suffix or suffix}")
    else:
        path = out
    base, n = path, 1
    while path in used:  # two inputs with the same stem
        path = base.with_name(f"{base.stem}_{n}{base.suffix}")
        n += 1
    used.add(path)
    return path


def _with_rank(path: Path, rank: int, k: int) -> Path:
    return path if k == 1 else path.with_name(f"{path.stem}_top{rank + 1}{path.suffix}")


def too_large_advice(exc: Exception, args: argparse.Namespace, image: str) -> str | None:
    """A refusal for message size in the CLI's words, naming the options that make it fit (else None)."""
    details = str(getattr(exc, "details", ""))
    if getattr(getattr(exc, "code", None), "name", "") != "RESOURCE_EXHAUSTED":
        return None
    # The request refused for size: by camserve (its message names --max-message-mb), or by gRPC.
    ours = re.search(r"request message is [\d.]+ MiB, more than this server accepts \(([\d.]+) MiB", details)
    theirs = re.search(r"larger than max \((\d+) vs\. (\d+)\)", details)
    limit = float(ours.group(1)) * 2**20 if ours else float(theirs.group(2)) if theirs else None
    if limit is not None and image != "-" and Path(image).stat().st_size >= limit:
        return (f"the image file is {Path(image).stat().st_size / 2**20:.1f} MB, over the server's "
                f"{limit / 2**20:.0f} MiB message limit: resize or recompress it "
                "(or start the server with a larger --max-message-mb)")
    if limit is None and "message limit" not in details:
        return None  # a full queue, not a size
    fixes = []
    if args.overlay and not args.overlay.lower().endswith((".jpg", ".jpeg")):
        fixes.append("a JPEG overlay (--overlay NAME.jpg, several times smaller than PNG)")
    if args.size == "original" and (args.overlay or args.heatmap_png):
        fixes.append("smaller images (--size input)")
    if args.top_k > 1:
        fixes.append("one class per call (--top-k 1, or --class N)")
    if args.heatmap_png:
        fixes.append("no --heatmap-png (--heatmap writes the map as .npy without this limit)")
    return ("the answer would be over the server's message limit"
            + (": use " + ", or ".join(fixes) if fixes else "") + f" ({details.split(';')[0]})")


def cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np

    from camserve_client import CamserveError, Client
    from camserve_client.tools.progress import bar as progress_bar

    images: list[str] = []
    for item in args.images:
        p = Path(item)
        if p.is_dir():
            images += sorted(str(f) for f in p.iterdir()
                             if f.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".bmp"})
        elif item == "-" or p.is_file():
            images.append(item)
        else:
            raise UsageError(f"image not found: {item}")
    if not images:
        raise UsageError("no images given (folders are searched for .jpg .jpeg .png .webp .bmp)")
    many = len(images) > 1
    from camserve_client.types import method_enum

    try:
        method_enum(args.method)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.top_k < 1:
        raise UsageError("--top-k must be >= 1")
    overlay_fmt = None
    if args.overlay:
        overlay_fmt = "jpeg" if Path(args.overlay).suffix.lower() in (".jpg", ".jpeg") else "png"
    # Ask only for what will be written: the float32 map only for --heatmap (at the original size it
    # travels at the conv grid and is resized here, see OutputOptions), the overlay only for --overlay.
    output = {"size": args.size, "heatmap": bool(args.heatmap), "heatmap_png": bool(args.heatmap_png),
              "overlay": overlay_fmt, "alpha": args.alpha, "colormap": args.colormap}
    used: set[Path] = set()
    plan = [(img,
             _out_path(args.overlay, img, ".jpg" if overlay_fmt == "jpeg" else ".png", many, used),
             _out_path(args.heatmap, img, ".npy", many, used),
             _out_path(args.heatmap_png, img, ".png", many, used)) for img in images]

    client = Client(args.target, model=args.model, **client_kwargs(args))
    failures = 0
    rows: list[dict[str, Any]] = []
    fatal: list[CamserveError] = []

    def one(item: tuple[str, Path | None, Path | None, Path | None]) -> None:
        nonlocal failures
        img, ov, hm, hp = item
        if fatal:
            return
        try:
            data: Any = sys.stdin.buffer.read() if img == "-" else Path(img)
            r = client.explain(data, method=args.method, class_index=args.class_index, top_k=args.top_k,
                               target_layer=args.target_layer, output=output)
        except CamserveError as exc:
            failures += 1
            if exc.code.name in ("UNAVAILABLE", "UNAUTHENTICATED", "NOT_FOUND", "DEADLINE_EXCEEDED"):
                fatal.append(exc)
            print(f"{img}: {too_large_advice(exc, args, img) or exc}", file=sys.stderr)
            return
        except (OSError, ValueError) as exc:
            failures += 1
            print(f"{img}: {exc}", file=sys.stderr)
            return
        k = len(r.explanations)
        for rank, e in enumerate(r.explanations):
            if ov and e.overlay:
                _with_rank(ov, rank, k).write_bytes(e.overlay)
            if hp and e.heatmap_png:
                _with_rank(hp, rank, k).write_bytes(e.heatmap_png)
        if hm:
            maps = [e.heatmap for e in r.explanations if e.heatmap is not None]
            np.save(hm, maps[0] if k == 1 else np.stack(maps))
        rows.append({"image": img, "request_id": r.request_id, "model": r.model, "method": r.method,
                     "target_layer": r.target_layer,
                     "explanations": [{"class_index": e.class_index, "label": e.label,
                                       "probability": round(e.probability, 6), "all_zero": e.all_zero}
                                      for e in r.explanations],
                     "timing_ms": {"queue": round(r.timing.queue_ms, 2),
                                   "compute": round(r.timing.compute_ms, 2),
                                   "total": round(r.timing.total_ms, 2), "batch_size": r.timing.batch_size,
                                   "latency": round(r.timing.latency_ms, 2)},
                     "outputs": [str(p) for p in (ov, hm, hp) if p]})
        if not args.json and not many:
            for e in r.explanations:
                flag = "  (all zero)" if e.all_zero else ""
                print(f"{img}: class {e.class_index} {e.label!r} p={e.probability:.4f}{flag}")
            print(f"  {r.model} {r.method} layer={r.target_layer} queue={r.timing.queue_ms:.1f}ms "
                  f"compute={r.timing.compute_ms:.1f}ms batch={r.timing.batch_size} "
                  f"latency={r.timing.latency_ms:.1f}ms")

    bar = progress_bar(len(images), "explain", unit="img", enabled=many and not args.quiet)
    with client, bar, ThreadPoolExecutor(max_workers=max(1, args.concurrency)) as pool:
        for _ in pool.map(one, plan):
            bar.update()
    if args.json:
        print(json.dumps(rows if many else (rows[0] if rows else None), indent=2))
    elif many:
        for row in sorted(rows, key=lambda r: images.index(r["image"])):
            e = row["explanations"][0]
            print(f"{row['image']}: class {e['class_index']} {e['label']!r} p={e['probability']:.4f}")
    if fatal:
        return EXIT_UNAVAILABLE if fatal[0].code.name == "UNAVAILABLE" else EXIT_FAILED
    if failures:
        print(f"{failures} of {len(images)} image(s) failed", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from camserve_client import Client

    with Client(args.target, **client_kwargs(args)) as client:
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
            print(f"  output head: {m.head}; scores are {m.score_kind}")
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

    with Client(args.target, **client_kwargs(args)) as client:
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
        epilog="`camserve serve --help` lists the server's flags (needs camserve[server]).")
    parser.add_argument("--version", action="version", version=f"camserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", help="run the server (needs the server extra; see `camserve serve --help`)",
                   add_help=False)

    ex = sub.add_parser("explain", help="explain images and save overlays / heatmaps",
                        description="Explain one or more images (files, folders, or - for stdin).")
    ex.add_argument("images", nargs="+", metavar="IMAGE")
    ex.add_argument("--model", help="model name (default: the server's default model)")
    ex.add_argument("--method", default="gradcam", help=f"one of {', '.join(METHODS)} (default gradcam)")
    ex.add_argument("--class", dest="class_index", type=int, help="class index to explain (default: top-1)")
    ex.add_argument("--top-k", type=int, default=1, help="explain the k best classes (default 1)")
    ex.add_argument("--target-layer", help="layer name or outer/inner path (default: the model's)")
    ex.add_argument("--size", choices=["grid", "input", "original"], default="original",
                    help="size of the written maps and overlays: conv grid, model input, or the image's own "
                         "(default original; the --heatmap map then travels at the conv grid and is "
                         "resized here, so any photo size fits one reply)")
    ex.add_argument("--overlay", metavar="OUT", help="write the colour overlay (.png or .jpg); with "
                    "several images OUT gets each image's stem, or give a folder")
    ex.add_argument("--heatmap", metavar="OUT.npy", help="write the float32 heatmap as .npy (top-k: "
                    "stacked); without it no float32 map is asked for")
    ex.add_argument("--heatmap-png", metavar="OUT.png", help="write the heatmap as 8-bit grayscale PNG")
    ex.add_argument("--alpha", type=float, default=0.4, help="heatmap weight in the overlay (default 0.4)")
    ex.add_argument("--colormap", default="jet", choices=["jet", "turbo", "viridis", "inferno"])
    ex.add_argument("--concurrency", type=int, default=4, help="calls in flight for many images (default 4)")
    ex.add_argument("--json", action="store_true", help="print results as JSON")
    ex.add_argument("--quiet", action="store_true", help="no progress bar")
    add_connection_arguments(ex)
    ex.set_defaults(func=cmd_explain)

    mo = sub.add_parser("models", help="list served models, or show one model's details")
    mo.add_argument("name", nargs="?", help="show this model's layers, methods and batching")
    mo.add_argument("--json", action="store_true")
    add_connection_arguments(mo)
    mo.set_defaults(func=cmd_models)

    he = sub.add_parser("health", help="health of the server or of one model (exit 0 only if SERVING)")
    he.add_argument("--model", help="check this model instead of the whole server")
    he.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                    help="wait up to SECONDS for SERVING before answering")
    add_connection_arguments(he)
    he.set_defaults(func=cmd_health)

    sub.add_parser("bench", help="load generator: concurrency sweep / request rate (see `camserve bench -h`)",
                   add_help=False)
    return parser


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
        print(f"camserve {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE if exc.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED") else EXIT_FAILED
    except (OSError, ValueError) as exc:
        print(f"camserve {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`camserve explain`: explain image files and write the overlays and maps asked for.

Asks the server only for what it writes (no float32 map without ``--heatmap``; at the original size
the map travels at the conv grid and is resized here), and turns a reply too large for the message
limit into the options that make it fit. Output folders are made before the first call.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from camserve_client.tools.common import (
    EXIT_FAILED,
    UsageError,
    client_kwargs,
    error_line,
    exit_status,
    unreachable_notice,
)


def _out_path(spec: str | None, image: str, suffix: str, many: bool, used: set[Path]) -> Path | None:
    """Where to write an output for `image`: a file, or inside a folder, or OUT with the image stem."""
    if not spec:
        return None
    stem = Path(image).stem if image != "-" else "stdin"
    out = Path(spec)
    try:
        if spec.endswith(("/", os.sep)) or out.is_dir():
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"{stem}{suffix}"
        elif many:
            path = out.with_name(f"{out.stem}_{stem}{out.suffix or suffix}")
        else:
            path = out
        path.parent.mkdir(parents=True, exist_ok=True)  # as `--overlay out/` does: no call made in vain
    except OSError as exc:
        raise UsageError(f"cannot write {spec}: {exc.strerror or exc}") from None
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
    # A folder is many images whatever it holds today: the same output names and JSON list for one.
    many = len(images) > 1 or any(Path(item).is_dir() for item in args.images)
    from camserve_client.types import method_enum

    try:
        method_enum(args.method)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.top_k < 1:
        raise UsageError("--top-k must be >= 1")
    if args.class_index is not None and args.top_k > 1:
        raise UsageError("give --class N to explain one class, or --top-k K for the K best; not both")
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
            print(f"{img}: {too_large_advice(exc, args, img) or error_line(exc, args)}", file=sys.stderr)
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
    with client, unreachable_notice(client, args), bar, \
            ThreadPoolExecutor(max_workers=max(1, args.concurrency)) as pool:
        for _ in pool.map(one, plan):
            bar.update()
    if args.json:
        print(json.dumps(rows if many else (rows[0] if rows else None), indent=2))
    elif many:
        for row in sorted(rows, key=lambda r: images.index(r["image"])):
            e = row["explanations"][0]
            print(f"{row['image']}: class {e['class_index']} {e['label']!r} p={e['probability']:.4f}")
    if fatal:
        return exit_status(fatal[0])
    if failures:
        print(f"{failures} of {len(images)} image(s) failed", file=sys.stderr)
        return EXIT_FAILED
    return 0

"""camserve under load beside the per-request tf-keras-vis loop, same model, images and cores.

    python -m bench.load --quick                       # smoke run: demo model, concurrency 1,4, 2 s steps
    python -m bench.load --models demo,mobilenetv2,resnet50 --concurrency 1,4,16,64 --duration 20

For each model: write a model repository in a temp folder (the bundled demo model, or a
keras.applications model with `"weights": null` at 224x224: speed does not depend on weights),
start `camserve serve` on a free loopback port, run the closed-loop sweep with camserve's load
generator (encoded PNG images over gRPC), stop the server, then run the tf-keras-vis Grad-CAM
loop in this process at the same concurrencies on the same images and the same cores. Prints
both tables and the throughput ratio; writes JSON and a latency-throughput PNG per model to
bench/results/. With --target, measures an already running server instead (e.g. `make serve`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from camserve_client.tools.loadgen import LoadConfig, run_load
from camserve_client.tools.loadreport import format_table, json_safe, write_plot
from camserve_client.tools.testimages import generated

APPLICATIONS = {
    "mobilenetv2": ("MobileNetV2", "tf"),
    "resnet50": ("ResNet50", "caffe"),
    "vgg16": ("VGG16", "caffe"),
    "efficientnetb0": ("EfficientNetB0", "none"),
}
RESULTS = Path(__file__).resolve().parents[1] / "results"


def model_folder(name: str, root: Path, max_batch_size: int) -> Path:
    """A repository model folder for `name` inside `root` (demo, an application name, or a path)."""
    src = Path(name)
    if (src / "config.json").is_file():
        dest = root / src.name
        shutil.copytree(src, dest)
        return dest
    if name == "demo":
        from camserve.repository import bundled_repository_path

        demo = bundled_repository_path() / "demo"
        if not (demo / "config.json").is_file():
            raise SystemExit(f"the bundled demo model is missing ({demo}); build it first")
        dest = root / "demo"
        shutil.copytree(demo, dest)
        return dest
    if name.lower() not in APPLICATIONS:
        raise SystemExit(f"unknown model {name!r}: demo, {', '.join(APPLICATIONS)}, or a model folder")
    app, prep = APPLICATIONS[name.lower()]
    dest = root / name.lower()
    dest.mkdir(parents=True)
    (dest / "config.json").write_text(json.dumps({
        "name": name.lower(), "version": 1, "application": app, "weights": None,
        "input_shape": [224, 224, 3], "preprocessing": prep, "target_layer": None, "score": "logits",
        "batching": {"max_batch_size": max_batch_size, "max_queue_delay_ms": 2.0, "max_queue_size": 512}}))
    return dest


def compare(camserve: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """camserve / baseline throughput and p99 at each concurrency both measured."""
    base = {s["concurrency"]: s for s in baseline}
    rows = []
    for s in camserve:
        b = base.get(s.get("concurrency"))
        if b is None:
            continue
        ratio = s["throughput_img_s"] / b["throughput_img_s"] if b["throughput_img_s"] else math.inf
        rows.append({"concurrency": s["concurrency"], "camserve_img_s": s["throughput_img_s"],
                     "camserve_p99_ms": s["latency_ms"]["p99"], "baseline_img_s": b["throughput_img_s"],
                     "baseline_p99_ms": b["latency_ms"]["p99"], "ratio": ratio})
    return rows


def format_comparison(model: str, rows: list[dict[str, Any]], best: float) -> str:
    lines = [f"{'model':14s}{'conc':>5s}{'camserve img/s':>16s}{'p99 ms':>9s}{'tf-keras-vis img/s':>20s}"
             f"{'p99 ms':>9s}{'ratio':>8s}"]
    for r in rows:
        lines.append(f"{model:14s}{r['concurrency']:5g}{r['camserve_img_s']:16.1f}{r['camserve_p99_ms']:9.1f}"
                     f"{r['baseline_img_s']:20.2f}{r['baseline_p99_ms']:9.1f}{r['ratio']:7.1f}x")
    lines.append(f"{model:14s} best camserve / best tf-keras-vis throughput: {best:.1f}x (target >= 10x)")
    return "\n".join(lines)


def run_model(name: str, args: argparse.Namespace, levels: list[int],
              base_levels: list[int]) -> dict[str, Any]:
    from tests.serverproc import start_server

    with tempfile.TemporaryDirectory(prefix="camserve-bench-repo-") as tmp:
        folder = model_folder(name, Path(tmp), args.max_batch_size)
        name = folder.name
        cfg = LoadConfig(concurrency=levels, duration_s=args.duration, warmup_s=args.warmup,
                         images=args.images, image_count=args.image_count, payload=args.payload,
                         method=args.method, quiet=args.quiet)
        if args.target:
            cfg.target, cfg.model = args.target, folder.name
            report = run_load(cfg)
            startup = None
        else:
            extra = ["--compile", args.compile] if args.compile else []
            print(f"[{name}] starting camserve (compiling every bucket) ...", file=sys.stderr)
            server = start_server(*extra, repository=Path(tmp), workers=args.workers, metrics_port=-1,
                                  timeout=900)
            startup = server.startup_s
            try:
                cfg.target = server.target
                report = run_load(cfg)
            finally:
                server.stop()
        print(f"\n[{name}] camserve: {report['images']}, server ready in "
              f"{startup if startup is None else round(startup, 1)} s")
        print(format_table(report["steps"]))
        result: dict[str, Any] = {"model": name, "camserve": report, "server_startup_s": startup}
        if args.no_baseline:
            return result
        from bench.baseline.tfkv import TfKerasVisBaseline

        layer = report["model"].get("target_layer") or None
        if layer and "/" in layer:
            layer = None  # tf-keras-vis cannot reach inside nested models: its own choice then
        base = TfKerasVisBaseline(folder, layer)
        size = int(base.cfg["input_shape"][0])
        images, _ = generated(cfg.image_count, size, cfg.images, cfg.seed)  # the same images
        steps = []
        for c in base_levels:
            print(f"[{name}] tf-keras-vis per request, {c} thread(s) ...", file=sys.stderr)
            steps.append(base.run(images, c, args.baseline_duration or args.duration, args.warmup))
        print(f"[{name}] tf-keras-vis Gradcam (ReplaceToLinear) per request, layer {base.target_layer}")
        print(format_table(steps, "tfkv"))
        rows = compare(report["steps"], steps)
        best_c = max((s["throughput_img_s"] for s in report["steps"]), default=0.0)
        best_b = max((s["throughput_img_s"] for s in steps), default=0.0)
        best = best_c / best_b if best_b else math.inf
        print(format_comparison(name, rows, best))
        result.update(baseline=steps, comparison=rows, best_ratio=best)
        return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="demo", help="comma-separated: demo, mobilenetv2, resnet50, ... "
                   "or model folders (default demo)")
    p.add_argument("--target", help="measure this running server instead of starting one (the models "
                   "must be served there under the same names)")
    p.add_argument("--concurrency", default="1,4,16,64", help="closed-loop levels (default 1,4,16,64)")
    p.add_argument("--baseline-concurrency", help="levels for tf-keras-vis (default: the same)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per step (default 20)")
    p.add_argument("--baseline-duration", type=float, help="seconds per baseline step (default --duration)")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--method", default="gradcam")
    p.add_argument("--images", default="auto", help="auto | digits | photos | noise | a folder")
    p.add_argument("--image-count", type=int, default=64)
    p.add_argument("--payload", default="png", choices=["png", "jpeg", "raw"])
    p.add_argument("--max-batch-size", type=int, default=32, help="for the generated application models")
    p.add_argument("--workers", default="auto", help="camserve serve --workers (default auto)")
    p.add_argument("--compile", choices=["auto", "xla", "graph"])
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON and PNG folder (default bench/results)")
    p.add_argument("--quick", action="store_true", help="smoke run: concurrency 1,4, 2 s steps, 16 images")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.concurrency = "1,4" if args.concurrency == "1,4,16,64" else args.concurrency
        args.duration, args.warmup = min(args.duration, 2.0), min(args.warmup, 1.0)
        args.image_count = min(args.image_count, 16)
        args.max_batch_size = min(args.max_batch_size, 8)
    levels = [int(c) for c in args.concurrency.split(",")]
    base_levels = [int(c) for c in (args.baseline_concurrency or args.concurrency).split(",")]
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        result = run_model(name, args, levels, base_levels)
        results.append(result)
        series = {"camserve": result["camserve"]["steps"]}
        if "baseline" in result:
            series["tf-keras-vis"] = result["baseline"]
        tag = Path(name).name
        png = args.out / f"load-{tag}-{stamp}.png"
        if write_plot(series, png, f"{tag}: camserve vs per-request tf-keras-vis ({args.method})"):
            print(f"wrote {png}")
    out = args.out / f"load-{stamp}.json"
    out.write_text(json.dumps(json_safe({"command": "python -m bench.load " + " ".join(argv or sys.argv[1:]),
                                      "results": results}), indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

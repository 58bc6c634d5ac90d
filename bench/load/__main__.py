"""camserve under load beside the per-request tf-keras-vis loop, same model, images and cores.

    python -m bench.load --quick                       # smoke run: demo model, concurrency 1,4, 2 s steps
    python -m bench.load --models demo,mobilenetv2,resnet50 --concurrency 1,4,16,64 --duration 20
    python -m bench.load --protocols camserve,oip --rounds 3 --no-baseline   # camserve.v1 vs KServe v2

For each model: write a model repository in a temp folder (the bundled demo model, or a
keras.applications model with `"weights": null` at 224x224: speed does not depend on weights),
start `camserve serve` on a free loopback port, run the closed-loop sweep with camserve's load
generator (encoded PNG images over gRPC), stop the server, then run the tf-keras-vis Grad-CAM
loop in this process at the same concurrencies on the same images and the same cores. Prints
both tables and the throughput ratio; writes JSON and a latency-throughput PNG per model to
bench/results/. With --target, measures an already running server instead (e.g. `make serve`).

--protocols camserve,oip drives the same server through camserve.v1 Explain and through the Open
Inference Protocol's ModelInfer (the same images, IMAGE rows), alternating protocols for --rounds
rounds so that a noisy machine hurts both alike, and prints each protocol's median throughput per
concurrency and the ratio oip / camserve (the tf-keras-vis baseline uses the first protocol's run),
and, for a server it started, the CPU per answered call of each protocol (server parent, workers,
this client): throughput swings with whatever else runs on a shared machine, CPU time per call hardly
does.

Throughput counts a call when it completes inside the measured window (``loadreport.Window``, the rule
of every camserve load tool). Exit 1 when any step (camserve or tf-keras-vis) had an error or no
success: no ratio is made from a side that failed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from camserve_client.tools.loadgen import LoadConfig, run_load
from camserve_client.tools.loadreport import format_table, step_problems, write_plot
from camserve_client.tools.testimages import generated

from bench import finish

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


def ratio_of(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN (never infinity) when the denominator measured nothing: a failed
    side makes no ratio (and the run exits non-zero, see ``step_problems``)."""
    return numerator / denominator if denominator > 0 else math.nan


def compare(camserve: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """camserve / baseline throughput and p99 at each concurrency both measured."""
    base = {s["concurrency"]: s for s in baseline}
    rows = []
    for s in camserve:
        b = base.get(s.get("concurrency"))
        if b is None:
            continue
        ratio = ratio_of(s["throughput_img_s"], b["throughput_img_s"])
        rows.append({"concurrency": s["concurrency"], "camserve_img_s": s["throughput_img_s"],
                     "camserve_p99_ms": s["latency_ms"]["p99"], "baseline_img_s": b["throughput_img_s"],
                     "baseline_p99_ms": b["latency_ms"]["p99"], "ratio": ratio})
    return rows


def _times(ratio: float) -> str:
    return "n/a" if math.isnan(ratio) else f"{ratio:.1f}x"


def format_comparison(model: str, rows: list[dict[str, Any]], best: float) -> str:
    lines = [f"{'model':14s}{'conc':>5s}{'camserve img/s':>16s}{'p99 ms':>9s}{'tf-keras-vis img/s':>20s}"
             f"{'p99 ms':>9s}{'ratio':>8s}"]
    for r in rows:
        lines.append(f"{model:14s}{r['concurrency']:5g}{r['camserve_img_s']:16.1f}{r['camserve_p99_ms']:9.1f}"
                     f"{r['baseline_img_s']:20.2f}{r['baseline_p99_ms']:9.1f}{_times(r['ratio']):>8s}")
    lines.append(f"{model:14s} best camserve / best tf-keras-vis throughput: {_times(best)} (target >= 10x)")
    return "\n".join(lines)


#: The RPC each protocol's load calls (what camserve_requests_total counts it under).
RPC_OF = {"camserve": "Explain", "oip": "ModelInfer"}


def server_usage(server: Any, protocol: str) -> tuple[float, float, float, float] | None:
    """(parent CPU s, workers' CPU s, OK calls of the protocol's RPC so far, this client's CPU s) of a
    server we started."""
    if server is None:
        return None
    parent, workers = server.cpu_seconds()
    calls = server.metric("camserve_requests_total", method=RPC_OF[protocol], code="OK")
    return parent, workers, calls, time.process_time()


def cpu_per_call(before: Any, after: Any) -> dict[str, float] | None:
    """Server CPU per answered call between two usages, warm-up included: unlike throughput on a shared
    machine, CPU time hardly depends on what else runs, so it compares protocols robustly."""
    if before is None or after is None or after[2] <= before[2]:
        return None
    calls = after[2] - before[2]
    return {"parent": 1e3 * (after[0] - before[0]) / calls, "workers": 1e3 * (after[1] - before[1]) / calls,
            "client": 1e3 * (after[3] - before[3]) / calls, "calls": calls}


def protocol_rows(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per concurrency: each protocol's median throughput and p50/p99 over its rounds, and the ratio of
    each protocol to the first one."""
    first = next(iter(runs))
    levels = [s["concurrency"] for s in runs[first][0]["steps"]]
    rows = []
    for i, level in enumerate(levels):
        row: dict[str, Any] = {"concurrency": level}
        for proto, reports in runs.items():
            steps = [r["steps"][i] for r in reports]
            row[proto] = {"img_s": statistics.median(s["throughput_img_s"] for s in steps),
                          "p50_ms": statistics.median(s["latency_ms"]["p50"] for s in steps),
                          "p99_ms": statistics.median(s["latency_ms"]["p99"] for s in steps),
                          "rounds_img_s": [round(s["throughput_img_s"], 1) for s in steps]}
        for proto in runs:
            row[proto]["ratio"] = ratio_of(row[proto]["img_s"], row[first]["img_s"])
        rows.append(row)
    for proto, reports in runs.items():  # the server's CPU per call, whole runs (every level)
        cpu = [r["server_cpu_ms_per_call"] for r in reports if r.get("server_cpu_ms_per_call")]
        for row in rows:
            for part in ("parent", "workers", "client"):
                row[proto][f"{part}_cpu_ms"] = statistics.median(c[part] for c in cpu) if cpu else math.nan
    return rows


def format_protocols(model: str, rows: list[dict[str, Any]]) -> str:
    protos = [k for k in rows[0] if k != "concurrency"] if rows else []
    head = f"{'model':14s}{'conc':>5s}" + "".join(
        f"{p + ' img/s':>16s}{'p50 ms':>9s}{'p99 ms':>9s}" for p in protos)
    lines = [head + f"{'ratio':>8s}  per-round img/s"]
    for r in rows:
        cells = "".join(f"{r[p]['img_s']:16.1f}{r[p]['p50_ms']:9.1f}{r[p]['p99_ms']:9.1f}" for p in protos)
        rounds = "  ".join(f"{p} {r[p]['rounds_img_s']}" for p in protos)
        lines.append(f"{model:14s}{r['concurrency']:5g}{cells}{r[protos[-1]]['ratio']:8.3f}  {rounds}")
    if rows:
        for part in ("parent", "workers", "client"):
            cpu = ", ".join(f"{p} {rows[0][p][f'{part}_cpu_ms']:.3f}" for p in protos)
            lines.append(f"{model:14s} {part} CPU ms per call (median of rounds, all levels): {cpu}")
    return "\n".join(lines)


def run_model(name: str, args: argparse.Namespace, levels: list[int],
              base_levels: list[int]) -> dict[str, Any]:
    from bench import start_server

    with tempfile.TemporaryDirectory(prefix="camserve-bench-repo-") as tmp:
        folder = model_folder(name, Path(tmp), args.max_batch_size)
        name = folder.name
        cfg = LoadConfig(concurrency=levels, duration_s=args.duration, warmup_s=args.warmup,
                         images=args.images, image_count=args.image_count, payload=args.payload,
                         method=args.method, quiet=args.quiet)
        protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]

        def sweep(server: Any = None) -> dict[str, list[dict[str, Any]]]:
            runs: dict[str, list[dict[str, Any]]] = {p: [] for p in protocols}
            for _ in range(max(1, args.rounds)):
                for proto in protocols:
                    cfg.protocol = proto
                    before = server_usage(server, proto)
                    report = run_load(cfg)
                    report["server_cpu_ms_per_call"] = cpu_per_call(before, server_usage(server, proto))
                    runs[proto].append(report)
            return runs

        if args.target:
            cfg.target, cfg.model = args.target, folder.name
            runs = sweep()
            startup = None
        else:
            extra = ["--max-batch-size", str(args.max_batch_size)]  # every model, the demo's too
            extra += ["--compile", args.compile] if args.compile else []
            print(f"[{name}] starting camserve (compiling every bucket) ...", file=sys.stderr)
            server = start_server(*extra, repository=Path(tmp), workers=args.workers,
                                  timeout=900)
            startup = server.startup_s
            try:
                cfg.target = server.target
                runs = sweep(server)
            finally:
                server.stop()
        report = runs[protocols[0]][0]
        print(f"\n[{name}] camserve ({protocols[0]}): {report['images']}, server ready in "
              f"{startup if startup is None else round(startup, 1)} s")
        print(format_table(report["steps"]))
        result: dict[str, Any] = {"model": name, "camserve": report, "server_startup_s": startup,
                                  "problems": [p for proto, reports in runs.items() for r in reports
                                               for p in step_problems(r["steps"], f"{name} {proto}")]}
        if len(protocols) > 1:
            rows = protocol_rows(runs)
            print(f"\n[{name}] protocols, median of {max(1, args.rounds)} alternating round(s):")
            print(format_protocols(name, rows))
            result.update(protocols={p: [r["steps"] for r in reports] for p, reports in runs.items()},
                          cpu_ms_per_call={p: [r["server_cpu_ms_per_call"] for r in reports]
                                           for p, reports in runs.items()},
                          protocol_comparison=rows)
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
        best = ratio_of(best_c, best_b)
        print(format_comparison(name, rows, best))
        result.update(baseline=steps, comparison=rows, best_ratio=best)
        result["problems"] += step_problems(steps, f"{name} tf-keras-vis")
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
    p.add_argument("--protocols", default="camserve",
                   help="comma-separated: camserve (camserve.v1 Explain) and/or oip (the Open Inference "
                        "Protocol's ModelInfer); with two, prints the throughput ratio (default camserve)")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate the protocols this many times and report medians (default 1)")
    p.add_argument("--max-batch-size", type=int, default=32,
                   help="the server's --max-batch-size, for every model it serves (default 32)")
    p.add_argument("--workers", default="auto", help="camserve serve --workers (default auto)")
    p.add_argument("--compile", choices=["auto", "xla", "graph"])
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON and PNG folder (default bench/results)")
    p.add_argument("--json", type=Path, help="the JSON report's path, the plots beside it "
                   "(default OUT/load-TIME.json)")
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
    if args.json:  # the plots go beside the JSON
        args.out = args.json.parent
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
    out = args.json or args.out / f"load-{stamp}.json"
    problems = [p for r in results for p in r["problems"]]
    return finish("bench.load", out, {"command": "python -m bench.load " + " ".join(argv or sys.argv[1:]),
                                      "results": results}, problems)


if __name__ == "__main__":
    sys.exit(main())

"""Served throughput at saturation (gRPC, JPEG images) vs the in-process engine, side by side in one run.

For each model, at the same max batch size and compile mode:

1. ``engine``: ``Explainer.explain_batch`` on full batches of uint8 images already at the input size,
   in this process, back to back for a fixed time (what a library user gets with perfect batching);
2. ``served``: a real ``camserve serve`` subprocess (one worker), driven over gRPC by the project's load
   generator, a closed loop of ``--concurrency`` callers (enough to keep a full batch queued while one
   computes) sending JPEG bytes, for the same time after a warm-up; a call counts when it completes
   inside the measured window (``loadreport.Window``, the rule of every load tool). The client
   pre-serializes every request and sends raw bytes, so its CPU goes to gRPC, not protobuf; it shares
   the machine's cores with the server.

The ratio served / engine is the price of the network front (decode, gRPC, queueing, the process
hop). Target: >= 0.85. The two never run at once, so they never compete for cores. With ``--rounds R``
the engine's and the server's windows alternate R times (the explainer is built and the server started
once) and the ratio is the median of the rounds' ratios: this machine's speed drifts by tens of
percent within minutes (the demo's in-process rate ranged 2,224-3,316 img/s over four runs in twenty
minutes), which one engine window followed by one served window takes for a change of ratio.

    python -m bench.serve --quick        # demo model, short steps (a check that it works)
    python -m bench.serve                # demo + MobileNetV2 224 (weights=None), 20 s steps
    python -m bench.serve --models demo --rounds 3 --duration 10

Prints a table and writes JSON to bench/results/serve[_quick].json. Exits 1 when a served step had an
error or no success, or the server's exit code said its drain lost calls.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np

from bench import finish, start_server

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
#: name -> (keras.applications name, preprocessing, input side); "demo" is the bundled model.
APPLICATIONS = {"mobilenetv2": ("MobileNetV2", "tf", 224), "resnet50": ("ResNet50", "caffe", 224)}


# ----------------------------------------------------------------------------------------- setup


def prepare_repository(name: str, root: Path, max_batch: int, repository: Path | None = None) -> Path:
    """A repository folder serving `name`: the given one, the bundled demo, or a keras.applications model."""
    from camserve.repository import bundled_repository_path

    if repository is not None:
        return repository
    if name == "demo":
        demo = bundled_repository_path() / "demo"
        if not (demo / "config.json").is_file():
            raise SystemExit(f"no demo model at {demo}: run `python -m camserve.demo.train` first")
        return demo.parent
    app, prep, side = APPLICATIONS[name]
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "name": name, "version": 1, "application": app, "weights": None, "input_shape": [side, side, 3],
        "preprocessing": prep, "target_layer": None, "score": "logits",
        "batching": {"max_batch_size": max_batch, "max_queue_delay_ms": 2.0, "max_queue_size": 1024}}))
    return root


def photos(n: int, side: int) -> list[np.ndarray]:
    """n RGB uint8 crops of real photographs (scikit-image) or cluttered digits for small inputs."""
    if side <= 96:
        from camserve.demo.digits import generate

        imgs = generate(n, "heldout", 3).images
        return [cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA) for im in imgs]
    from skimage import data

    sources = [data.chelsea(), data.coffee(), data.astronaut()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        s = int(min(h, w) * rng.uniform(0.6, 1.0))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        out.append(cv2.resize(src[y:y + s, x:x + s], (side, side), interpolation=cv2.INTER_AREA))
    return out


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


# ----------------------------------------------------------------------------------------- engine


def engine_runner(repo: Path, name: str, images: list[np.ndarray], max_batch: int, compile_mode: str
                  ) -> Callable[[float], dict[str, Any]]:
    """``run(duration)``: full batches through Explainer.explain_batch in this process for ``duration``
    seconds (images decoded as the server does); the explainer is built and warmed up here, once."""
    import keras
    from camserve.engine import Explainer
    from camserve.records import ItemSpec
    from camserve.repository import load_repository

    cfg = load_repository(repo)[name]
    if cfg.model_file:
        model = keras.saving.load_model(cfg.model_path, compile=False)
    else:
        model = getattr(keras.applications, cfg.application)(weights=None, input_shape=cfg.input_shape)
    explainer = Explainer(model, target_layer=cfg.target_layer, preprocessing=cfg.preprocessing,
                          compile_mode=compile_mode, max_batch_size=max_batch, score=cfg.score)
    explainer.warmup()
    h, w, _ = cfg.input_shape
    pixels = np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) for im in images])
    batch = np.stack([pixels[i % len(pixels)] for i in range(max_batch)])
    specs = [ItemSpec(method="gradcam")] * max_batch
    explainer.explain_batch(batch, specs)

    def run(duration: float) -> dict[str, Any]:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < duration:
            explainer.explain_batch(batch, specs)
            n += max_batch
        elapsed = time.perf_counter() - t0
        return {"images": n, "seconds": elapsed, "images_per_s": n / elapsed,
                "compile_mode": explainer.info.compile_mode}

    return run


def closed_loop(target: str, model: str, payloads: list[bytes], concurrency: int, warmup: float,
                duration: float, per_call: int = 1) -> dict[str, Any]:
    """`concurrency` callers of the project's load generator, each sending its next pre-serialized
    request (an ExplainBatchRequest of `per_call` images when > 1) when the previous answer arrives;
    counted by completion time inside the window after `warmup` (``loadreport.Window``)."""
    from camserve_client.tools.loadgen import LoadConfig, LoadGenerator

    cfg = LoadConfig(target=target, model=model, concurrency=[concurrency], duration_s=duration,
                     warmup_s=warmup, batch_per_call=per_call, timeout_s=60.0, quiet=True)
    (step,) = LoadGenerator(cfg, payloads, "JPEG photos").run()["steps"]
    lat = step["latency_ms"]
    return {"images": step["requests_ok"] * per_call, "calls": step["requests_ok"],
            "images_per_call": per_call, "seconds": duration, "images_per_s": step["throughput_img_s"],
            "p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"],
            "mean_batch": step["batch_size_mean"], "queue_ms_mean": step["server_queue_ms"]["mean"],
            "compute_ms_mean": step["server_compute_ms"]["mean"], "errors": step["errors"], "step": step}


# ----------------------------------------------------------------------------------------- main


def run_model(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    repo = prepare_repository(name, tmp / "repo", args.max_batch_size, args.repository)
    from camserve.repository import load_repository

    cfg = load_repository(repo)[name]
    side = args.image_size or cfg.input_shape[0]
    images = photos(args.images, side)
    payloads_jpeg = [jpeg_bytes(im) for im in images]
    print(f"[{name}] in-process engine: batch {args.max_batch_size}, {args.duration:.0f} s ...", flush=True)
    engine_run = engine_runner(repo, name, images, args.max_batch_size, args.compile)
    from camserve_proto import explain_pb2 as pb

    reqs = [pb.ExplainRequest(model=name, image=pb.Image(encoded=b)) for b in payloads_jpeg]
    k = args.batch_per_call
    if k > 1:
        payloads = [pb.ExplainBatchRequest(requests=[reqs[(i + j) % len(reqs)] for j in range(k)])
                    .SerializeToString() for i in range(len(reqs))]
    else:
        payloads = [r.SerializeToString() for r in reqs]
    rounds: list[dict[str, Any]] = []
    server = None
    try:
        for r in range(max(1, args.rounds)):
            engine = engine_run(args.duration)
            print(f"[{name}]   {engine['images_per_s']:.1f} img/s", flush=True)
            if server is None:
                print(f"[{name}] starting camserve serve ({args.workers}) ...", flush=True)
                server = start_server("--max-batch-size", str(args.max_batch_size), "--compile", args.compile,
                                      "--max-queue-size", "4096", "--frontends", str(args.frontends),
                                      repository=repo, workers=args.workers, timeout=900)
                print(f"[{name}]   SERVING after {server.startup_s:.1f} s; closed loop, concurrency "
                      f"{args.concurrency}, {args.warmup:.0f} s warm-up + {args.duration:.0f} s ...",
                      flush=True)
            served = serve_window(server, name, payloads, args, k)
            ratio = served["images_per_s"] / engine["images_per_s"] if served["calls"] else math.nan
            rounds.append({"engine": engine, "served": served, "ratio": ratio})
            parent, worker = (served.get(f"{x}_cpu_ms_per_image", math.nan) for x in ("parent", "worker"))
            print(f"[{name}]   round {r + 1}: {served['images_per_s']:.1f} img/s served, ratio {ratio:.3f}; "
                  f"CPU per image: server parent {parent:.2f} ms, worker {worker:.2f} ms", flush=True)
    finally:
        exit_code = server.stop() if server is not None else 1
    # The median round stands for the run (its engine and served figures are that round's).
    median = sorted(rounds, key=lambda x: x["ratio"])[(len(rounds) - 1) // 2]
    engine, served, ratio = median["engine"], median["served"], median["ratio"]
    return {"model": name, "input_shape": list(cfg.input_shape), "image_side_sent": side,
            "jpeg_bytes_mean": float(np.mean([len(p) for p in payloads_jpeg])),
            "max_batch_size": args.max_batch_size, "compile": engine["compile_mode"], "engine": engine,
            "served": served, "ratio": ratio, "server_exit_code": exit_code, "workers": args.workers,
            "concurrency": args.concurrency, "images_per_call": k,
            "rounds": [{"engine_img_s": x["engine"]["images_per_s"],
                        "served_img_s": x["served"]["images_per_s"], "ratio": x["ratio"]} for x in rounds]}


def serve_window(server: Any, name: str, payloads: list[bytes], args: argparse.Namespace, k: int
                 ) -> dict[str, Any]:
    """One served window (:func:`closed_loop`) with the server's CPU per image over it."""
    cpu0, count0 = server.cpu_seconds(), server.metric("camserve_batch_size_sum", model=name)
    served = closed_loop(server.target, name, payloads, args.concurrency, args.warmup, args.duration, k)
    cpu1, count1 = server.cpu_seconds(), server.metric("camserve_batch_size_sum", model=name)
    if count1 > count0:
        per = 1e3 / (count1 - count0)
        served["parent_cpu_ms_per_image"] = (cpu1[0] - cpu0[0]) * per  # supervisor + front ends
        served["worker_cpu_ms_per_image"] = (cpu1[1] - cpu0[1]) * per
    served["server_mean_batch"] = (server.metric("camserve_batch_size_sum", model=name)
                                   / max(1.0, server.metric("camserve_batch_size_count", model=name)))
    return served


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="demo model only, 2 s warm-up, 4 s steps")
    p.add_argument("--models", default=None, help="comma list of demo, mobilenetv2, resnet50 "
                   "(default: demo,mobilenetv2; --quick: demo)")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=None, help="callers in flight (default 3 x max batch)")
    p.add_argument("--duration", type=float, default=None, help="seconds measured per side (default 20)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of served load not counted (default 5)")
    p.add_argument("--workers", default="cpu:1", help="the server's --workers")
    p.add_argument("--frontends", type=int, default=0, help="the server's --frontends (0 = its default; the "
                   "load comes on one connection, so one front end serves it)")
    p.add_argument("--batch-per-call", type=int, default=1,
                   help="images per call: 1 = Explain (the headline), k > 1 = ExplainBatch of k images")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate the engine's and the server's windows this many times; the ratio is "
                        "the median round's (default 1)")
    p.add_argument("--compile", default="auto", choices=("auto", "graph", "xla"))
    p.add_argument("--images", type=int, default=48, help="distinct images cycled through")
    p.add_argument("--image-size", type=int, default=None,
                   help="side of the JPEGs sent (default: the model's input size)")
    p.add_argument("--repository", type=Path, default=None,
                   help="serve --models from this model repository instead (e.g. your own model)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    models = (args.models or ("demo" if args.quick else "demo,mobilenetv2")).split(",")
    args.duration = args.duration or (4.0 if args.quick else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if args.quick else 5.0)
    args.concurrency = args.concurrency or max(2, 3 * args.max_batch_size // max(1, args.batch_per_call))
    out = args.out or RESULTS / ("serve_quick.json" if args.quick else "serve.json")
    results = []
    with tempfile.TemporaryDirectory(prefix="camserve-bench-serve-") as tmp:
        for name in models:
            if name != "demo" and name not in APPLICATIONS and args.repository is None:
                raise SystemExit(f"unknown model {name!r}; choose from demo, {', '.join(APPLICATIONS)}")
            results.append(run_model(name, args, Path(tmp)))
    print()
    print(f"{'model':<12} {'batch':>5} {'engine img/s':>13} {'served img/s':>13} {'ratio':>6} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'mean batch':>10} {'queue ms':>9} {'compute ms':>10}")
    for r in results:
        s = r["served"]
        print(f"{r['model']:<12} {r['max_batch_size']:>5} {r['engine']['images_per_s']:>13.1f} "
              f"{s['images_per_s']:>13.1f} {r['ratio']:>6.3f} {s['p50_ms']:>7.1f} {s['p99_ms']:>7.1f} "
              f"{s['mean_batch']:>10.1f} {s['queue_ms_mean']:>9.1f} {s['compute_ms_mean']:>10.1f}")
    from camserve_client.tools.loadreport import step_problems

    problems = [p for r in results for p in step_problems([r["served"]["step"]], r["model"])]
    problems += [f"{r['model']}: the server exited {r['server_exit_code']}" for r in results
                 if r["server_exit_code"] != 0]
    doc = {"benchmark": "served throughput (gRPC, JPEG) / in-process engine throughput",
           "command": "python -m bench.serve " + " ".join(argv if argv is not None else sys.argv[1:]),
           "target_ratio": 0.85, "cpu_count": os.cpu_count(), "platform": platform.platform(),
           "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "results": results, "problems": problems}
    print()
    return finish("bench.serve", out, doc, problems)


if __name__ == "__main__":
    sys.exit(main())

"""GPU benchmarks through Keras-on-JAX (the lent GPU machines carry JAX and CUDA, no TensorFlow).

Three parts, each a separate process started by ``bench/gpu/run.sh`` (a process's JAX holds on to the
GPU memory it took, so the served part must not share a process with the engine part):

- ``engine``: ResNet50 and MobileNetV2 (224x224, ``weights=None``: speed does not depend on weights),
  float32 and mixed_bfloat16, batch 1..256. Per cell, interleaved call by call, the median of:
  ``forward`` (jitted ``model(x, training=False)``, same uint8 input and in-step preprocessing),
  ``step`` (the engine's Grad-CAM step: forward + d score / d activations, results on the host) and
  ``gradcam`` (the whole ``Explainer.explain_batch``: step + NumPy weighting + normalisation). The
  ratio gradcam / forward is the DESIGN target (>= 0.95). Cells run in priority order within a time
  budget; the JSON is rewritten after every cell, so a cut-off run still reports what it measured.
- ``serve``: ``camserve serve --backend jax --workers gpu`` (``cpu:1`` with ``--cpu``) on a ResNet50
  repository, driven on the same machine by ``camserve_client.tools.loadgen`` (closed loop, JPEG bytes at
  the model size, Grad-CAM at the conv grid); throughput and p50/p90/p99 per concurrency.
- ``report``: one Markdown table (``summary.md``) from the JSON files.

    bench/gpu/run.sh            # on the GPU machine (writes under $OUT)
    bench/gpu/run.sh --cpu      # the same end to end on CPU with tiny settings (a check that it works)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: keras.applications name -> preprocessing mode of its weights
APPLICATIONS = {"ResNet50": "caffe", "MobileNetV2": "tf"}
#: engine-part models -> preprocessing: the applications, and "tiny" (four layers: a check of the
#: script's code paths in seconds, in tests/jax, where a real network's XLA compile takes minutes)
ENGINE_MODELS = {**APPLICATIONS, "tiny": "tf"}
PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16"}


# ------------------------------------------------------------------------------------------ common
def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The full GPU settings, or tiny ones with --cpu (same code path end to end)."""
    if args.cpu:
        s = {"size": 32, "batches": [4, 1], "models": ["MobileNetV2", "ResNet50"],
             "precisions": ["fp32", "bf16"], "cell_s": 0.5, "min_iters": 2, "budget_s": 240.0,
             "serve_model": "MobileNetV2",
             "serve_size": 32, "serve_batch": 4, "concurrency": [1, 8], "duration_s": 2.0, "warmup_s": 1.0,
             "workers": "cpu:1"}
    else:
        # batch sizes in priority order (the table is sorted); 32 first: DESIGN's reference batch
        s = {"size": 224, "batches": [32, 64, 1, 256, 8, 128, 16, 4, 2],
             "models": ["ResNet50", "MobileNetV2"], "precisions": ["fp32", "bf16"], "cell_s": 2.0,
             "min_iters": 5, "budget_s": 210.0,
             "serve_model": "ResNet50", "serve_size": 224, "serve_batch": 64, "concurrency": [64, 256],
             "duration_s": 10.0, "warmup_s": 3.0, "workers": "gpu"}
    for key in ("budget_s", "cell_s"):
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    if getattr(args, "concurrency", None):
        s["concurrency"] = [int(c) for c in args.concurrency.split(",")]
    if getattr(args, "batches", None):
        s["batches"] = [int(b) for b in args.batches.split(",")]
    if getattr(args, "models", None):
        s["models"] = args.models.split(",")
    return s


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def machine() -> dict[str, Any]:
    """What ran the benchmark (device, versions) for the report."""
    import jax
    import keras

    dev = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "device": str(getattr(dev, "device_kind", dev.platform)),
        "device_platform": dev.platform,
        "device_count": jax.device_count(),
        "tensorflow_imported": "tensorflow" in sys.modules,
        "date": time.strftime("%Y-%m-%d"),
    }


# ------------------------------------------------------------------------------------------ engine
def transfer_gbps(mib: int = 64, repeats: int = 5) -> dict[str, float]:
    """Host -> device and device -> host copy rates of one NumPy array (GB/s, median of ``repeats``).

    What a step's inputs (uint8 pixels) and outputs cross each call; on the lent GPU these copies,
    not the device's arithmetic, bound a step that returns big tensors (see methods.py).
    """
    import jax
    import numpy as np

    host = np.random.default_rng(0).integers(0, 256, mib << 20, dtype=np.uint8)
    h2d, d2h = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dev = jax.device_put(host).block_until_ready()
        h2d.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        jax.device_get(dev)
        d2h.append(time.perf_counter() - t0)
    size = host.nbytes / 1e9
    return {"h2d": size / statistics.median(h2d), "d2h": size / statistics.median(d2h)}


def build_model(name: str, size: int, precision: str) -> Any:
    """A keras.applications model (or "tiny") with random weights under the given dtype policy."""
    import keras

    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        if name == "tiny":
            layers = keras.layers
            return keras.Sequential([
                keras.Input((size, size, 3)), layers.Conv2D(8, 3, activation="relu"),
                layers.Conv2D(16, 3, activation="relu", name="features"), layers.GlobalAveragePooling2D(),
                layers.Dense(10)], name="tiny")
        return getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    finally:
        keras.config.set_dtype_policy("float32")


def _median_time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_cell(explainer: Any, forward: Callable[[Any], Any], batch: int, size: int, cell_s: float,
               min_iters: int) -> dict[str, Any]:
    """Compile forward and Grad-CAM at one batch size and time them interleaved (median per call)."""
    import numpy as np
    from camserve.engine.methods import CODES
    from camserve.records import ItemSpec

    images = np.random.default_rng(batch).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    specs = [ItemSpec("gradcam")] * batch
    targets = np.full((batch, 1), -1, np.int32)
    codes = np.full(batch, CODES["gradcam"], np.int32)
    calls = {
        "forward": lambda: forward(images),
        "step": lambda: explainer.step(images, targets, codes),
        "gradcam": lambda: explainer.explain_batch(images, specs),
    }
    t0 = time.perf_counter()
    calls["forward"]()
    fwd_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    calls["step"]()
    step_compile = time.perf_counter() - t0
    first = sum(_median_time(fn) for fn in calls.values())
    iters = max(min_iters, int(cell_s / max(first, 1e-6)))
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(iters):
        for k, fn in calls.items():
            times[k].append(_median_time(fn))
    ips = {k: batch / statistics.median(v) for k, v in times.items()}
    # Full precision in the JSON: a ratio recomputed from rounded throughputs would not equal the
    # stored one; only the printed table rounds.
    return {
        "iterations": iters,
        "compile_forward_s": fwd_compile,
        "compile_step_s": step_compile,
        "forward_ips": ips["forward"],
        "step_ips": ips["step"],
        "gradcam_ips": ips["gradcam"],
        "ratio": ips["gradcam"] / ips["forward"],
        "step_ratio": ips["step"] / ips["forward"],
        "gradcam_ms": 1e3 * statistics.median(times["gradcam"]),
    }


def run_engine(args: argparse.Namespace) -> int:
    from camserve.engine import Explainer
    from camserve.engine.backend_jax import build_forward

    s = _settings(args)
    out = Path(args.out) / "engine.json"
    deadline = time.monotonic() + s["budget_s"]
    report: dict[str, Any] = {"part": "engine", "cpu_mode": args.cpu, "machine": machine(), "settings": s,
                              "rows": [], "skipped": [], "errors": []}
    print(f"engine on {report['machine']['device']} ({report['machine']['device_platform']})", flush=True)
    report["transfer_gbps"] = transfer_gbps(8 if args.cpu else 64)
    print("host->device {h2d:.2f} GB/s, device->host {d2h:.2f} GB/s (one array)".format(
        **report["transfer_gbps"]), flush=True)
    # Breadth first: every (model, precision) at the most important batch size before the next size,
    # so a run cut short by the budget still covers both models and both precisions.
    cells: dict[tuple[str, str], tuple[Any, Any]] = {}
    for model_name in s["models"]:
        for precision in s["precisions"]:
            model = build_model(model_name, s["size"], precision)
            prep = ENGINE_MODELS[model_name]
            explainer = Explainer(model, None, preprocessing=prep, compile_mode="xla",
                                  max_batch_size=max(s["batches"]), backend="jax")
            cells[model_name, precision] = (explainer, build_forward(explainer.graph, preprocessing=prep,
                                                                     jit_compile=True))
    for batch in s["batches"]:
        for (model_name, precision), (explainer, forward) in cells.items():
            if time.monotonic() > deadline:
                report["skipped"].append(f"{model_name} {precision} batch {batch}: time budget spent")
                continue
            try:
                r = bench_cell(explainer, forward, batch, s["size"], s["cell_s"], s["min_iters"])
            except Exception as exc:  # e.g. out of memory at the largest batch: report, go on, exit 1
                report["errors"].append(f"{model_name} {precision} batch {batch}: {type(exc).__name__}: "
                                        f"{str(exc)[:300]}")
                print(f"# {report['errors'][-1]}", flush=True)
                continue
            row = {"model": model_name, "input": s["size"], "precision": precision, "batch": batch,
                   "target_layer": explainer.info.target_layer, **r}
            report["rows"].append(row)
            print(f"{model_name:<12} {precision:<5} b={batch:<4} forward {r['forward_ips']:>9.1f}/s  step "
                  f"{r['step_ips']:>9.1f}/s  gradcam {r['gradcam_ips']:>9.1f}/s  ratio {r['ratio']:.3f}  "
                  f"(compile {r['compile_forward_s']:.2f}+{r['compile_step_s']:.2f} s)", flush=True)
            _write_json(out, report)
    _write_json(out, report)
    print(f"wrote {out}")
    return 0 if report["rows"] and not report["errors"] else 1


# ------------------------------------------------------------------------------------------- serve
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_repository(root: Path, model: str, size: int, max_batch: int) -> Path:
    """A one-model repository: a keras.applications model with random weights (no download)."""
    folder = root / model.lower()
    folder.mkdir(parents=True, exist_ok=True)
    labels = [f"class_{i}" for i in range(1000)]
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    cfg = {"name": model.lower(), "version": 1, "model_file": None, "application": model, "weights": None,
           "input_shape": [size, size, 3], "preprocessing": APPLICATIONS[model], "target_layer": None,
           "labels_file": "labels.txt", "score": "logits",
           "batching": {"max_batch_size": max_batch, "max_queue_delay_ms": 2.0, "max_queue_size": 4096}}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return root


def run_serve(args: argparse.Namespace) -> int:
    from camserve_client.tools.loadgen import LoadConfig
    from camserve_client.tools.loadreport import json_safe, step_problems

    from bench import start_server
    from bench.gpu.clients import load_from_processes

    s = _settings(args)
    out_dir = Path(args.out)
    report: dict[str, Any] = {"part": "serve", "cpu_mode": args.cpu, "machine": machine(), "settings": s,
                              "clients": args.clients, "connections": args.connections,
                              "batch_per_call": args.batch_per_call}
    with tempfile.TemporaryDirectory(prefix="camserve-gpu-bench-") as tmp:
        repo = make_repository(Path(tmp) / "repo", s["serve_model"], s["serve_size"], s["serve_batch"])
        with start_server("--backend", "jax", "--compile", "xla", "--drain-seconds", "10", repository=repo,
                          workers=s["workers"], metrics_port=-1, env={"KERAS_BACKEND": "jax"}, timeout=420,
                          log_path=out_dir / "server.log") as server:
            report["startup_s"] = round(server.startup_s, 1)
            print(f"server SERVING after {server.startup_s:.1f} s", flush=True)
            cfg = LoadConfig(target=server.target, method="gradcam", size="grid",
                             concurrency=s["concurrency"], duration_s=s["duration_s"], warmup_s=s["warmup_s"],
                             images="auto", image_count=64, payload="jpeg", quiet=True,
                             batch_per_call=args.batch_per_call, connections=args.connections)
            load = load_from_processes(cfg, args.clients)
    report["load"] = json_safe(load)
    for step in load["steps"]:
        lat = step["latency_ms"]
        print(f"served c={step['concurrency']:<4g} {step['throughput_img_s']:>8.1f} img/s  "
              f"p50 {lat['p50']:.1f} p90 {lat['p90']:.1f} p99 {lat['p99']:.1f} ms  "
              f"batch {step['batch_size_mean']:.1f}  "
              f"errors {step['requests_failed']}", flush=True)
    report["problems"] = step_problems(load["steps"], "served")
    _write_json(out_dir / "serve.json", report)
    print(f"wrote {out_dir / 'serve.json'}")
    for line in report["problems"]:
        print(f"bench.gpu serve: {line}", file=sys.stderr)
    return 1 if report["problems"] else 0


# ------------------------------------------------------------------------------------------ report
def summary_markdown(engine: dict[str, Any] | None, serve: dict[str, Any] | None) -> str:
    """The short table the README quotes (engine cells sorted; served steps; in-process ratio)."""
    lines: list[str] = []
    if engine:
        m = engine["machine"]
        lines += [f"### Engine on {m['device']} (JAX {m['jax']}, Keras {m['keras']}, {m['date']})", "",
                  "| model | precision | batch | forward img/s | Grad-CAM step img/s | Grad-CAM img/s "
                  "| ratio |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        rows = sorted(engine["rows"], key=lambda r: (r["model"], r["precision"] != "fp32", r["batch"]))
        for r in rows:
            lines.append(f"| {r['model']} {r['input']} | {r['precision']} | {r['batch']} | "
                         f"{r['forward_ips']:.1f} | {r['step_ips']:.1f} | {r['gradcam_ips']:.1f} | "
                         f"{r['ratio']:.3f} |")
        if "transfer_gbps" in engine:
            lines.append("- copies: host->device {h2d:.2f} GB/s, device->host {d2h:.2f} GB/s".format(
                **engine["transfer_gbps"]))
        lines += [f"- skipped: {s}" for s in engine.get("skipped", [])]
        lines += [f"- failed: {e}" for e in engine.get("errors", [])]
        lines.append("")
    if serve:
        m = serve["machine"]
        st = serve["settings"]
        model = serve["load"].get("model", {})
        lines += [f"### Served on {m['device']} ({st['serve_model']} {st['serve_size']}, "
                  f"workers {st['workers']}, max batch {st['serve_batch']}, JPEG, Grad-CAM at the conv grid, "
                  f"{serve.get('clients', 1)} client process(es), {serve.get('batch_per_call', 1)} image(s) "
                  "per call, backend "
                  f"{model.get('backend')}/{model.get('compile_mode')})", "",
                  "| concurrency | img/s | p50 ms | p90 ms | p99 ms | queue p50 ms | compute p50 ms "
                  "| mean batch |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        best = 0.0
        for step in serve["load"]["steps"]:
            lat, q, c = step["latency_ms"], step["server_queue_ms"], step["server_compute_ms"]
            best = max(best, step["throughput_img_s"])
            lines.append(f"| {step['concurrency']:g} | {step['throughput_img_s']:.1f} | {lat['p50']:.1f} | "
                         f"{lat['p90']:.1f} | {lat['p99']:.1f} | {q['p50']:.1f} | {c['p50']:.1f} | "
                         f"{step['batch_size_mean']:.1f} |")
        if engine:
            same = [r for r in engine["rows"] if r["model"] == st["serve_model"] and r["precision"] == "fp32"
                    and r["batch"] <= st["serve_batch"]]
            if same:
                ref = max(same, key=lambda r: r["batch"])
                lines.append(f"\nserved / in-process engine ({ref['model']} fp32 batch {ref['batch']}: "
                             f"{ref['gradcam_ips']:.1f} img/s) = {best / ref['gradcam_ips']:.2f}")
        lines.append("")
    return "\n".join(lines)


def run_report(args: argparse.Namespace) -> int:
    out = Path(args.out)
    parts = {}
    for name in ("engine", "serve"):
        path = out / f"{name}.json"
        parts[name] = json.loads(path.read_text()) if path.is_file() else None
    text = summary_markdown(parts["engine"], parts["serve"])
    (out / "summary.md").write_text(text)
    print(text)
    return 0 if parts["engine"] and parts["serve"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("engine", "serve", "report"))
    parser.add_argument("--cpu", action="store_true", help="tiny settings on CPU (a check that it works)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu"), help="output folder")
    parser.add_argument("--budget-s", dest="budget_s", type=float, default=None,
                        help="engine part: stop starting cells after this many seconds")
    parser.add_argument("--cell-s", dest="cell_s", type=float, default=None, help="timing seconds per cell")
    parser.add_argument("--batches", default=None, help="engine batch sizes, comma list (priority order)")
    parser.add_argument("--concurrency", default=None, help="serve part: calls in flight, comma list")
    parser.add_argument("--clients", type=int, default=1,
                        help="serve part: load-generator processes (each at concurrency / clients)")
    parser.add_argument("--connections", type=int, default=8,
                        help="serve part: TCP connections per load-generator process (the kernel gives "
                             "connections, not calls, to the server's front ends; default 8)")
    parser.add_argument("--batch-per-call", dest="batch_per_call", type=int, default=1,
                        help="serve part: images per call (> 1: ExplainBatch)")
    parser.add_argument("--models", default=None,
                        help="engine models, comma list (ResNet50,MobileNetV2; tiny: a check)")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if os.environ.get("KERAS_BACKEND") != "jax" and args.part != "report":
        print("python -m bench.gpu: set KERAS_BACKEND=jax (bench/gpu/run.sh does)", file=sys.stderr)
        return 2
    return {"engine": run_engine, "serve": run_serve, "report": run_report}[args.part](args)


if __name__ == "__main__":
    raise SystemExit(main())

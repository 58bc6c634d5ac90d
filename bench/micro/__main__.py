"""Front-end costs the README, RELIABILITY.md and ARCHITECTURE.md quote: JPEG decoding and bare gRPC.

``python -m bench.micro`` measures, on this machine:

- ``decode``: CPU time (this process's, so other processes' load hardly moves it) to decode a 224x224
  JPEG (quality 90, a photograph) with simplejpeg (libjpeg-turbo's own API, what ``front/codec.py``
  uses) and with ``cv2.imdecode`` (what it used before), and the largest pixel difference between
  the two; and ``codec.decode_encoded`` of a 640x480 photo to a 224x224 input at full size against
  reduced DCT scale (``full_size=False``, when nothing is drawn at the size sent).
- ``grpc``: a trivial async unary method (one small protobuf message in, one out) on a ``grpc.aio``
  server in its own process, called sequentially over loopback, with and without camserve's
  ``MalformedRequestInterceptor`` (always on in the server), alternating rounds: round-trip time
  and the server process's CPU time per call (all its threads), medians over rounds, and the
  interceptor's difference.
- ``hop``: the CPU cost of handing a function to a thread pool and awaiting it on the event loop
  (``run_in_executor``), over calling it inline: what decoding on a codec thread would add per image.
- ``records``: CPU per pickle round trip (dumps + loads, as each result crosses the worker's and the
  hub's pipes) of an ``ItemResult`` with 1,000 probabilities and one 7x7 map: camserve's tuple
  ``__reduce__`` against the dataclass + ndarray default it replaced.
- ``reply``: CPU to build a camserve.v1 reply (``replies.build_response``) for a model of 1,000 classes
  with one 7x7 map, and of its top-5 predictions alone: ``replies.best_classes`` (a partition)
  against the full stable argsort it replaced.
- ``batch``: CPU for a worker to make one (8, 224, 224, 3) uint8 batch of the images the pool wrote
  into its slab: ``np.stack`` (a copy, what it did before) against ``slab.stacked`` (a view).
- ``metrics``: CPU per call of a front end's metric writes (request counter and three histograms) in
  prometheus-client's multiprocess mode (memory-mapped files, what the server uses) against in-memory.

Prints a table and writes JSON (``--out``). ``--quick`` uses few repetitions (checks the script).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def _photo(height: int, width: int) -> np.ndarray:
    """A crop of scikit-image's bundled chelsea photograph at height x width (no download)."""
    import cv2
    from skimage import data

    return cv2.resize(data.chelsea(), (width, height), interpolation=cv2.INTER_AREA)


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def cpu_us(fn: Any, repeats: int, rounds: int) -> float:
    """Median over ``rounds`` of this process's CPU time per call of ``fn()`` (microseconds; all threads:
    OpenCV may resize on several)."""
    fn()
    per_round = []
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(repeats):
            fn()
        per_round.append((time.process_time() - t0) / repeats * 1e6)
    return statistics.median(per_round)


def measure_decode(repeats: int, rounds: int) -> dict[str, Any]:
    import cv2
    import simplejpeg
    from camserve.front.codec import decode_encoded

    small = _jpeg(_photo(224, 224))
    large = _jpeg(_photo(480, 640))
    a = simplejpeg.decode_jpeg(small, colorspace="RGB")
    b = cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR_RGB)
    full = cpu_us(lambda: decode_encoded(large, (224, 224, 3), full_size=True), repeats, rounds)
    reduced = cpu_us(lambda: decode_encoded(large, (224, 224, 3), full_size=False), repeats, rounds)
    return {
        "jpeg_224_q90_bytes": len(small),
        "simplejpeg_us": cpu_us(lambda: simplejpeg.decode_jpeg(small, colorspace="RGB"), repeats, rounds),
        "opencv_us": cpu_us(lambda: cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR_RGB),
                            repeats, rounds),
        "max_pixel_difference": int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()),
        "decode_640x480_to_224_full_us": full, "decode_640x480_to_224_reduced_us": reduced,
        "reduced_scale_speedup": full / reduced,
    }


# ------------------------------------------------------------------------------------------ gRPC
def _server_cpu_s(conn: Any) -> float:
    conn.send_bytes(b"cpu")
    return conn.recv()


def measure_grpc(calls: int, rounds: int) -> dict[str, Any]:
    import grpc
    from grpc_health.v1 import health_pb2

    from bench.micro.echo import METHOD, SERVICE, serve

    ctx = multiprocessing.get_context("spawn")
    servers = {}
    for variant, intercepted in (("plain", False), ("intercepted", True)):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=serve, args=(intercepted, child), daemon=True)
        proc.start()
        servers[variant] = (proc, parent, parent.recv())
    per: dict[str, dict[str, list[float]]] = {v: {"round_trip_us": [], "server_cpu_us": []} for v in servers}
    request = health_pb2.HealthCheckRequest(service="x").SerializeToString()
    try:
        for _ in range(rounds):
            for variant, (_, conn, port) in servers.items():
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    call = channel.unary_unary(f"/{SERVICE}/{METHOD}", request_serializer=None,
                                               response_deserializer=None)
                    for _ in range(50):  # connection and first-call costs stay out of the figure
                        call(request, timeout=10)
                    cpu0, t0 = _server_cpu_s(conn), time.perf_counter()
                    for _ in range(calls):
                        call(request, timeout=10)
                    elapsed, cpu = time.perf_counter() - t0, _server_cpu_s(conn) - cpu0
                per[variant]["round_trip_us"].append(elapsed / calls * 1e6)
                per[variant]["server_cpu_us"].append(cpu / calls * 1e6)
    finally:
        for proc, conn, _ in servers.values():
            conn.close()
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    out: dict[str, Any] = {"calls_per_round": calls, "rounds": rounds, "rounds_detail": per}
    for variant, figures in per.items():
        for key, values in figures.items():
            out[f"{variant}_{key}"] = statistics.median(values)
    for key in ("round_trip_us", "server_cpu_us"):
        diffs = [i - p for i, p in zip(per["intercepted"][key], per["plain"][key], strict=True)]
        out[f"interceptor_{key}"] = statistics.median(diffs)
    return out


def measure_hop(repeats: int, rounds: int) -> dict[str, Any]:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    def work() -> int:
        return 1

    async def inline() -> None:
        for _ in range(repeats):
            work()
            await asyncio.sleep(0)  # one loop turn, as an awaited decode would take

    async def hop(pool: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(repeats):
            await loop.run_in_executor(pool, work)

    def per_call(coro_fn: Any, *args: Any) -> float:
        t0 = time.process_time()
        asyncio.run(coro_fn(*args))
        return (time.process_time() - t0) / repeats * 1e6

    with ThreadPoolExecutor(2) as pool:
        inline_us = statistics.median(per_call(inline) for _ in range(rounds))
        hop_us = statistics.median(per_call(hop, pool) for _ in range(rounds))
    return {"inline_us": inline_us, "thread_hop_us": hop_us, "hop_cost_us": hop_us - inline_us}


def _default_reduce(obj: Any) -> Any:
    """What pickle does for a dataclass without ``__reduce__``: its class and its ``__dict__``."""
    import copyreg

    return copyreg.__newobj__, (type(obj),), dict(vars(obj))


def measure_records(repeats: int, rounds: int) -> dict[str, Any]:
    import io
    import pickle

    from camserve.records import ClassMap, ItemResult

    rng = np.random.default_rng(0)
    result = ItemResult(probabilities=rng.random(1000, dtype=np.float32),
                        maps=[ClassMap(3, 2.5, rng.random((7, 7), dtype=np.float32), False)],
                        queue_s=0.01, compute_s=0.02, batch_size=8)

    class DefaultPickler(pickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            return _default_reduce(obj) if type(obj) in (ItemResult, ClassMap) else NotImplemented

    def default_dumps() -> bytes:
        buf = io.BytesIO()
        DefaultPickler(buf, pickle.HIGHEST_PROTOCOL).dump(result)
        return buf.getvalue()

    tuple_bytes, default_bytes = pickle.dumps(result, pickle.HIGHEST_PROTOCOL), default_dumps()
    assert np.array_equal(pickle.loads(default_bytes).maps[0].heatmap, result.maps[0].heatmap)
    ours = cpu_us(lambda: pickle.loads(pickle.dumps(result, pickle.HIGHEST_PROTOCOL)), repeats, rounds)
    default = cpu_us(lambda: pickle.loads(default_dumps()), repeats, rounds)
    return {"tuple_reduce_us": ours, "dataclass_default_us": default, "tuple_bytes": len(tuple_bytes),
            "default_bytes": len(default_bytes)}


def measure_reply(repeats: int, rounds: int) -> dict[str, Any]:
    import tempfile

    from camserve.front.codec import DecodedImage
    from camserve.front.replies import best_classes, build_response
    from camserve.front.requests import RequestParser
    from camserve.records import ClassMap, ItemResult
    from camserve.repository import load_repository
    from camserve_client.types import build_request

    from bench.frontend.__main__ import write_repository
    from bench.frontend.standin import StandInRunner

    with tempfile.TemporaryDirectory() as tmp:
        repo = load_repository(write_repository(Path(tmp) / "repository"))
    summaries, _ = StandInRunner(repo, compile_mode="graph", backend="standin", threads=None, index=0).load()
    rgb = _photo(224, 224)
    prep = RequestParser(repo, summaries.get).prepare(build_request(_jpeg(rgb), model="m224"))
    rng = np.random.default_rng(0)
    probs = rng.random(1000, dtype=np.float32)
    probs /= probs.sum()
    result = ItemResult(probs, [ClassMap(3, 2.5, rng.random((7, 7), dtype=np.float32), False)],
                        queue_s=0.01, compute_s=0.02, batch_size=8)
    image = DecodedImage(pixels=rgb, original=rgb)
    assert best_classes(probs, 5).tolist() == np.argsort(-probs, kind="stable")[:5].tolist()
    return {"build_response_us": cpu_us(lambda: build_response(prep, image, result, 0.05), repeats, rounds),
            "best_classes_us": cpu_us(lambda: best_classes(probs, 5), repeats, rounds),
            "argsort_us": cpu_us(lambda: np.argsort(-probs, kind="stable")[:5], repeats, rounds)}


def measure_batch(repeats: int, rounds: int) -> dict[str, Any]:
    from camserve.worker.slab import read_arrays, stacked, write_arrays

    buf = memoryview(bytearray(8 * 224 * 224 * 3 + 4096))
    images = [_photo(224, 224)] * 8
    views = read_arrays(buf, write_arrays(buf, images))
    assert np.shares_memory(stacked(views), views[0])
    return {"np_stack_us": cpu_us(lambda: np.stack(views), repeats, rounds),
            "stacked_us": cpu_us(lambda: stacked(views), repeats, rounds)}


def measure_metrics(calls: int, rounds: int) -> dict[str, Any]:
    import tempfile

    from bench.micro.metrics_child import record_calls

    ctx = multiprocessing.get_context("spawn")
    out = {}
    with tempfile.TemporaryDirectory(prefix="camserve-bench-prom-") as tmp:
        for mode, directory in (("in_memory", None), ("multiprocess", tmp)):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=record_calls, args=(directory, calls, rounds, child))
            proc.start()
            out[f"{mode}_us"] = parent.recv()
            proc.join(timeout=30)
    out["multiprocess_cost_us"] = out["multiprocess_us"] - out["in_memory_us"]
    return out


#: part -> (measure(args) -> its JSON, what to print: a template over that JSON)
PARTS: dict[str, tuple[Any, str]] = {
    "decode": (lambda a: measure_decode(a.repeats, a.rounds),
               "JPEG 224x224 q90 decode, CPU per image: simplejpeg {simplejpeg_us:.0f} us, "
               "OpenCV {opencv_us:.0f} us (pixels differ by at most {max_pixel_difference})\n"
               "640x480 JPEG to a 224x224 input: full size {decode_640x480_to_224_full_us:.0f} us, "
               "reduced DCT scale {decode_640x480_to_224_reduced_us:.0f} us "
               "({reduced_scale_speedup:.1f}x less CPU)"),
    "grpc": (lambda a: measure_grpc(a.calls, a.rounds),
             "trivial async unary gRPC call, sequential over loopback ({rounds} alternating rounds of "
             "{calls_per_round}): round trip {plain_round_trip_us:.0f} us, "
             "server CPU {plain_server_cpu_us:.0f} us per call\n"
             "MalformedRequestInterceptor: {interceptor_round_trip_us:+.1f} us round trip, "
             "{interceptor_server_cpu_us:+.1f} us server CPU per call"),
    "hop": (lambda a: measure_hop(a.repeats * 4, a.rounds),
            "run_in_executor hop to a thread and back: {hop_cost_us:.0f} us of CPU per call over inline "
            "({thread_hop_us:.0f} against {inline_us:.0f})"),
    "records": (lambda a: measure_records(a.repeats * 4, a.rounds),
                "ItemResult pickle round trip: {tuple_reduce_us:.1f} us (tuple __reduce__) against "
                "{dataclass_default_us:.1f} us (the dataclass + ndarray default)"),
    "reply": (lambda a: measure_reply(a.repeats * 4, a.rounds),
              "an ExplainResponse for 1,000 classes and one 7x7 map: {build_response_us:.1f} us of CPU; "
              "its top 5 by partition {best_classes_us:.1f} us against a full stable argsort "
              "{argsort_us:.1f} us"),
    "batch": (lambda a: measure_batch(a.repeats, a.rounds),
              "a worker's batch of 8 224x224 images from its slab: np.stack {np_stack_us:.0f} us of CPU, "
              "slab.stacked (a view) {stacked_us:.0f} us"),
    "metrics": (lambda a: measure_metrics(a.repeats * 4, a.rounds),
                "a call's metric writes: {multiprocess_us:.1f} us of CPU in multiprocess mode against "
                "{in_memory_us:.1f} us in memory ({multiprocess_cost_us:+.1f} us)"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated: {', '.join(PARTS)} (default all)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    p.add_argument("--calls", type=int, default=2000, help="sequential gRPC calls per round (default 2000)")
    p.add_argument("--repeats", type=int, default=500, help="decodes per round (default 500)")
    p.add_argument("--quick", action="store_true", help="2 rounds of 100 calls and 20 decodes")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/micro.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.calls, args.repeats = 2, 100, 20
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if any(x not in PARTS for x in parts):
        p.error(f"--parts takes a comma-separated list of {', '.join(PARTS)}")
    report: dict[str, Any] = {"command": "python -m bench.micro " + " ".join(argv or sys.argv[1:]),
                              "platform": platform.platform(), "cpus": os.cpu_count(),
                              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for name in parts:
        measure, template = PARTS[name]
        report[name] = measure(args)
        print(template.format(**report[name]))
    out = args.out or RESULTS / "micro.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What classes per image and input dtype cost the engine: warm-up time, traces, CPU per image.

``python -m bench.engine.topk [--mode graph|xla] [--backend tensorflow|jax]`` builds an Explainer for
the bundled demo model (64x64, ``features`` target, its repository's preprocessing), warms it up
(timed) and then, alternating block by block so that every case sees the same machine state, runs
``explain_batch`` on one batch of ``--batch`` uint8 images asking top-1, top_k=5 and top_k=10 of
every image, and top-1 of float32 tensors. It prints, per case, this process's CPU time per image
(the minimum and the median over ``--blocks`` blocks of ``--calls`` calls: other processes' load
moves the median more than the minimum) and the step's trace count, which must not move after
warm-up. Run it on two trees (PYTHONPATH) to compare them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEMO = Path(__file__).resolve().parents[2] / "server" / "camserve" / "demo" / "repository" / "demo"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", default="graph", choices=["graph", "xla", "auto"])
    p.add_argument("--backend", default="tensorflow", choices=["tensorflow", "jax"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-batch-size", type=int, default=32, help="buckets warmed (the demo's config)")
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="few calls (checks the script)")
    args = p.parse_args()
    if args.quick:
        args.blocks, args.calls, args.max_batch_size = 2, 2, min(args.max_batch_size, 8)
    os.environ["KERAS_BACKEND"] = args.backend

    import numpy as np
    from camserve.engine import Explainer, load_model
    from camserve.records import ItemSpec

    cfg = json.loads((DEMO / "config.json").read_text())
    model = load_model(DEMO / cfg["model_file"])
    e = Explainer(model, cfg["target_layer"], preprocessing=cfg["preprocessing"], compile_mode=args.mode,
                  max_batch_size=args.max_batch_size, backend=args.backend)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    e.warmup()
    warm_cpu, warm_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    traces = e.step.trace_count()
    print(f"{args.backend} {e.compile_mode}: warm-up of buckets {e.buckets}: {warm_wall:.1f} s wall, "
          f"{warm_cpu:.1f} s CPU, {traces} traces")

    h, w, c = e.input_shape
    pixels = np.random.default_rng(0).integers(0, 256, (args.batch, h, w, c), dtype=np.uint8)
    tensors = (pixels / 127.5 - 1.0).astype(np.float32)
    cases = {
        "uint8 top-1": (pixels, ItemSpec("gradcam")),
        "uint8 top_k=5": (pixels, ItemSpec("gradcam", top_k=5)),
        "uint8 top_k=10": (pixels, ItemSpec("gradcam", top_k=10)),
        "float32 top-1": (tensors, ItemSpec("gradcam")),
    }
    per_image: dict[str, list[float]] = {name: [] for name in cases}
    for images, spec in cases.values():
        e.explain_batch(images, [spec] * args.batch)  # first call of each case out of the timings
    for _ in range(args.blocks):
        for name, (images, spec) in cases.items():
            t = time.process_time()
            for _ in range(args.calls):
                e.explain_batch(images, [spec] * args.batch)
            per_image[name].append((time.process_time() - t) / args.calls / args.batch * 1e3)
    print(f"batch {args.batch}, {args.blocks} blocks x {args.calls} calls: CPU ms per image")
    for name, values in per_image.items():
        print(f"  {name:15s} min {min(values):6.3f}  median {statistics.median(values):6.3f}")
    after = e.step.trace_count()
    print(f"traces after the requests: {after} ({'unchanged' if after == traces else 'RETRACED'})")


if __name__ == "__main__":
    main()

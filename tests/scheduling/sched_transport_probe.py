"""Scheduling overhead probe: items/s through batcher + pool + shared memory with no compute.

Run: ``python tests/scheduling/sched_transport_probe.py [--quick]``. The worker is the NumPy
toy runner answering "noop", so the figure is the ceiling the scheduler puts on throughput
(pickle-free pixels in shared memory, one batch in flight per worker), to compare with the
engine's images/s. Also prints what pickling the same batch through a pipe would cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sched_toy_runner as toy
from camserve.records import ItemSpec
from camserve.repository import load_repository
from camserve.scheduling.batcher import WorkItem
from camserve.scheduling.dispatcher import Dispatcher


async def measure(size: int, batch: int, n: int, workers: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "probe"
        d.mkdir()
        (d / "model.keras").write_bytes(b"")
        cfg = {
            "model_file": "model.keras",
            "input_shape": [size, size, 3],
            "batching": {"max_batch_size": batch, "max_queue_delay_ms": 2, "max_queue_size": 100_000},
        }
        (d / "config.json").write_text(json.dumps(cfg))
        disp = Dispatcher(load_repository(Path(tmp)), workers, runner=f"{toy.__name__}:ToyRunner")
        await disp.start()
        while not disp.ready():
            await asyncio.sleep(0.02)
        px = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        spec = ItemSpec("noop")
        await asyncio.gather(*(disp.submit(WorkItem("probe", px, spec)) for _ in range(batch * 2)))
        t0 = time.perf_counter()
        results = await asyncio.gather(*(disp.submit(WorkItem("probe", px, spec)) for _ in range(n)))
        elapsed = time.perf_counter() - t0
        await disp.stop(5)
    batch_bytes = np.zeros((batch, size, size, 3), np.uint8)
    t1 = time.perf_counter()
    blob = pickle.dumps(batch_bytes, protocol=5)
    pickle.loads(blob)
    pickle_ms = (time.perf_counter() - t1) * 1e3
    return {
        "input": size,
        "max_batch": batch,
        "items": n,
        "items_per_s": n / elapsed,
        "mean_batch": float(np.mean([r.batch_size for r in results])),
        "mean_queue_ms": float(np.mean([r.queue_s for r in results]) * 1e3),
        "pickle_batch_ms": pickle_ms,
        "batch_mb": batch_bytes.nbytes / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer items (a few seconds)")
    ap.add_argument("--workers", default="cpu:1")
    args = ap.parse_args()
    n = 640 if args.quick else 6400
    rows = [asyncio.run(measure(size, 32, n, args.workers)) for size in (64, 224)]
    header = ("input", "batch", "items/s", "mean batch", "queue ms", "pickle ms", "MB")
    print("{:>6} {:>6} {:>9} {:>11} {:>9} {:>10} {:>6}".format(*header))
    for r in rows:
        print(
            f"{r['input']:>6} {r['max_batch']:>6} {r['items_per_s']:>9.0f} {r['mean_batch']:>11.1f} "
            f"{r['mean_queue_ms']:>9.1f} {r['pickle_batch_ms']:>10.2f} {r['batch_mb']:>6.2f}"
        )


if __name__ == "__main__":
    main()

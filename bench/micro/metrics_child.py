"""The child process of ``bench.micro``'s metrics part (its own module: ``spawn`` re-imports it)."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any


def record_calls(multiprocess_dir: str | None, calls: int, rounds: int, conn: Any) -> None:
    """Record ``calls`` calls the way a front end does (the request counter, the request-duration
    histogram, the queue and compute histograms: seven writes in multiprocess mode), in
    prometheus-client's multiprocess mode when ``multiprocess_dir`` is set (the mode is chosen when the
    library is imported, hence a fresh process), else in memory; sends the median CPU us per call."""
    if multiprocess_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_dir
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    requests = Counter("bench_requests", "calls", ["model", "method", "code"], registry=registry)
    duration = Histogram("bench_request_duration_seconds", "call", ["model", "method"], registry=registry)
    queue = Histogram("bench_queue_duration_seconds", "queue", ["model"], registry=registry)
    compute = Histogram("bench_compute_duration_seconds", "compute", ["model"], registry=registry)
    per_round = []
    for _ in range(rounds):
        t0 = time.process_time()
        for i in range(calls):
            requests.labels("demo", "Explain", "OK").inc()
            duration.labels("demo", "Explain").observe(0.001 * (i % 50))
            queue.labels("demo").observe(0.0005 * (i % 20))
            compute.labels("demo").observe(0.0003 * (i % 30))
        per_round.append((time.process_time() - t0) / calls * 1e6)
    conn.send(statistics.median(per_round))

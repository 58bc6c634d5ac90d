"""Load from several client processes against one server (the served GPU figure's client side)."""

from __future__ import annotations

from typing import Any


def load_from_processes(cfg: Any, clients: int) -> dict[str, Any]:
    """``run_load(cfg)`` from ``clients`` processes at once, each at concurrency / clients.

    One Python client process tops out near 1,000 calls/s (its own overhead, reported per step as
    ``client_overhead_ms_mean``), below what a GPU server takes. Throughput, calls and failures add
    up; each latency figure is the worst process's (an upper bound, not a merged percentile).
    """
    import concurrent.futures
    import dataclasses
    import multiprocessing

    from camserve_client.tools.loadgen import run_load

    if clients <= 1:
        return run_load(cfg)
    parts = [dataclasses.replace(cfg, seed=i, concurrency=[max(1, c // clients) for c in cfg.concurrency])
             for i in range(clients)]
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(clients, mp_context=ctx) as pool:
        reports = list(pool.map(run_load, parts))
    merged = reports[0]
    merged["clients"] = clients
    for i, step in enumerate(merged["steps"]):
        others = [r["steps"][i] for r in reports[1:]]
        for key in ("concurrency", "requests_ok", "requests_failed", "throughput_rps", "throughput_img_s"):
            step[key] += sum(o[key] for o in others)
        for key in ("latency_ms", "server_queue_ms", "server_compute_ms", "server_total_ms"):
            for q in step[key]:
                step[key][q] = max([step[key][q], *(o[key][q] for o in others)])
        step["batch_size_mean"] = max([step["batch_size_mean"], *(o["batch_size_mean"] for o in others)])
    return merged

"""The front end alone: images/s, latency and server CPU per image for N front-end processes.

A real ``camserve serve`` (real gRPC front ends, real scheduler, a real worker process) whose model
step is a stand-in of fixed cost (``bench/frontend/standin.py``: a 2 ms sleep per batch, 1,000
classes, 7x7 maps), so the front end sets the pace. The project's load generator
(``camserve_client.tools.loadgen``) runs in ``--clients`` processes of 8 connections each
(``client.CONNECTIONS``: the kernel spreads connections, not calls, over the front ends), 64 callers in
all, closed loop. For each
``--frontends`` value and each case it prints images/s, p50/p99 and the CPU time of every server
process (supervisor, front ends, worker; from /proc) per image, over one window: the calls counted are
those that complete inside it (``loadreport.Window``). Exits 1 when a case had an error or no success.

Cases: ``png64`` (64x64 PNG, one per Explain), ``jpeg224`` (224x224 JPEG q90, one per Explain),
``batch8`` (224x224 JPEG, 8 per ExplainBatch).

    python -m bench.frontend --quick                     # 4 s steps: a check that it works
    python -m bench.frontend --frontends 1,2,4 --duration 20

CPU-ms per image is the figure that holds on a shared machine (it does not depend on what else
runs); images/s needs idle cores. Writes JSON to bench/results/frontend[_quick].json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import finish
from bench.frontend.client import CASES, load_process

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def write_repository(root: Path) -> Path:
    """Two stand-in models: m64 (64x64) and m224 (224x224), batch 32, queue 1024."""
    for side in (64, 224):
        folder = root / f"m{side}"
        folder.mkdir(parents=True)
        (folder / "model.keras").write_bytes(b"")  # never read: the stand-in step loads nothing
        (folder / "config.json").write_text(json.dumps({
            "name": f"m{side}", "version": 1, "model_file": "model.keras", "input_shape": [side, side, 3],
            "preprocessing": "none", "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2.0,
                                                  "max_queue_size": 1024}}))
    return root


def process_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of ``pid`` and every live descendant, by pid (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            out[p] = (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _role(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "gone"
    if b"camserve.front.frontend" in cmd:
        return "front ends"
    if b"resource_tracker" in cmd:
        return "other"
    return "workers" if b"spawn_main" in cmd else "other"


def measure(server: Any, case: str, clients: int, callers: int, warmup_s: float, duration_s: float
            ) -> dict[str, Any]:
    """Run one case against a started server; returns images/s, latency and CPU per image."""
    from camserve_client.tools.loadreport import Window, clock, summarize

    side, _, per_call = CASES[case]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    barrier = ctx.Barrier(clients + 1)
    per_client = max(1, callers // clients)
    procs = [ctx.Process(target=load_process, args=(server.target, f"m{side}", case, per_client, warmup_s,
                                                    duration_s, queue, barrier)) for _ in range(clients)]
    for p in procs:
        p.start()
    barrier.wait(timeout=300)  # every client is connected: their loops start now
    # The window (CPU and images alike) sits inside the clients' load, after their warm-up and before
    # their end, so it sees steady load; a call counts when it completes inside it (loadreport.Window).
    time.sleep(warmup_s + 0.25)
    t0, cpu0 = clock(), process_cpu(server.pid)
    time.sleep(max(0.5, duration_s - 0.5))
    t1, cpu1 = clock(), process_cpu(server.pid)
    samples = [s for _ in procs for s in queue.get(timeout=warmup_s + duration_s + 120)]
    for p in procs:
        p.join()
    window = Window(t0, t1)
    step = summarize(samples, window, per_call, "closed", float(callers))
    in_window = step["requests_ok"] * per_call
    cpu_s = sum(cpu1[p] - cpu0.get(p, 0.0) for p in cpu1)
    by_role: dict[str, float] = {}
    for p in cpu1:
        role = "supervisor" if p == server.pid else _role(p)
        by_role[role] = by_role.get(role, 0.0) + cpu1[p] - cpu0.get(p, 0.0)
    return {
        "case": case, "images_per_s": step["throughput_img_s"], "p50_ms": step["latency_ms"]["p50"],
        "p99_ms": step["latency_ms"]["p99"], "errors": step["requests_failed"], "step": step,
        "cpu_ms_per_image": 1e3 * cpu_s / in_window if in_window else float("nan"),
        "cpu_ms_per_image_by_process": {k: round(1e3 * v / max(1, in_window), 3) for k, v in by_role.items()},
        "server_cores_busy": cpu_s / window.seconds, "images_in_window": in_window,
        "mean_batch": round(step["batch_size_mean"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.frontend", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frontends", default="1,2", help="comma-separated front-end counts")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    ap.add_argument("--duration", type=float, default=15.0, help="measured seconds per step")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--callers", type=int, default=64, help="closed-loop callers in all")
    ap.add_argument("--clients", type=int, default=2, help="load-generator processes")
    ap.add_argument("--step-ms", type=float, default=2.0, help="stand-in model step per batch (sleep)")
    ap.add_argument("--quick", action="store_true", help="4 s steps")
    ap.add_argument("--out", type=Path, help="JSON path (default bench/results/frontend[_quick].json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 4.0), min(args.warmup, 1.5)
    from bench import start_server

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = write_repository(Path(tmp) / "repository")
        for n in [int(x) for x in args.frontends.split(",")]:
            env = {"CAMSERVE_STANDIN_STEP_MS": str(args.step_ms)}
            with start_server("--frontends", str(n), "--runner", "bench.frontend.standin:StandInRunner",
                              repository=repo, workers="cpu:1", env=env) as server:
                for case in args.cases.split(","):
                    row = {"frontends": n, **measure(server, case, args.clients, args.callers, args.warmup,
                                                      args.duration)}
                    rows.append(row)
                    print(f"frontends {n}  {case:<8} {row['images_per_s']:8.0f} img/s  "
                          f"p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  "
                          f"server CPU {row['cpu_ms_per_image']:.3f} ms/img  "
                          f"({row['server_cores_busy']:.2f} cores busy, mean batch {row['mean_batch']}, "
                          f"errors {row['errors']})\n    CPU ms/img by process: "
                          f"{row['cpu_ms_per_image_by_process']}", flush=True)
    from camserve_client.tools.loadreport import step_problems

    problems = [p for r in rows
                for p in step_problems([r["step"]], f"frontends {r['frontends']} {r['case']}")]
    out = args.out or RESULTS / ("frontend_quick.json" if args.quick else "frontend.json")
    return finish("bench.frontend", out, {"host": {"platform": platform.platform(), "cpus": os.cpu_count()},
                                          "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                          "problems": problems}, problems)


if __name__ == "__main__":
    sys.exit(main())

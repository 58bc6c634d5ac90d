"""Shared tools of the reliability tests: process-tree RSS, worker discovery, open-loop load, figures.

Nothing here imports TensorFlow. Load is generated with grpc.aio from the test process and the server
is always a real ``camserve serve`` subprocess, so what is measured is the real request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
from camserve_proto import explain_pb2, explain_pb2_grpc

SOAK = os.environ.get("CAMSERVE_SOAK", "") not in ("", "0")
RESULTS_DIR = Path(os.environ.get("CAMSERVE_RELIABILITY_RESULTS",
                                  Path(__file__).resolve().parents[2] / "bench" / "results" / "reliability"))


# ------------------------------------------------------------------------------------- processes

def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 2 (comm) may contain spaces/parens: split after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    """All live descendant pids of ``pid`` (breadth-first), read from /proc."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            pp = _ppid(int(entry))
            if pp is not None:
                parent_of[int(entry)] = pp
    out: list[int] = []
    frontier = [pid]
    while frontier:
        nxt = [c for c, p in parent_of.items() if p in frontier]
        out.extend(nxt)
        frontier = nxt
    return out


def cmdline(pid: int) -> str:
    """The process's command line ('' when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def proc_state(pid: int) -> str:
    """One-letter state from /proc (R, S, T = stopped, Z = zombie, '' = gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def worker_pids(server_pid: int) -> list[int]:
    """Worker processes of a camserve server: multiprocessing-spawned children, not the resource tracker."""
    pids = []
    for p in descendants(server_pid):
        cl = cmdline(p)
        if "spawn_main" in cl and "resource_tracker" not in cl and proc_state(p) not in ("Z", ""):
            pids.append(p)
    return sorted(pids)


def frontend_pids(server_pid: int) -> list[int]:
    """Front-end processes of a camserve server (``python -m camserve.front.frontend``)."""
    return sorted(p for p in descendants(server_pid)
                  if "camserve.front.frontend" in cmdline(p) and proc_state(p) not in ("Z", ""))


def server_rss(pid: int) -> int:
    """RSS of the processes that handle calls: the supervisor and its front ends (not the workers)."""
    return rss_bytes(pid) + sum(rss_bytes(p) for p in frontend_pids(pid))


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def tree_rss(pid: int) -> int:
    """RSS of the server and all its descendants (the worker processes hold the models)."""
    return rss_bytes(pid) + sum(rss_bytes(p) for p in descendants(pid))


class RssSampler:
    """Samples the server's own RSS and its tree RSS in the background while a phase runs."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.parent: list[int] = []
        self.tree: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.parent.append(rss_bytes(self.pid))
            self.tree.append(tree_rss(self.pid))
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        """Begin sampling on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop sampling (takes one last sample)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.parent.append(rss_bytes(self.pid))
        self.tree.append(tree_rss(self.pid))

    def summary(self) -> dict[str, float]:
        """Peak and last values in MiB."""
        mib = 1 << 20
        return {
            "parent_rss_peak_mib": round(max(self.parent or [0]) / mib, 1),
            "parent_rss_last_mib": round((self.parent or [0])[-1] / mib, 1),
            "tree_rss_peak_mib": round(max(self.tree or [0]) / mib, 1),
        }


# ------------------------------------------------------------------------------------- inputs

def photo(size: int = 96, seed: int = 0) -> np.ndarray:
    """A real photograph (scikit-image's chelsea) cropped and resized: (size, size, 3) uint8 RGB."""
    from skimage import data

    img = data.chelsea()  # (300, 451, 3)
    rng = np.random.default_rng(seed)
    y, x = int(rng.integers(0, 60)), int(rng.integers(0, 150))
    crop = img[y:y + 240, x:x + 240]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def encode(img: np.ndarray, ext: str = ".jpg", **params: int) -> bytes:
    """Encode RGB ``img`` with OpenCV (JPEG/PNG/WebP/BMP by extension)."""
    flags: list[int] = []
    for k, v in params.items():
        flags += [getattr(cv2, k), v]
    ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), flags)
    assert ok
    return buf.tobytes()


def valid_request(jpeg: bytes, model: str = "", **kw: Any) -> explain_pb2.ExplainRequest:
    """A request the server must accept: encoded image, default method."""
    return explain_pb2.ExplainRequest(model=model, image=explain_pb2.Image(encoded=jpeg), **kw)


# ------------------------------------------------------------------------------------- load

@dataclass
class CallRecord:
    """One call: when it was sent (s since start), how long it took, its final code, and its deadline."""

    sent_s: float
    latency_s: float
    code: str
    deadline_s: float
    details: str = ""


@dataclass
class LoadResult:
    """Every call of one load phase, plus the wall time it spanned."""

    records: list[CallRecord] = field(default_factory=list)
    duration_s: float = 0.0
    offered_rps: float = 0.0
    t0: float = 0.0  # time.perf_counter() when the phase started (CallRecord.sent_s is relative to it)

    def codes(self) -> Counter[str]:
        return Counter(r.code for r in self.records)

    def latencies(self, code: str = "OK") -> np.ndarray:
        return np.array([r.latency_s for r in self.records if r.code == code], dtype=np.float64)

    def summary(self) -> dict[str, Any]:
        """Counts per code, goodput, latency percentiles (ms) of OK and of shed calls."""
        ok = self.latencies("OK")
        shed = self.latencies("RESOURCE_EXHAUSTED")
        over = sum(1 for r in self.records if r.latency_s > r.deadline_s + 0.25)

        def pct(a: np.ndarray, q: float) -> float | None:
            return round(float(np.percentile(a, q)) * 1e3, 1) if a.size else None

        return {
            "calls": len(self.records),
            "offered_rps": round(self.offered_rps, 1),
            "duration_s": round(self.duration_s, 2),
            "codes": dict(sorted(self.codes().items())),
            "goodput_rps": round(ok.size / self.duration_s, 1) if self.duration_s else None,
            "ok_p50_ms": pct(ok, 50),
            "ok_p99_ms": pct(ok, 99),
            "ok_max_ms": pct(ok, 100),
            "shed_p50_ms": pct(shed, 50),
            "shed_p99_ms": pct(shed, 99),
            "answered_after_deadline": over,
        }


RequestFactory = Callable[[int], explain_pb2.ExplainRequest]


async def _one_call(stub: explain_pb2_grpc.ExplainServiceStub, req: explain_pb2.ExplainRequest,
                    t0: float, timeout_s: float, metadata: tuple[tuple[str, str], ...]) -> CallRecord:
    sent = time.perf_counter()
    try:
        await stub.Explain(req, timeout=timeout_s, metadata=metadata or None)
        code, details = "OK", ""
    except grpc.aio.AioRpcError as e:
        code, details = e.code().name, e.details() or ""
    return CallRecord(sent - t0, time.perf_counter() - sent, code, timeout_s, details)


async def open_loop(target: str, make_request: RequestFactory, rate_rps: float, duration_s: float,
                    timeout_s: float, channels: int = 4,
                    metadata: tuple[tuple[str, str], ...] = (),
                    options: list[tuple[str, Any]] | None = None) -> LoadResult:
    """Open-loop load: send at ``rate_rps`` on a fixed schedule, whatever the server's replies do.

    Arrivals do not wait for earlier replies (unlike a closed loop, which hides overload by slowing
    down). Several channels spread the calls over HTTP/2 connections, as many clients would (each
    channel gets a distinct argument: gRPC shares one connection between identical channels), and so
    over the server's front-end processes.
    """
    chans = [grpc.aio.insecure_channel(target, options=[*(options or []), ("camserve.test.channel", k)])
             for k in range(channels)]
    stubs = [explain_pb2_grpc.ExplainServiceStub(c) for c in chans]
    n = max(1, int(rate_rps * duration_s))
    tasks: list[asyncio.Task[CallRecord]] = []
    t0 = time.perf_counter()
    try:
        for i in range(n):
            due = t0 + i / rate_rps
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(
                _one_call(stubs[i % len(stubs)], make_request(i), t0, timeout_s, metadata)))
        records = await asyncio.gather(*tasks)
    finally:
        for c in chans:
            await c.close()
    return LoadResult(list(records), time.perf_counter() - t0, rate_rps, t0)


async def closed_loop(target: str, make_request: RequestFactory, concurrency: int, duration_s: float,
                      timeout_s: float) -> LoadResult:
    """Closed-loop load (``concurrency`` callers back to back): measures capacity."""
    chan = grpc.aio.insecure_channel(target)
    stub = explain_pb2_grpc.ExplainServiceStub(chan)
    records: list[CallRecord] = []
    t0 = time.perf_counter()
    end = t0 + duration_s

    async def caller(k: int) -> None:
        i = k
        while time.perf_counter() < end:
            records.append(await _one_call(stub, make_request(i), t0, timeout_s, ()))
            i += concurrency

    try:
        await asyncio.gather(*(caller(k) for k in range(concurrency)))
    finally:
        await chan.close()
    return LoadResult(records, time.perf_counter() - t0, math.nan, t0)


# ------------------------------------------------------------------------------------- figures

def report(name: str, figures: dict[str, Any]) -> None:
    """Print the figures (visible with pytest -s) and write them to results/<name>.json."""
    text = json.dumps(figures, indent=2, sort_keys=True, default=str)
    print(f"\n[reliability] {name}: {text}")
    try:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"{name}.json").write_text(text + "\n")
    except OSError:
        pass

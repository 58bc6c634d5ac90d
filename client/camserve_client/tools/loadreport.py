"""The load tools' counting rule and report: per-step summary, the perf_analyzer-like table, JSON, plot.

Every camserve load tool counts throughput one way, here: a call counts in a step when it *completes*
inside the step's measurement :class:`Window`, whenever it started (perf_analyzer's rule). The load
generator (``camserve bench``, ``python -m bench.load``), ``bench.serve``, ``bench.frontend``,
``bench.gpu`` and the tf-keras-vis baseline (``bench.baseline``) all record every call as a
:class:`Sample` on :data:`clock` and hand them to :func:`summarize` with the window, and all judge a
step with :func:`step_problems`. matplotlib is imported only when a plot is written; without it the PNG
is skipped with a message.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)

#: The clock of every sample and window (seconds). CLOCK_MONOTONIC is one clock for every process on a
#: Linux machine, so load-generator processes and the process that measures CPU share windows.
clock = time.monotonic


@dataclass
class Sample:
    """One completed call: ``start`` on :data:`clock` (s; for open loop the scheduled arrival), its
    latency in ms, and its status code name ("OK", "UNAVAILABLE", ...); the server-side split in ms."""

    start: float
    latency_ms: float
    code: str
    queue_ms: float = math.nan
    compute_ms: float = math.nan
    total_ms: float = math.nan
    batch_size: float = math.nan

    @property
    def end(self) -> float:
        """When the call completed, on :data:`clock` (s)."""
        return self.start + self.latency_ms / 1e3


@dataclass(frozen=True)
class Window:
    """One step's measurement window, ``[start, end]`` seconds on :data:`clock`.

    The one counting rule of camserve's load tools, as perf_analyzer's: a call counts when it completes
    inside the window (:meth:`holds`), whenever it started, so calls in flight when the window opens
    count and calls still in flight when it closes do not. The load runs on before and after the window
    (warm-up, tail), so the window sees a steady state. Counting only calls that both start and end
    inside it would undercount by about latency / duration (15% for ResNet50 at 64 callers over 20 s).
    """

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def holds(self, sample: Sample) -> bool:
        """Whether ``sample`` counts in this window (it completed inside it)."""
        return self.start <= sample.end <= self.end


def _pct(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {f"p{p}": math.nan for p in PERCENTILES} | {"mean": math.nan, "max": math.nan}
    out = {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}
    out["mean"] = float(values.mean())
    out["max"] = float(values.max())
    return out


def summarize(samples: Sequence[Sample], window: Window, images_per_call: int, mode: str,
              level: float) -> dict[str, Any]:
    """Throughput, latency percentiles, error counts and the server-side split of the calls that
    completed inside ``window`` (the others in ``samples``, e.g. warm-up calls, are left out).

    ``images_per_call``: images each OK call carried (throughput is in images/s and calls/s);
    ``mode``: "closed" (``level`` = callers) or "open" (``level`` = calls/s offered)."""
    samples = [s for s in samples if window.holds(s)]
    duration_s = window.seconds
    ok = [s for s in samples if s.code == "OK"]
    lat = np.array([s.latency_ms for s in ok], np.float64)
    queue = np.array([s.queue_ms for s in ok], np.float64)
    compute = np.array([s.compute_ms for s in ok], np.float64)
    total = np.array([s.total_ms for s in ok], np.float64)
    batch = np.array([s.batch_size for s in ok], np.float64)
    errors = Counter(s.code for s in samples if s.code != "OK")
    return {
        "mode": mode,
        "concurrency" if mode == "closed" else "rate": level,
        "duration_s": duration_s,
        "requests_ok": len(ok),
        "requests_failed": int(sum(errors.values())),
        "errors": dict(sorted(errors.items())),
        "throughput_rps": len(ok) / duration_s,
        "throughput_img_s": len(ok) * images_per_call / duration_s,
        "latency_ms": _pct(lat),
        "server_queue_ms": _pct(queue),
        "server_compute_ms": _pct(compute),
        "server_total_ms": _pct(total),
        "client_overhead_ms_mean": float((lat - total).mean()) if lat.size else math.nan,
        "batch_size_mean": float(batch.mean()) if batch.size else math.nan,
    }


def step_problems(steps: Sequence[dict[str, Any]], what: str = "") -> list[str]:
    """What makes a benchmark's figures unusable, one line per step: a step where no call succeeded,
    or where any call failed. Every load tool exits non-zero when this is not empty."""
    problems = []
    for s in steps:
        level = s.get("concurrency", s.get("rate"))
        name = f"{what + ' ' if what else ''}{'c=' if s['mode'] == 'closed' else 'rate='}{level:g}"
        if s["requests_ok"] == 0:
            why = _errors(s) if s["requests_failed"] else "none completed in the window"
            problems.append(f"{name}: no call succeeded ({why})")
        elif s["requests_failed"]:
            problems.append(f"{name}: {s['requests_failed']} of {s['requests_ok'] + s['requests_failed']} "
                            f"calls failed ({_errors(s)})")
    return problems


def _errors(step: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in step.get("errors", {}).items())


def json_safe(obj: Any) -> Any:
    """JSON has no NaN or infinity: write null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _f(x: float, nd: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def format_table(steps: Sequence[dict[str, Any]], title: str = "camserve") -> str:
    """A perf_analyzer-like table: throughput, latency percentiles and the server-side split."""
    head = (f"{'':9s}{'mode':7s}{'level':>7s}{'img/s':>9s}{'p50':>8s}{'p90':>8s}{'p95':>8s}{'p99':>8s}"
            f"{'queue':>8s}{'compute':>9s}{'batch':>7s}  errors")
    lines = [head, f"{'':32s}{'---- latency (ms) ----':^32s}{'server (mean)':^24s}"]
    for s in steps:
        level = s.get("concurrency", s.get("rate"))
        errs = _errors(s) or "0"
        lat = s["latency_ms"]
        lines.append(
            f"{title[:8]:9s}{s['mode']:7s}{level:7g}{_f(s['throughput_img_s']):>9s}{_f(lat['p50']):>8s}"
            f"{_f(lat['p90']):>8s}{_f(lat['p95']):>8s}{_f(lat['p99']):>8s}"
            f"{_f(s.get('server_queue_ms', {}).get('mean', math.nan)):>8s}"
            f"{_f(s.get('server_compute_ms', {}).get('mean', math.nan)):>9s}"
            f"{_f(s.get('batch_size_mean', math.nan)):>7s}  {errs}")
    return "\n".join(lines)


def write_plot(series: dict[str, Sequence[dict[str, Any]]], path: str | Path, title: str = "") -> bool:
    """Latency (p50 solid, p99 dashed) against throughput, one line per series; False (and no file)
    without matplotlib or without a step that had a success."""
    series = {name: [s for s in steps if s["requests_ok"]] for name, steps in series.items()}
    if not any(series.values()):
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: skipping the plot {path} (pip install 'camserve[tools]')",
              file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, steps in series.items():
        if not steps:
            continue
        x = [s["throughput_img_s"] for s in steps]
        p50 = [s["latency_ms"]["p50"] for s in steps]
        p99 = [s["latency_ms"]["p99"] for s in steps]
        (line,) = ax.plot(x, p50, "o-", label=f"{name} p50")
        ax.plot(x, p99, "s--", color=line.get_color(), label=f"{name} p99")
        for s, xi, yi in zip(steps, x, p99, strict=True):
            level = s.get("concurrency", s.get("rate"))
            tag = f"c{level:g}" if s["mode"] == "closed" else f"{level:g}/s"
            ax.annotate(tag, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("throughput (images/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "latency vs throughput")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True

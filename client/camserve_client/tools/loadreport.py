"""The load generator's report: per-step summary, the perf_analyzer-like table, JSON and the plot.

Kept apart from the load loop (``camserve_client.tools.loadgen``) because other drivers reuse it on their
own samples (``bench.baseline`` summarizes its tf-keras-vis baseline with the same :class:`Sample` and
:func:`summarize`). matplotlib is imported only when a plot is written; without it the PNG is
skipped with a message.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass
class Sample:
    """One completed call."""

    start: float
    latency_ms: float
    code: str
    queue_ms: float = math.nan
    compute_ms: float = math.nan
    total_ms: float = math.nan
    batch_size: float = math.nan


def _pct(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {f"p{p}": math.nan for p in PERCENTILES} | {"mean": math.nan, "max": math.nan}
    out = {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}
    out["mean"] = float(values.mean())
    out["max"] = float(values.max())
    return out


def summarize(samples: list[Sample], duration_s: float, images_per_call: int, mode: str,
              level: float) -> dict[str, Any]:
    """Throughput, latency percentiles, error counts and the server-side split for one step."""
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
        errs = ", ".join(f"{k}={v}" for k, v in s.get("errors", {}).items()) or "0"
        lat = s["latency_ms"]
        lines.append(
            f"{title[:8]:9s}{s['mode']:7s}{level:7g}{_f(s['throughput_img_s']):>9s}{_f(lat['p50']):>8s}"
            f"{_f(lat['p90']):>8s}{_f(lat['p95']):>8s}{_f(lat['p99']):>8s}"
            f"{_f(s.get('server_queue_ms', {}).get('mean', math.nan)):>8s}"
            f"{_f(s.get('server_compute_ms', {}).get('mean', math.nan)):>9s}"
            f"{_f(s.get('batch_size_mean', math.nan)):>7s}  {errs}")
    return "\n".join(lines)


def write_plot(series: dict[str, Sequence[dict[str, Any]]], path: str | Path, title: str = "") -> bool:
    """Latency (p50 solid, p99 dashed) against throughput, one line per series; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: skipping the plot {path}", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, steps in series.items():
        steps = [s for s in steps if s["requests_ok"]]
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

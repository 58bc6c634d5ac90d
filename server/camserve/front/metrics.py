"""Prometheus metrics of the server: recorded by every server process, exported once.

Why one class: it is both what the service records into (request/queue/compute durations, status
codes) and the Dispatcher's `Observer` (`batch_formed`, `queue_depth`, `workers_alive`,
`worker_restarted`, `request_dropped`, `model_ready`, exactly as ARCHITECTURE.md names them), over
its own `CollectorRegistry` so tests and several servers in one process never collide. Label
values stay low-cardinality: `model` is a served model's name, `_unknown` for a name a caller made up
(never the name itself), `_mixed` for a batch naming several models, and empty for a call that names
no model (ListModels, health, server metadata, calls refused before their request was read):
Prometheus reads an empty label as an absent one, which is what such a call has.

Several processes record: each front end its calls (`record_rpc`), the supervisor everything the
scheduler knows (queue and compute times, batch sizes, drops, gauges). Front ends run
prometheus-client's multiprocess mode (the supervisor starts them with :data:`MULTIPROC_ENV` set):
each writes its values to its own memory-mapped file. The supervisor keeps its own values in memory
(the scheduler records several per image; an in-memory increment costs a fraction of a file write)
and its /metrics merges the two, summing the same series (:meth:`Metrics.exposition_registry`). A
front end that dies keeps its counts (its file stays).
The same events feed `statistics` (`front/statistics.py`), the cumulative counters the Open Inference
Protocol's ModelStatistics reports, so /metrics and ModelStatistics agree; its table is shared the
same way (a row per process).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from camserve_proto import oip
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.metrics_core import Metric

from camserve.front.limits import REASONS as REFUSAL_REASONS
from camserve.front.statistics import InferenceStatistics

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def mark_process_dead(pid: int, directory: Path) -> None:
    """Drop a dead front end's live gauges (its counters and histograms stay counted)."""
    multiprocess.mark_process_dead(pid, str(directory))


class _Merged:
    """A collector: this process's metrics plus the front ends' files, the same series summed."""

    def __init__(self, local: CollectorRegistry, directory: Path) -> None:
        self.local = local
        self.directory = str(directory)

    def collect(self) -> list[Metric]:
        families: dict[str, Metric] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        sources = [self.local.collect()]
        if os.path.isdir(self.directory):
            sources.append(multiprocess.MultiProcessCollector(None, self.directory).collect())
        for source in sources:
            for fam in source:
                families.setdefault(fam.name, fam)
                summed = values.setdefault(fam.name, {})
                for sample in fam.samples:
                    if sample.name.endswith("_created"):  # per-process creation times do not add up
                        continue
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    summed[key] = summed.get(key, 0.0) + sample.value
        out = []
        for name, fam in families.items():
            merged = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for (sample_name, labels), value in values[name].items():
                merged.add_sample(sample_name, dict(labels), value)
            out.append(merged)
        return out


#: Seconds, from a small model answering one caller (~1 ms) to a large model under load (tens of seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

UNKNOWN_MODEL = "_unknown"
MIXED_MODELS = "_mixed"
NO_MODEL = ""  # the label of a call that names no model (Prometheus: the same as no label)
#: RPC names counted under their own name in `camserve_requests_total{method}` (others: "other").
RPC_METHODS = ("Explain", "ExplainBatch", "ListModels", "GetModel", *oip.RPC_METHODS)
#: RPCs that carry images: their durations are observed, and they feed the inference statistics.
INFER_METHODS = ("Explain", "ExplainBatch", "ModelInfer")


def batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Upper bounds 1, 2, 3, 4, 6, 8, 12, 16, ... up to max_batch_size (always included)."""
    bounds = {1.0, float(max_batch_size)}
    b = 2
    while b < max_batch_size:
        bounds.add(float(b))
        if b + b // 2 < max_batch_size:
            bounds.add(float(b + b // 2))
        b *= 2
    return tuple(sorted(bounds))


class Metrics:
    """The metric objects of DESIGN.md plus `camserve_requests_dropped_total{model,reason}` and
    `camserve_transport_refusals_total{reason}`."""

    def __init__(self, models: Iterable[str], max_batch_size: int = 32,
                 registry: CollectorRegistry | None = None, front_ends_dir: Path | None = None,
                 statistics: InferenceStatistics | None = None) -> None:
        """``front_ends_dir``: the folder of the front ends' multiprocess files (the supervisor's
        Metrics exports them with its own); ``statistics``: where the ModelStatistics counters go
        (the server's shared table; None = this process alone)."""
        self.models = tuple(models)
        self.front_ends_dir = front_ends_dir
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram(
            "camserve_request_duration_seconds",
            "Time from the arrival of an RPC to its reply, decoding and encoding included.",
            ["model", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_duration = Histogram(
            "camserve_queue_duration_seconds",
            "Time an image waited for a batch and a free worker.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.compute_duration = Histogram(
            "camserve_compute_duration_seconds",
            "Time of the compiled step for the batch an image ran in, on the worker.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "camserve_batch_size",
            "Real (unpadded) images per batch sent to a worker.",
            ["model"], buckets=batch_buckets(max_batch_size), registry=r)
        self.requests = Counter(
            "camserve_requests",
            "RPCs answered, by model, RPC method and gRPC status code.",
            ["model", "method", "code"], registry=r)
        self.worker_restarts = Counter(
            "camserve_worker_restarts", "Worker processes restarted after dying or hanging.", registry=r)
        self.requests_dropped = Counter(
            "camserve_requests_dropped",
            "Queued images dropped before computing (reason: deadline, cancelled, queue_full, ...).",
            ["model", "reason"], registry=r)
        self.transport_refusals = Counter(
            "camserve_transport_refusals",
            "Calls refused before a handler read them, by reason: header_too_large, message_too_large "
            "(--max-header-kb, --max-message-mb), concurrency_limit (--max-concurrent-rpcs), not_received "
            "(ended by gRPC before the request reached camserve: far over a size limit, or the caller left).",
            ["reason"], registry=r)
        for reason in REFUSAL_REASONS:
            self.transport_refusals.labels(reason)
        live = "livesum"  # set by the supervisor only; front ends' zeros add nothing
        self.queue_depth_gauge = Gauge("camserve_queue_depth", "Images waiting in the model's queue.",
                                       ["model"], registry=r, multiprocess_mode=live)
        self.workers_alive_gauge = Gauge("camserve_workers_alive", "Worker processes alive.", registry=r,
                                         multiprocess_mode=live)
        self.model_ready_gauge = Gauge(
            "camserve_model_ready", "1 when every batch bucket of the model is compiled on a live worker.",
            ["model"], registry=r, multiprocess_mode=live)
        self.statistics = statistics if statistics is not None else InferenceStatistics(self.models)
        self.on_change: Callable[[], None] | None = None
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        for model in self.models:  # export every series from the start, so dashboards see zeros
            for method in INFER_METHODS:
                self.request_duration.labels(model, method)
            self.queue_duration.labels(model)
            self.compute_duration.labels(model)
            self.batch_size.labels(model)
            self.requests.labels(model, "Explain", "OK")
            self.queue_depth_gauge.labels(model).set(0)
            self.model_ready_gauge.labels(model).set(0)
            for reason in ("deadline", "cancelled"):
                self.requests_dropped.labels(model, reason)
        self.workers_alive_gauge.set(0)

    # --- label hygiene -------------------------------------------------------------------------

    def model_label(self, model: str | None) -> str:
        """The model name if served, empty for no model (None), else `_unknown` (caller-chosen strings
        never become labels)."""
        if model is None:
            return NO_MODEL
        return model if model in self.models else UNKNOWN_MODEL

    # --- what the service records -------------------------------------------------------------

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: prometheus' own lookup costs ~4 us and runs per request."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def record_rpc(self, model: str | None, method: str, code: str, seconds: float | None,
                   timing: tuple[float, float] | None = None) -> None:
        """One answered RPC: its status code and, for calls that reached the servicer, its duration
        (None for calls refused before it, e.g. by the token check); ``timing``: the mean queue and
        compute seconds of its images, for a call whose images were computed."""
        label = model if model == MIXED_MODELS else self.model_label(model)
        method = method if method in RPC_METHODS else "other"
        self._child(self.requests, label, method, code).inc()
        if seconds is not None and method in INFER_METHODS:
            self._child(self.request_duration, label, method).observe(seconds)
            self.statistics.call(model, code == "OK", seconds, timing)

    def record_refusal(self, method: str, reason: str, code: str | None) -> None:
        """A call refused before a handler read it (``camserve.front.limits``): counted by reason, and as
        an answered RPC when its status ``code`` is known."""
        self._child(self.transport_refusals, reason if reason in REFUSAL_REASONS else "not_received").inc()
        if code is not None:
            self.record_rpc(None, method.rsplit("/", 1)[-1], code, None)

    def record_result(self, model: str, queue_s: float, compute_s: float) -> None:
        """Server-side split of one computed image (the histograms count images; the statistics
        count calls, see ``record_rpc``)."""
        label = self.model_label(model)
        self._child(self.queue_duration, label).observe(max(0.0, queue_s))
        self._child(self.compute_duration, label).observe(max(0.0, compute_s))

    # --- the Dispatcher's Observer protocol ----------------------------------------------------

    def batch_formed(self, model: str, size: int) -> None:
        self._child(self.batch_size, self.model_label(model)).observe(size)
        self.statistics.batch(model, size)

    def queue_depth(self, model: str, depth: int) -> None:
        self._child(self.queue_depth_gauge, self.model_label(model)).set(depth)

    def workers_alive(self, n: int) -> None:
        self.workers_alive_gauge.set(n)
        self._changed()

    def worker_restarted(self) -> None:
        self.worker_restarts.inc()

    def request_dropped(self, model: str, reason: str) -> None:
        self.requests_dropped.labels(self.model_label(model), str(reason)[:32]).inc()

    def model_ready(self, model: str, ready: bool) -> None:
        self.model_ready_gauge.labels(self.model_label(model)).set(1 if ready else 0)
        self._changed()

    def _changed(self) -> None:
        """Readiness may have changed: let the server refresh health at once instead of at its next poll."""
        if self.on_change is not None:
            self.on_change()

    def exposition_registry(self) -> CollectorRegistry:
        """What /metrics exports: this object's registry, merged with the front ends' files when the
        server has front-end processes."""
        if self.front_ends_dir is None:
            return self.registry
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(self.registry, self.front_ends_dir))  # type: ignore[arg-type]
        return registry

    def rpc_totals(self) -> dict[str, int]:
        """Answered RPCs so far, by every process, as {"Method/CODE": count} (logged at SIGTERM and stop)."""
        totals: dict[str, int] = {}
        for metric in self.exposition_registry().collect():
            if metric.name != "camserve_requests":
                continue
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    key = f"{sample.labels['method']}/{sample.labels['code']}"
                    totals[key] = totals.get(key, 0) + int(sample.value)
        return dict(sorted(totals.items()))

    def render(self) -> bytes:
        """The exposition text (what /metrics serves)."""
        return generate_latest(self.exposition_registry())

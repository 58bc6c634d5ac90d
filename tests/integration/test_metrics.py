"""camserve.front.metrics: the names of DESIGN.md, the Observer protocol, label hygiene, the HTTP endpoint."""

from __future__ import annotations

import asyncio
import gzip
import inspect
import urllib.error
import urllib.request

from camserve.front.metrics import Metrics, batch_buckets
from camserve.front.metrics_http import MetricsHTTPServer
from camserve.scheduling.observer import Observer
from prometheus_client.parser import text_string_to_metric_families

OBSERVER_METHODS = [name for name in vars(Observer) if not name.startswith("_")]


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the exposition text with prometheus' own parser (an independent reader)."""
    out = {}
    for fam in text_string_to_metric_families(metrics.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_design_names_exported_from_the_start() -> None:
    m = Metrics(["demo"], max_batch_size=8)
    names = {name for name, _ in samples(m)}
    for need in ("camserve_request_duration_seconds_bucket", "camserve_queue_duration_seconds_bucket",
                 "camserve_compute_duration_seconds_bucket", "camserve_batch_size_bucket",
                 "camserve_requests_total", "camserve_worker_restarts_total", "camserve_queue_depth",
                 "camserve_workers_alive", "camserve_model_ready", "camserve_requests_dropped_total"):
        assert need in names, need


def test_observer_protocol_signatures() -> None:
    assert len(OBSERVER_METHODS) == 6, OBSERVER_METHODS
    for name in OBSERVER_METHODS:
        want = list(inspect.signature(getattr(Observer, name)).parameters)
        assert list(inspect.signature(getattr(Metrics, name)).parameters) == want, name


def test_observer_and_service_records() -> None:
    m = Metrics(["demo", "other"], max_batch_size=8)
    changes = []
    m.on_change = lambda: changes.append(1)
    for size in (1, 3, 8):
        m.batch_formed("demo", size)
    m.queue_depth("demo", 5)
    m.workers_alive(2)
    m.worker_restarted()
    m.request_dropped("demo", "deadline")
    m.model_ready("other", True)
    m.record_rpc("demo", "Explain", "OK", 0.02)
    m.record_rpc("no-such-model", "Explain", "NOT_FOUND", 0.001)
    m.record_rpc(None, "ListModels", "OK", 0.001)  # a call that names no model
    m.record_result("demo", 0.004, 0.010)
    s = samples(m)
    assert s[("camserve_batch_size_count", (("model", "demo"),))] == 3
    assert s[("camserve_batch_size_sum", (("model", "demo"),))] == 12
    assert s[("camserve_batch_size_bucket", (("le", "2.0"), ("model", "demo")))] == 1
    assert s[("camserve_batch_size_bucket", (("le", "8.0"), ("model", "demo")))] == 3
    assert s[("camserve_queue_depth", (("model", "demo"),))] == 5
    assert s[("camserve_workers_alive", ())] == 2
    assert s[("camserve_worker_restarts_total", ())] == 1
    assert s[("camserve_requests_dropped_total", (("model", "demo"), ("reason", "deadline")))] == 1
    assert s[("camserve_model_ready", (("model", "other"),))] == 1
    assert s[("camserve_requests_total", (("code", "OK"), ("method", "Explain"), ("model", "demo")))] == 1
    # A caller-invented model name never becomes a label value.
    assert s[("camserve_requests_total", (("code", "NOT_FOUND"), ("method", "Explain"),
                                          ("model", "_unknown")))] == 1
    assert not any(dict(labels).get("model") == "no-such-model" for _, labels in s)
    # A call that names no model is not a call for an unknown one: its model label is empty.
    assert s[("camserve_requests_total", (("code", "OK"), ("method", "ListModels"), ("model", "")))] == 1
    assert not any(dict(labels).get("method") == "ListModels" and dict(labels).get("model") == "_unknown"
                   for _, labels in s)
    assert s[("camserve_queue_duration_seconds_sum", (("model", "demo"),))] == 0.004
    assert len(changes) == 2  # workers_alive and model_ready trigger a health refresh


def test_batch_buckets() -> None:
    assert batch_buckets(1) == (1.0,)
    assert batch_buckets(32) == (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
    assert batch_buckets(10)[-1] == 10.0


def test_http_endpoint_serves_the_registry() -> None:
    m = Metrics(["demo"])
    m.batch_formed("demo", 4)

    async def scrape() -> tuple[str, bytes, int]:
        server = MetricsHTTPServer(m.registry)
        port = await server.start("127.0.0.1", 0)
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            text = (await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())).decode()
            req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
            zipped = await asyncio.to_thread(lambda: urllib.request.urlopen(req, timeout=5).read())
            try:
                await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{port}/nope", timeout=5)
                missing = 200
            except urllib.error.HTTPError as e:
                missing = e.code
            return text, zipped, missing
        finally:
            server.close()

    text, zipped, missing = asyncio.run(scrape())
    assert 'camserve_batch_size_sum{model="demo"} 4.0' in text
    assert gzip.decompress(zipped).decode() == text
    assert missing == 404

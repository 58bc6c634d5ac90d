"""The scale-out path the manifests set up, on loopback with real servers and a real Prometheus.

- Two camserve processes behind one `ipv4:` target: with round_robin (what the headless Service +
  `dns:///` gives in a cluster) both get calls; with the default pick_first one gets them all.
- A real Prometheus scrapes both, the request-duration histogram yields a quantile, every dashboard
  and alert expression evaluates, and the prometheus-adapter query of each HPA custom metric returns
  one value per pod. Every series the dashboard, alerts and adapter rules read (promql-parser's AST of
  each expression) is one Prometheus scraped from camserve, and quantiles read `_bucket` series: this
  test owns those rules of deploy/README.md.
- Scale-in: a SIGTERMed replica reports NOT_SERVING during its pre-stop window, and a client with
  client-side health checking moves every call to the other replica with no error (last test: it
  stops one of the servers).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import promql_parser
import pytest
import yaml
from camserve.front.metrics import Metrics
from camserve_proto import explain_pb2, explain_pb2_grpc
from serverproc import ServerProcess

from deploy import check

ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
# What deploy/README.md recommends to clients: round_robin plus client-side health checking.
ROUND_ROBIN_HEALTH = json.dumps({"loadBalancingConfig": [{"round_robin": {}}],
                                 "healthCheckConfig": {"serviceName": ""}})


@pytest.fixture(scope="module", autouse=True)
def _model(served_model: Any) -> Iterator[None]:
    """The requests below are for whichever small model the servers serve."""
    global MODEL
    MODEL = served_model
    yield


MODEL: Any = None  # conftest.ServedModel: repository, name, input_shape


def _request(seed: int) -> explain_pb2.ExplainRequest:
    assert MODEL is not None
    shape = list(MODEL.input_shape)
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    tensor = explain_pb2.Tensor(dtype=explain_pb2.UINT8, shape=shape, data=pixels.tobytes())
    return explain_pb2.ExplainRequest(model=MODEL.name, image=explain_pb2.Image(tensor=tensor),
                                      method=explain_pb2.GRAD_CAM)


def _ok(server: ServerProcess) -> float:
    assert MODEL is not None
    return server.metric("camserve_requests_total", model=MODEL.name, method="Explain", code="OK")


def _call(target: str, service_config: str | None, n: int) -> list[float]:
    """n Explain calls over one channel; returns client-side latencies (all must succeed)."""
    options = [("grpc.service_config", service_config)] if service_config else []
    latencies = []
    with grpc.insecure_channel(target, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=15)
        stub = explain_pb2_grpc.ExplainServiceStub(channel)
        for i in range(n):
            t0 = time.perf_counter()
            reply = stub.Explain(_request(i), timeout=30, wait_for_ready=True)
            latencies.append(time.perf_counter() - t0)
            assert reply.explanations and reply.explanations[0].heatmap.shape
    return latencies


Pair = tuple[ServerProcess, ServerProcess]


def test_round_robin_spreads_calls_over_both_replicas(two_servers: Pair) -> None:
    a, b = two_servers
    target = f"ipv4:127.0.0.1:{a.grpc_port},127.0.0.1:{b.grpc_port}"
    before = (_ok(a), _ok(b))
    _call(target, ROUND_ROBIN, 16)
    got = (_ok(a) - before[0], _ok(b) - before[1])
    assert sum(got) == 16
    assert min(got) >= 4, f"round_robin should alternate replicas, got {got}"

    # The default policy (pick_first) pins the channel to one replica: why the guide insists on
    # round_robin (or an L7 mesh) in front of a headless Service.
    before = (_ok(a), _ok(b))
    _call(target, None, 8)
    got = (_ok(a) - before[0], _ok(b) - before[1])
    assert sorted(got) == [0, 8], got


# ---- a real Prometheus ------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A `prometheus` process on loopback with a throw-away TSDB, queried over its HTTP API."""

    def __init__(self, targets: list[str], rule_file: Path) -> None:
        exe = shutil.which("prometheus")
        assert exe is not None
        self.dir = Path(tempfile.mkdtemp(prefix="camserve-prom-"))
        self.port = _free_port()
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(rule_file)],
            # The labels a ServiceMonitor's Kubernetes discovery adds, which the adapter rule requires.
            "scrape_configs": [{"job_name": "camserve", "static_configs": [
                {"targets": [t], "labels": {"namespace": "ml", "pod": f"camserve-{i}"}}
                for i, t in enumerate(targets)]}],
        }))
        self.log = open(self.dir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [exe, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if urllib.request.urlopen(self.url("/-/ready"), timeout=1).status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start:\n{(self.dir / 'prometheus.log').read_text()}")
            time.sleep(0.2)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def api(self, path: str, **params: str) -> Any:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        try:
            body = urllib.request.urlopen(self.url(path + query), timeout=10).read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        return json.loads(body)

    def query(self, expr: str) -> Any:
        return self.api("/api/v1/query", query=expr)

    def wait_vector(self, expr: str, timeout: float = 20.0, min_series: int = 1) -> list[Any]:
        """Poll until `expr` returns at least `min_series` series, all finite numbers."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self.query(expr)
            assert reply["status"] == "success", (expr, reply)
            result = reply["data"]["result"]
            if len(result) >= min_series and all(math.isfinite(float(r["value"][1])) for r in result):
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expr} returned {result} for {timeout:.0f}s")
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def prometheus(two_servers: Pair) -> Iterator[Prometheus]:
    if shutil.which("prometheus") is None:
        pytest.fail("Debian's prometheus is not installed: `make system-deps` installs it")
    prom = Prometheus([f"127.0.0.1:{s.metrics_port}" for s in two_servers], check.ALERTS)
    try:
        yield prom
    finally:
        prom.stop()


def _bucket_upper_bound(seconds: float, metrics_text: str) -> float:
    """The histogram's smallest `le` bound >= seconds (read from the server's own exposition)."""
    bounds = sorted({float(m) for m in re.findall(
        r'camserve_request_duration_seconds_bucket\{[^}]*le="([0-9.e+-]+)"', metrics_text)})
    return next((b for b in bounds if b >= seconds), math.inf)


DASHBOARD = check.DEPLOY / "grafana/camserve-dashboard.json"
ADAPTER_VALUES = check.DEPLOY / "prometheus/prometheus-adapter-values.yaml"


def _nodes(tree: promql_parser.Expr, kind: type) -> list[Any]:
    """Every node of type `kind` in a parsed PromQL expression (promql-parser's AST)."""
    found: list[Any] = []
    promql_parser.walk(tree, lambda n: found.append(n) if isinstance(n, kind) else None)
    return found


def read_problems(exprs: list[tuple[str, str]], scraped: set[str]) -> list[str]:
    """(where, PromQL) -> what is wrong: a series read that Prometheus did not scrape from camserve,
    a histogram_quantile over a series that is not a `_bucket` one."""
    out, series = [], promql_parser.VectorSelector
    for where, text in exprs:
        tree = promql_parser.parse(text)
        out += [f"{where}: {v.name} is not a series camserve exports" for v in _nodes(tree, series)
                if v.name not in scraped]
        out += [f"{where}: histogram_quantile over {v.name}, not a _bucket series"
                for q in _nodes(tree, promql_parser.Call) if q.func.name == "histogram_quantile"
                for v in _nodes(q.args[1], series) if not str(v.name).endswith("_bucket")]
    return out


def test_prometheus_scrapes_and_every_query_evaluates(
        two_servers: Pair, prometheus: Prometheus, render: Callable[[str], list[Any]]) -> None:
    a, b = two_servers
    target = f"ipv4:127.0.0.1:{a.grpc_port},127.0.0.1:{b.grpc_port}"
    # Both targets scraped once before the traffic, so rate() sees the increase.
    up = prometheus.wait_vector('up{job="camserve"} == 1', min_series=2)
    assert len(up) == 2
    t0 = time.time()  # after a scrape of both, before the calls
    latencies = _call(target, ROUND_ROBIN, 24)

    # The acceptance query: a latency quantile over the server's histogram is a number, and no
    # larger than the bucket holding the slowest call the client saw (server time <= client time).
    # Over exactly these calls: the counters now minus their value at t0 (`@`), not rate(), whose
    # extrapolation differs from bucket to bucket (it stops at zero) and can skew the quantile.
    def since(selector: str) -> str:
        return f"({selector} - {selector} @ {t0:.3f})"
    explains = since('camserve_requests_total{method="Explain"}')
    prometheus.wait_vector(f"sum{explains} >= {len(latencies)}")  # every call scraped
    expr = f"histogram_quantile(0.9, sum by (le) {since('camserve_request_duration_seconds_bucket')})"
    p90 = float(prometheus.wait_vector(expr)[0]["value"][1])
    assert 0 < p90 <= _bucket_upper_bound(max(latencies), a.metrics_text()), (p90, max(latencies))

    # Every series the server's registry declares is scraped (the names below are what Prometheus has).
    scraped = {r["metric"]["__name__"]
               for r in prometheus.wait_vector('count by (__name__) ({job="camserve"})')}
    declared = {s.name for f in Metrics(["m"]).registry.collect() for s in f.samples
                if not s.name.endswith("_created")}
    assert declared <= scraped, f"{declared - scraped} not scraped (have {sorted(scraped)})"

    # Every expression of the dashboard, the alerts and the adapter rules reads only scraped camserve
    # series, quantiles over _bucket; and the check itself catches a misspelt series and a quantile
    # over a _count.
    concrete = lambda e: (e.replace("$__rate_interval", "20s").replace("$namespace", ".*")  # noqa: E731
                          .replace("$model", ".*").replace("<<.LabelMatchers>>", 'job="camserve"')
                          .replace("<<.GroupBy>>", "instance"))
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [(f"panel {p['title']!r}", concrete(t["expr"]))
              for p in dashboard["panels"] for t in p["targets"]]
    adapter_rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    alerts = [(f"alert {r['alert']}", r["expr"]) for g in yaml.safe_load(check.ALERTS.read_text())["groups"]
              for r in g["rules"]]
    adapter = [(f"adapter rule {r['name']['as']}", concrete(r[q])) for r in adapter_rules
               for q in ("seriesQuery", "metricsQuery")]
    # The dashboard's variables: label_values(selector, label), which Grafana asks Prometheus for.
    variables = [(v["name"], *re.fullmatch(r"label_values\((.+), *(\w+)\)", v["query"]["query"]).groups())
                 for v in dashboard["templating"]["list"] if v["type"] == "query"]
    selectors = [(f"variable {v}", concrete(sel)) for v, sel, _ in variables]
    assert read_problems(panels + alerts + adapter + selectors, scraped) == []
    typo = [("typo", panels[0][1].replace("camserve_requests_total", "camserve_request_total")),
            ("count", "histogram_quantile(0.5, rate(camserve_batch_size_count[1m]))")]
    assert read_problems(typo, scraped) == ["typo: camserve_request_total is not a series camserve exports",
                                            "count: histogram_quantile over camserve_batch_size_count, "
                                            "not a _bucket series"]

    # Every dashboard expression is valid PromQL for this Prometheus; the throughput and the p99
    # panels have data, and so has each variable and each adapter rule's series query.
    for (v, sel, label), (_, concrete_sel) in zip(variables, selectors, strict=True):
        assert prometheus.api(f"/api/v1/label/{label}/values", **{"match[]": concrete_sel})["data"], (v, sel)
    for r in adapter_rules:
        assert prometheus.api("/api/v1/series", **{"match[]": r["seriesQuery"]})["data"], r["seriesQuery"]
    for where, e in panels:
        reply = prometheus.query(e)
        assert reply["status"] == "success", (where, e, reply)
    p99 = [e for where, e in panels if "histogram_quantile(0.99" in e]
    assert p99, "the dashboard has no p99 latency panel"
    assert float(prometheus.wait_vector(p99[0])[0]["value"][1]) > 0
    rate = prometheus.wait_vector(
        'sum(rate(camserve_requests_total{namespace=~".*", model=~".*"}[20s]))')
    assert float(rate[0]["value"][1]) > 0

    # Each custom metric the HPA scales on comes from a prometheus-adapter rule whose query gives
    # one finite value per pod (target).
    rules_by_metric = {r["name"]["as"]: r for r in adapter_rules}
    hpa = next(d for d in render("gpu") if d["kind"] == "HorizontalPodAutoscaler")
    custom = [m[m["type"].lower()]["metric"]["name"] for m in hpa["spec"]["metrics"]
              if m["type"] in ("Pods", "Object", "External")]
    assert custom and set(custom) <= set(rules_by_metric), (custom, sorted(rules_by_metric))
    for metric in custom:
        per_pod = prometheus.wait_vector(concrete(rules_by_metric[metric]["metricsQuery"]), min_series=2)
        assert {r["metric"]["instance"] for r in per_pod} == {f"127.0.0.1:{s.metrics_port}" for s in (a, b)}
        assert all(float(r["value"][1]) >= 0 for r in per_pod)

    # The alert rules load and evaluate without error against live series; none fires on a
    # healthy pair of servers.
    deadline = time.monotonic() + 15
    while True:
        loaded = [r for g in prometheus.api("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        if loaded and all(r.get("lastEvaluation", "").startswith("20") for r in loaded):
            break
        assert time.monotonic() < deadline, loaded
        time.sleep(0.5)
    assert len(loaded) == len(alerts)
    assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded]
    assert [r["name"] for r in loaded if r["state"] != "inactive"] == []


def test_scale_in_moves_traffic_without_errors(two_servers: Pair) -> None:
    """SIGTERM one replica (runs last: it stops it). During its pre-stop window it still serves
    but says NOT_SERVING; a client with client-side health checking stops routing to it, and every
    call succeeds on the other replica; the stopped server exits 0."""
    a, b = two_servers
    target = f"ipv4:127.0.0.1:{a.grpc_port},127.0.0.1:{b.grpc_port}"
    options = [("grpc.service_config", ROUND_ROBIN_HEALTH)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = explain_pb2_grpc.ExplainServiceStub(channel)
        grpc.channel_ready_future(channel).result(timeout=15)
        before = (_ok(a), _ok(b))
        for i in range(8):
            stub.Explain(_request(i), timeout=30, wait_for_ready=True)
        assert min(_ok(a) - before[0], _ok(b) - before[1]) >= 2  # both healthy: both used
        b.send_signal(signal.SIGTERM)
        b.wait_health("NOT_SERVING", timeout=10, poll=0.05)
        # Wait (an event, not a time) until the client's health watch has taken b out of its picks:
        # round_robin over two ready replicas never sends two calls in a row to the same one, so two
        # in a row on a mean b is out. The probes that still reach b are served (its pre-stop window).
        in_a_row, deadline = 0, time.monotonic() + 30
        while in_a_row < 2:
            assert time.monotonic() < deadline, "the client kept routing to the NOT_SERVING replica for 30 s"
            was = _ok(a)
            stub.Explain(_request(50), timeout=30, wait_for_ready=True)
            in_a_row = in_a_row + 1 if _ok(a) == was + 1 else 0
        before_a = _ok(a)
        for i in range(12):
            stub.Explain(_request(100 + i), timeout=30, wait_for_ready=True)
        assert _ok(a) - before_a == 12
    assert b.wait(timeout=60) == 0

"""The scale-out path the manifests set up, on loopback with real servers and a real Prometheus.

- Two camserve processes behind one `ipv4:` target: with round_robin (what the headless Service +
  `dns:///` gives in a cluster) both get calls; with the default pick_first one gets them all.
- A real Prometheus scrapes both, the request-duration histogram yields a quantile, every dashboard
  and alert expression evaluates, and the prometheus-adapter query that feeds the HPA returns one
  value per pod.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from camserve_proto import explain_pb2, explain_pb2_grpc
from serverproc import ServerProcess

from deploy import check, rules

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
            "scrape_configs": [{"job_name": "camserve", "static_configs": [{"targets": targets}]}],
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


def test_prometheus_scrapes_and_every_query_evaluates(
        two_servers: Pair, prometheus: Prometheus) -> None:
    a, b = two_servers
    target = f"ipv4:127.0.0.1:{a.grpc_port},127.0.0.1:{b.grpc_port}"
    # Both targets scraped once before the traffic, so rate() sees the increase.
    up = prometheus.wait_vector('up{job="camserve"} == 1', min_series=2)
    assert len(up) == 2
    latencies = _call(target, ROUND_ROBIN, 24)

    # The acceptance query: a latency quantile over the server's histogram is a number, and no
    # larger than the bucket holding the slowest call the client saw (server time <= client time).
    expr = ('histogram_quantile(0.9, sum by (le) '
            '(rate(camserve_request_duration_seconds_bucket{job="camserve"}[20s])))')
    p90 = float(prometheus.wait_vector(expr)[0]["value"][1])
    assert 0 < p90 <= _bucket_upper_bound(max(latencies), a.metrics_text()), (p90, max(latencies))

    # Every metric the dashboard, alerts and adapter rule name is really exported and scraped.
    names = {r["metric"]["__name__"] for r in prometheus.wait_vector(
        'count by (__name__) ({__name__=~"camserve_.*"})')}
    wanted = rules.exported_series()
    assert wanted <= names, f"{wanted - names} not scraped (have {sorted(names)})"

    # Every dashboard expression is valid PromQL for this Prometheus; the throughput one has data.
    dashboard = json.loads(check.DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for e in exprs:
        concrete = (e.replace("$__rate_interval", "20s").replace("$namespace", ".*")
                    .replace("$model", ".*"))
        reply = prometheus.query(concrete)
        assert reply["status"] == "success", (concrete, reply)
    rate = prometheus.wait_vector(
        'sum(rate(camserve_requests_total{namespace=~".*", model=~".*"}[20s]))')
    assert float(rate[0]["value"][1]) > 0

    # The prometheus-adapter rule the HPA depends on: one finite value per pod (target).
    adapter = yaml.safe_load(check.ADAPTER_VALUES.read_text())["rules"]["custom"][0]
    q = (adapter["metricsQuery"].replace("<<.LabelMatchers>>", 'job="camserve"')
         .replace("<<.GroupBy>>", "instance"))
    per_pod = prometheus.wait_vector(q, min_series=2)
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
    assert len(loaded) == 6
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

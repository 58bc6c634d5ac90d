"""deploy.check: the shipped manifests pass, and each rule catches the mistake it exists for.

Every broken case starts from the real rendered overlay, breaks one thing the way an operator
would, and asserts that the named rule (and only a relevant rule) reports it; the pristine overlay
reports nothing, so a rule that fires on everything fails here too.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import check
from deploy.kustomize import RenderError, render, strategic_merge

ROOT = Path(__file__).resolve().parents[2]
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def gpu_docs() -> list[Doc]:
    return render(check.OVERLAYS["gpu"])


@pytest.fixture(scope="module")
def cpu_docs() -> list[Doc]:
    return render(check.OVERLAYS["cpu"])


def obj(docs: list[Doc], kind: str, name: str = "camserve") -> Doc:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def container(docs: list[Doc]) -> Doc:
    return obj(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def pod(docs: list[Doc]) -> Doc:
    return obj(docs, "Deployment")["spec"]["template"]["spec"]


def test_deploy_check_command_passes() -> None:
    """`python -m deploy.check` (what `make deploy-check` runs) exits 0 on the shipped files."""
    proc = subprocess.run([sys.executable, "-m", "deploy.check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "deploy-check passed" in proc.stdout
    # It really validated each overlay at both pinned versions and resolved args with the real CLI.
    for name in ("base", "gpu", "cpu"):
        for v in (check.OLDEST_K8S, check.NEWEST_K8S):
            assert f"ok   {name}: kubernetes-validate --strict {v}" in proc.stdout
    assert "its own parser" in proc.stdout


def test_render_command_round_trips(gpu_docs: list[Doc]) -> None:
    proc = subprocess.run([sys.executable, "-m", "deploy.check", "--render", "gpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert list(yaml.safe_load_all(proc.stdout)) == gpu_docs


def test_prometheus_rule_wraps_the_alerts() -> None:
    proc = subprocess.run([sys.executable, "-m", "deploy.check", "--prometheus-rule"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rule = yaml.safe_load(proc.stdout)
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(check.ALERTS.read_text())["groups"]


def test_overlays_render_what_kustomize_would(gpu_docs: list[Doc], cpu_docs: list[Doc]) -> None:
    """Independent expectations for the strategic merges the overlays rely on."""
    c = container(gpu_docs)
    assert c["image"] == "registry.example.com/camserve/camserve-gpu:0.1.0"
    assert c["resources"] == {"requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 1},
                              "limits": {"memory": "16Gi", "nvidia.com/gpu": 1}}
    # Keyed lists merged, not replaced: probes keep their base fields, volumes keep the others.
    assert c["startupProbe"] == {"grpc": {"port": 50051}, "periodSeconds": 10, "timeoutSeconds": 5,
                                 "failureThreshold": 60}
    vols = {v["name"]: v for v in pod(gpu_docs)["volumes"]}
    assert set(vols) == {"models", "tmp", "dshm"}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert [e["name"] for e in c["env"]] == ["HOME", "KERAS_HOME"]
    assert pod(gpu_docs)["tolerations"][0]["key"] == "nvidia.com/gpu"
    cm = obj(gpu_docs, "ConfigMap", "camserve-config")["data"]
    assert cm["CAMSERVE_WORKERS"] == "gpu" and cm["CAMSERVE_DRAIN_SECONDS"] == "30"
    assert obj(gpu_docs, "Service")["metadata"]["labels"]["app.kubernetes.io/variant"] == "gpu"
    # Labels without includeSelectors leave selectors alone (they are immutable on a Deployment).
    assert "app.kubernetes.io/variant" not in obj(gpu_docs, "Deployment")["spec"]["selector"]["matchLabels"]
    cc = container(cpu_docs)
    assert "nvidia.com/gpu" not in json.dumps(cpu_docs)
    assert cc["resources"]["requests"] == {"cpu": "4", "memory": "8Gi"}
    assert obj(cpu_docs, "ConfigMap", "camserve-config")["data"]["CAMSERVE_WORKERS"] == "cpu:2"


def test_server_settings_follow_the_real_cli(gpu_docs: list[Doc], cpu_docs: list[Doc]) -> None:
    s, errors = check.server_settings(container(gpu_docs), gpu_docs)
    assert errors == []
    got = (s["grpc_port"], s["metrics_port"], s["pre_stop_seconds"], s["drain_seconds"])
    assert got == (50051, 9464, 10, 30)
    assert s["workers"] == "gpu" and s["model_repository"] == "/models"
    assert check.server_settings(container(cpu_docs), cpu_docs)[0]["workers"] == "cpu:2"


# ---- each project rule catches its mistake ---------------------------------------------------------

def _gpu_req(d: list[Doc]) -> None:
    container(d)["resources"]["requests"]["nvidia.com/gpu"] = 2


def _gpu_no_limit(d: list[Doc]) -> None:
    del container(d)["resources"]["limits"]["nvidia.com/gpu"]


def _gpu_no_toleration(d: list[Doc]) -> None:
    del pod(d)["tolerations"]


def _deploy_selector(d: list[Doc]) -> None:
    obj(d, "Deployment")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] = "other"


def _service_selector(d: list[Doc]) -> None:
    obj(d, "Service", "camserve-headless")["spec"]["selector"] = {"app": "camserve"}


def _pdb_selector(d: list[Doc]) -> None:
    obj(d, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] = {"app": "camserve"}


def _sm_two_services(d: list[Doc]) -> None:
    del obj(d, "ServiceMonitor")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]


def _spread_selector(d: list[Doc]) -> None:
    pod(d)["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"] = {"app": "x"}


def _probe_port(d: list[Doc]) -> None:
    container(d)["readinessProbe"]["grpc"]["port"] = 50052


def _probe_named_port(d: list[Doc]) -> None:
    container(d)["livenessProbe"]["grpc"]["port"] = "grpc"


def _env_moves_port(d: list[Doc]) -> None:
    container(d)["args"] = ["serve"]
    obj(d, "ConfigMap", "camserve-config")["data"]["CAMSERVE_GRPC_PORT"] = "6000"


def _arg_moves_port(d: list[Doc]) -> None:
    container(d)["args"] = ["serve", "--grpc-port", "6000", "--metrics-port=9464"]


def _tcp_probe(d: list[Doc]) -> None:
    container(d)["startupProbe"] = {"tcpSocket": {"port": 50051}, "failureThreshold": 60}


def _short_startup(d: list[Doc]) -> None:
    container(d)["startupProbe"]["failureThreshold"] = 6


def _loopback(d: list[Doc]) -> None:
    obj(d, "ConfigMap", "camserve-config")["data"]["CAMSERVE_HOST"] = "127.0.0.1"


def _replicas(d: list[Doc]) -> None:
    obj(d, "Deployment")["spec"]["replicas"] = 3


def _sm_port(d: list[Doc]) -> None:
    obj(d, "ServiceMonitor")["spec"]["endpoints"][0]["port"] = "http-metrics"


def _metrics_target(d: list[Doc]) -> None:
    obj(d, "Service")["spec"]["ports"][1]["targetPort"] = 9465


def _metrics_port_arg(d: list[Doc]) -> None:
    container(d)["args"] = ["serve", "--grpc-port=50051", "--metrics-port=9100"]


def _grace(d: list[Doc]) -> None:
    pod(d)["terminationGracePeriodSeconds"] = 45


def _drain(d: list[Doc]) -> None:
    obj(d, "ConfigMap", "camserve-config")["data"]["CAMSERVE_DRAIN_SECONDS"] = "50"


def _liveness(d: list[Doc]) -> None:
    container(d)["livenessProbe"]["failureThreshold"] = 3


def _prestop(d: list[Doc]) -> None:
    container(d)["lifecycle"]["preStop"]["exec"]["command"] = ["sleep", "30"]


def _service_links(d: list[Doc]) -> None:
    del pod(d)["enableServiceLinks"]


def _root(d: list[Doc]) -> None:
    pod(d)["securityContext"]["runAsUser"] = 0


def _escalation(d: list[Doc]) -> None:
    container(d)["securityContext"]["allowPrivilegeEscalation"] = True


def _no_shm(d: list[Doc]) -> None:
    container(d)["volumeMounts"] = [m for m in container(d)["volumeMounts"] if m["name"] != "dshm"]


def _token(d: list[Doc]) -> None:
    del pod(d)["automountServiceAccountToken"]
    obj(d, "ServiceAccount")["automountServiceAccountToken"] = True


def _unknown_flag(d: list[Doc]) -> None:
    container(d)["args"] = ["serve", "--grpc-port=50051", "--metrics-port=9464", "--prestop=10"]


def _bad_env_value(d: list[Doc]) -> None:
    obj(d, "ConfigMap", "camserve-config")["data"]["CAMSERVE_WORKERS"] = "gpus"


def _repo_not_mounted(d: list[Doc]) -> None:
    obj(d, "ConfigMap", "camserve-config")["data"]["CAMSERVE_MODEL_REPOSITORY"] = "/srv/models"


def _min_replicas(d: list[Doc]) -> None:
    obj(d, "HorizontalPodAutoscaler")["spec"]["minReplicas"] = 1


BROKEN: dict[str, tuple[Callable[[list[Doc]], None], str]] = {
    "gpu requests != limits": (_gpu_req, "gpu-requests-equal-limits"),
    "gpu requested, not limited": (_gpu_no_limit, "gpu-requests-equal-limits"),
    "gpu pod without toleration": (_gpu_no_toleration, "gpu-scheduling"),
    "deployment selector": (_deploy_selector, "selectors-match"),
    "service selector": (_service_selector, "selectors-match"),
    "pdb selector": (_pdb_selector, "selectors-match"),
    "servicemonitor selects both services": (_sm_two_services, "selectors-match"),
    "spread constraint selector": (_spread_selector, "selectors-match"),
    "probe on another port": (_probe_port, "probe-ports"),
    "probe on a named port": (_probe_named_port, "probe-ports"),
    "env moves the grpc port": (_env_moves_port, "probe-ports"),
    "arg moves the grpc port": (_arg_moves_port, "probe-ports"),
    "tcp startup probe": (_tcp_probe, "probe-ports"),
    "startup budget too short": (_short_startup, "probe-ports"),
    "loopback host": (_loopback, "probe-ports"),
    "replicas under hpa": (_replicas, "no-replicas-under-hpa"),
    "hpa min 1": (_min_replicas, "no-replicas-under-hpa"),
    "servicemonitor port missing": (_sm_port, "servicemonitor-port"),
    "metrics target port": (_metrics_target, "servicemonitor-port"),
    "metrics port moved by arg": (_metrics_port_arg, "servicemonitor-port"),
    "grace period": (_grace, "grace-period"),
    "drain longer": (_drain, "grace-period"),
    "liveness kills draining pod": (_liveness, "grace-period"),
    "long preStop": (_prestop, "grace-period"),
    "service links": (_service_links, "security-context"),
    "root": (_root, "security-context"),
    "privilege escalation": (_escalation, "security-context"),
    "no /dev/shm": (_no_shm, "security-context"),
    "sa token": (_token, "security-context"),
    "unknown flag": (_unknown_flag, "server-args"),
    "bad env value": (_bad_env_value, "server-args"),
    "repository not mounted": (_repo_not_mounted, "model-volume"),
}


def test_pristine_overlays_have_no_problems(gpu_docs: list[Doc], cpu_docs: list[Doc]) -> None:
    assert check.project_problems(gpu_docs) == []
    assert check.project_problems(cpu_docs) == []


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_rule_catches_its_mistake(case: str, gpu_docs: list[Doc]) -> None:
    breaker, rule = BROKEN[case]
    docs = copy.deepcopy(gpu_docs)
    breaker(docs)
    problems = check.project_problems(docs)
    assert rule in {p.rule for p in problems}, f"{case}: expected [{rule}], got {[str(p) for p in problems]}"


def test_schema_catches_typos_and_removed_apis(gpu_docs: list[Doc]) -> None:
    docs = copy.deepcopy(gpu_docs)
    container(docs)["resources"]["limit"] = container(docs)["resources"].pop("limits")
    old = obj(docs, "PodDisruptionBudget")
    old["apiVersion"] = "policy/v1beta1"  # removed in Kubernetes 1.25
    sm = obj(docs, "ServiceMonitor")
    sm["spec"]["endpoints"][0]["intervall"] = "15s"
    problems = [str(p) for p in check.schema_problems(docs, check.OLDEST_K8S)]
    assert any("Deployment/camserve" in p and "'limit' was unexpected" in p for p in problems), problems
    assert any("PodDisruptionBudget" in p and "does not exist" in p for p in problems), problems
    assert any("ServiceMonitor" in p and "intervall" in p for p in problems), problems
    # A named port in a gRPC probe is a schema error too (int32), not only a project rule.
    docs = copy.deepcopy(gpu_docs)
    container(docs)["readinessProbe"]["grpc"]["port"] = "grpc"
    assert any("readinessProbe" in str(p) for p in check.schema_problems(docs, check.NEWEST_K8S))


def test_monitoring_references(gpu_docs: list[Doc]) -> None:
    adapter = yaml.safe_load(check.ADAPTER_VALUES.read_text())
    alerts = yaml.safe_load(check.ALERTS.read_text())
    dashboard = json.loads(check.DASHBOARD.read_text())
    assert check.monitoring_problems(gpu_docs, adapter, alerts, dashboard) == []
    docs = copy.deepcopy(gpu_docs)
    obj(docs, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"] = "queue_time"
    bad_dash = copy.deepcopy(dashboard)
    bad_dash["panels"][0]["targets"][0]["expr"] = "sum(rate(camserve_request_total[1m]))"
    rules = {p.rule for p in check.monitoring_problems(docs, adapter, alerts, bad_dash)}
    assert rules == {"hpa-metric", "metric-names"}


def test_dockerfile_rules_and_hadolint(tmp_path: Path) -> None:
    assert check.dockerfile_problems(check.DOCKERFILES["gpu"], gpu=True) == []
    single = tmp_path / "Dockerfile"
    single.write_text("FROM python:3.11-slim\nRUN pip install --no-cache-dir camserve==0.1.0\n"
                      "USER root\nENTRYPOINT camserve serve\n")
    msgs = " ".join(str(p) for p in check.dockerfile_problems(single, gpu=True))
    for needle in ("two stages", "USER root", "exec form", "NVIDIA_DRIVER_CAPABILITIES"):
        assert needle in msgs
    lint = tmp_path / "Dockerfile.lint"
    lint.write_text("FROM python\nRUN apt-get install curl\n")
    found = " ".join(p.message for p in check.hadolint_problems([lint]))
    assert "DL3006" in found and "DL3008" in found
    assert check.hadolint_problems(list(check.DOCKERFILES.values())) == []


def test_flags_win_over_env(gpu_docs: list[Doc]) -> None:
    """The manifest pins ports in args; a CAMSERVE_GRPC_PORT in the ConfigMap cannot move them."""
    docs = copy.deepcopy(gpu_docs)
    obj(docs, "ConfigMap", "camserve-config")["data"]["CAMSERVE_GRPC_PORT"] = "6000"
    assert check.server_settings(container(docs), docs)[0]["grpc_port"] == 50051
    assert check.project_problems(docs) == []


def test_yamllint_catches_duplicate_keys(tmp_path: Path) -> None:
    bad = tmp_path / "dup.yaml"
    bad.write_text("a: 1\na: 2\n")
    assert any("duplication" in p.message for p in check.yamllint_problems([bad]))


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    exe = check._tool("promtool")
    if exe is None:
        pytest.skip("promtool absent: apt-get install -y prometheus")
    good = subprocess.run([exe, "check", "rules", str(check.ALERTS)], capture_output=True, text=True)
    assert good.returncode == 0, good.stdout + good.stderr
    broken = tmp_path / "alerts.yaml"
    broken.write_text(check.ALERTS.read_text().replace("> 0.25", "> > 0.25", 1))
    bad = subprocess.run([exe, "check", "rules", str(broken)], capture_output=True, text=True)
    assert bad.returncode != 0


# ---- the renderer on its own --------------------------------------------------------------------------

def test_strategic_merge_directives() -> None:
    base = {"spec": {"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 1, "name": "p"}]},
                                    {"name": "b", "image": "y"}],
                     "tolerations": [{"key": "k1"}], "keep": 1, "drop": 2}}
    patch = {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 2, "name": "q"}]},
                                     {"name": "b", "$patch": "delete"},
                                     {"name": "c", "image": "z"}],
                      "tolerations": [{"key": "k2"}], "drop": None}}
    assert strategic_merge(base, patch) == {"spec": {
        "containers": [{"name": "a", "image": "x",
                        "ports": [{"containerPort": 1, "name": "p"}, {"containerPort": 2, "name": "q"}]},
                       {"name": "c", "image": "z"}],
        "tolerations": [{"key": "k2"}], "keep": 1}}


def test_json6902_and_unsupported_fields(tmp_path: Path) -> None:
    (tmp_path / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: '1'}\n")
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n  - target: {kind: ConfigMap, name: c}\n    patch: |\n"
        "      - {op: add, path: /data/b, value: '2'}\n      - {op: remove, path: /data/a}\n")
    assert render(tmp_path)[0]["data"] == {"b": "2"}
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\nnamePrefix: x-\n")
    with pytest.raises(RenderError, match="namePrefix"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml, cm.yaml]\n")
    with pytest.raises(RenderError, match="twice"):
        render(tmp_path)

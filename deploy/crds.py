"""Custom resources (no Kubernetes schema) validated by models generated from their CRDs.

kubernetes-validate bundles schemas for built-in kinds only. The API server checks a custom resource
against its CRD's schema and, with strict field validation (kubectl's default), rejects unknown
fields; the cloudcoil-models-* packages are typed models generated from the upstream CRDs, and
pydantic with extra="forbid" gives that answer offline. Runs in the deploy tools environment
(deploy/tools.txt), where the models are: `deploy.check` pipes in every object kubernetes-validate
has no schema for; out comes JSON: {"problems": [[index, message]], "unvalidated": [[index, reason]]},
the index of the object in the input (exit 1 if any problem).

Every kind is handled explicitly: validated by a model in MODELS, or listed in NO_SCHEMA with the
reason it is accepted unvalidated; anything else (an unknown CRD, or a built-in API that Kubernetes
removed) is a problem. To add a kind (e.g. KServe's ServingRuntime, InferenceService): pin its model
package in deploy/tools.txt and add a row to MODELS, or add it to NO_SCHEMA saying why.
"""

from __future__ import annotations

import importlib
import json
import sys

import pydantic
import yaml

MODELS = {  # (apiVersion, kind) -> "module:class"; prometheus-operator v0.80 CRDs
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "cloudcoil.models.prometheus_operator.v1:ServiceMonitor",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "cloudcoil.models.prometheus_operator.v1:PrometheusRule",
}
NO_SCHEMA: dict[tuple[str, str], str] = {}  # (apiVersion, kind) -> why it is accepted without a schema


def check(docs: list[dict]) -> dict[str, list[tuple[int, str]]]:
    out, unvalidated = [], []
    for i, d in enumerate(docs):
        key = (d.get("apiVersion", ""), d.get("kind", ""))
        if key in NO_SCHEMA:
            unvalidated.append((i, NO_SCHEMA[key]))
            continue
        if key not in MODELS:
            out.append((i, f"{key[0]} {key[1]} is neither a Kubernetes API of the versions checked nor a "
                               "custom resource deploy/crds.py knows (MODELS or NO_SCHEMA)"))
            continue
        module, name = MODELS[key].split(":")
        try:
            getattr(importlib.import_module(module), name).model_validate(d, extra="forbid")
        except pydantic.ValidationError as exc:
            out += [(i, f"{'.'.join(map(str, e['loc']))}: {e['msg']}") for e in exc.errors()]
    return {"problems": out, "unvalidated": unvalidated}


if __name__ == "__main__":
    result = check([d for d in yaml.safe_load_all(sys.stdin) if d])
    print(json.dumps(result))
    sys.exit(1 if result["problems"] else 0)

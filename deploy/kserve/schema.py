"""KServe's custom resources (ServingRuntime, InferenceService) checked against KServe's own CRD schemas.

kubernetes-validate bundles schemas for built-in kinds only, and no package on the registries we use
carries typed models of KServe's CRDs. So the openAPIV3Schema of each CRD version we use is kept in
``schemas/`` (from KServe's ``config/crd/full``, Apache-2.0 like camserve; descriptions dropped, gzip'd
JSON; ``SOURCE`` names the KServe commit) and regenerated from a KServe checkout with

    python -m deploy.kserve.schema --kserve /path/to/kserve

Validation is what the API server does with strict field validation (kubectl's default): types,
enums and required fields from the schema, and every field the schema does not declare refused
(structural schemas prune unknown fields; strict validation reports them).
"""

from __future__ import annotations

import argparse
import copy
import functools
import gzip
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMAS = HERE / "schemas"
#: (apiVersion, kind) -> (CRD file in KServe's config/crd/full, CRD version, schema file here)
KINDS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"):
        ("serving.kserve.io_servingruntimes.yaml", "v1alpha1", "servingruntime-v1alpha1.json.gz"),
    ("serving.kserve.io/v1beta1", "InferenceService"):
        ("serving.kserve.io_inferenceservices.yaml", "v1beta1", "inferenceservice-v1beta1.json.gz"),
}


def _drop_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_drop_descriptions(v) for v in node]
    return node


def _strict(node: Any) -> Any:
    """The schema with unknown fields refused wherever it lists properties and keeps no unknown fields."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@functools.cache
def schema(api_version: str, kind: str) -> dict[str, Any]:
    """The strict schema of ``kind`` (KeyError for a kind not in KINDS)."""
    _, _, name = KINDS[(api_version, kind)]
    with gzip.open(SCHEMAS / name, "rt") as f:
        raw = json.load(f)
    strict = _strict(copy.deepcopy(raw))
    # metadata is checked by the API server's ObjectMeta rules, not the CRD: allow its usual fields.
    strict["properties"]["metadata"] = {"type": "object"}
    return strict


def problems(doc: dict[str, Any]) -> list[str]:
    """Every schema violation of one KServe object, as 'path: message' lines ([] when valid)."""
    import jsonschema

    validator = jsonschema.Draft7Validator(schema(doc.get("apiVersion", ""), doc.get("kind", "")))
    out = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(p) for p in err.absolute_path) or "(root)"
        out.append(f"{path}: {err.message}")
    return out


def regenerate(kserve: Path) -> None:
    """Rewrite schemas/ from the CRDs of a KServe checkout (deterministic gzip: same input, same bytes)."""
    import subprocess

    import yaml

    for (_, kind), (crd_file, version, name) in KINDS.items():
        crd = yaml.safe_load((kserve / "config" / "crd" / "full" / crd_file).read_text())
        (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
        data = json.dumps(_drop_descriptions(found["schema"]["openAPIV3Schema"]), sort_keys=True,
                          separators=(",", ":")).encode()
        with open(SCHEMAS / name, "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write(data)
        print(f"{kind} {version}: wrote {SCHEMAS / name} ({len(data)} bytes of JSON)")
    commit = subprocess.run(["git", "-C", str(kserve), "log", "-1", "--format=%H %cs"], capture_output=True,
                            text=True).stdout.strip()
    (SCHEMAS / "SOURCE").write_text(f"KServe config/crd/full at {commit or 'an unknown commit'}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kserve", type=Path, required=True, help="a KServe source checkout")
    regenerate(parser.parse_args(argv).kserve)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Offline validation of the KServe example (deploy/kserve): schemas first, then camserve's own rules.

    python -m deploy.kserve.validate            # prints each problem; exit 1 if any

1. Each object against KServe's CRD schema for its version (``deploy.kserve.schema``: strict, unknown
   fields refused).
2. The runtime's pod (its containers, volumes, node selector and tolerations, with the predictor's
   grace period) as a core v1 Pod through kubernetes-validate --strict at the Kubernetes versions
   deploy.check pins, because KServe copies these fields into a Deployment's pod template.
3. What neither schema can know: the InferenceService names this runtime, a model format it supports
   and the gRPC Open Inference Protocol (``grpc-v2``, the only protocol camserve speaks to KServe);
   the container's arguments parse with ``camserve serve``'s own parser; the port KServe routes gRPC
   to (named ``h2c``) is the one the server listens on and the probes ask; the model repository is
   where KServe mounts ``storageUri`` (/mnt/models); the image is the GPU overlay's of deploy/k8s;
   the grace period outlasts pre-stop plus drain.

``problems(docs)`` is what deploy.check can call for these kinds (see deploy/kserve/README.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from deploy.kserve import schema

HERE = Path(__file__).resolve().parent
FILES = (HERE / "servingruntime.yaml", HERE / "inferenceservice.yaml")
GPU_OVERLAY = HERE.parent / "k8s" / "overlays" / "gpu" / "kustomization.yaml"
KUBERNETES_VERSIONS = ("1.27", "1.37")
MOUNT = "/mnt/models"       # where KServe puts the model named by storageUri
PROTOCOL = "grpc-v2"        # KServe's name for the Open Inference Protocol over gRPC
GRPC_PORT_NAME = "h2c"      # the container port KServe routes gRPC (HTTP/2 cleartext) to
Doc = dict[str, Any]


def load(paths: tuple[Path, ...] = FILES) -> list[Doc]:
    return [d for p in paths for d in yaml.safe_load_all(p.read_text()) if d]


def _of(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind]


def schema_problems(docs: list[Doc]) -> list[str]:
    out = []
    for d in docs:
        name = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        try:
            out += [f"{name}: schema: {p}" for p in schema.problems(d)]
        except KeyError:
            out.append(f"{name}: {d.get('apiVersion')} {d.get('kind')} is not a KServe kind "
                       "deploy/kserve knows")
    return out


def pod_problems(runtime: Doc, isvc: Doc | None) -> list[str]:
    """The runtime's pod fields as a Pod, through kubernetes-validate --strict."""
    import kubernetes_validate

    spec = runtime.get("spec", {})
    pod_spec = {k: spec[k] for k in ("containers", "volumes", "nodeSelector", "tolerations", "affinity")
                if k in spec}
    grace = (isvc or {}).get("spec", {}).get("predictor", {}).get("terminationGracePeriodSeconds")
    if grace is not None:
        pod_spec["terminationGracePeriodSeconds"] = grace
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": runtime["metadata"]["name"]},
           "spec": pod_spec}
    out = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            err = getattr(exc, "caused_by", exc)
            path = ".".join(str(p) for p in getattr(err, "absolute_path", []) or [])
            out.append(f"ServingRuntime/{runtime['metadata']['name']}: Kubernetes {version} pod: {path}: "
                       f"{getattr(err, 'message', str(err))}")
    return out


def _serve_args(container: Doc) -> tuple[argparse.Namespace | None, str]:
    """The container's arguments through camserve serve's parser (deploy.rules.server_settings):
    (namespace, '') or (None, why)."""
    from deploy.rules import server_settings

    settings, errors = server_settings(container, [])
    return settings, "" if settings is not None else "; ".join(errors)


def _gpu_image() -> str:
    overlay = yaml.safe_load(GPU_OVERLAY.read_text())
    (image,) = [i for i in overlay.get("images", []) if i.get("name") == "camserve"]
    return f"{image['newName']}:{image['newTag']}"


def camserve_problems(docs: list[Doc]) -> list[str]:
    out = []
    runtimes = {d["metadata"]["name"]: d for d in _of(docs, "ServingRuntime")}
    for isvc in _of(docs, "InferenceService"):
        where = f"InferenceService/{isvc['metadata']['name']}"
        model = isvc.get("spec", {}).get("predictor", {}).get("model", {})
        runtime = runtimes.get(model.get("runtime", ""))
        if runtime is None:
            out.append(f"{where}: runtime {model.get('runtime')!r} is none of the ServingRuntimes here "
                       f"({', '.join(runtimes) or 'none'})")
            continue
        spec = runtime["spec"]
        formats = [f.get("name") for f in spec.get("supportedModelFormats", [])]
        if model.get("modelFormat", {}).get("name") not in formats:
            out.append(f"{where}: modelFormat {model.get('modelFormat')} is not one the runtime supports "
                       f"{formats}")
        if model.get("protocolVersion") != PROTOCOL or PROTOCOL not in spec.get("protocolVersions", []):
            out.append(f"{where}: protocolVersion {model.get('protocolVersion')!r} with runtime protocols "
                       f"{spec.get('protocolVersions')}: camserve speaks {PROTOCOL!r} (gRPC) to KServe")
        if not model.get("storageUri"):
            out.append(f"{where}: no storageUri: KServe mounts the model repository from it at {MOUNT}")
        grace = isvc["spec"]["predictor"].get("terminationGracePeriodSeconds", 30)
        for container in spec.get("containers", []):
            args, error = _serve_args(container)
            if args is None:
                out.append(f"ServingRuntime/{runtime['metadata']['name']}: camserve serve refuses the "
                           f"arguments: {error}")
                continue
            if args.pre_stop_seconds + args.drain_seconds >= grace:
                out.append(f"{where}: terminationGracePeriodSeconds {grace} must exceed pre-stop "
                           f"{args.pre_stop_seconds:g} + drain {args.drain_seconds:g} seconds")
    for name, runtime in runtimes.items():
        where = f"ServingRuntime/{name}"
        for container in runtime.get("spec", {}).get("containers", []):
            args, _ = _serve_args(container)
            if args is None:
                continue
            ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
            if ports.get(GRPC_PORT_NAME) != args.grpc_port:
                out.append(f"{where}: KServe routes gRPC to the port named {GRPC_PORT_NAME!r} "
                           f"({ports.get(GRPC_PORT_NAME)}), the server listens on --grpc-port "
                           f"{args.grpc_port}")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = container.get(probe, {}).get("grpc", {}).get("port")
                if probe in container and port != args.grpc_port:
                    out.append(f"{where}: {probe} asks gRPC port {port}, the server listens on "
                               f"{args.grpc_port}")
            if args.model_repository != MOUNT:
                out.append(f"{where}: --model-repository {args.model_repository!r}: KServe mounts the model "
                           f"at {MOUNT}")
            if container.get("image") != _gpu_image():
                out.append(f"{where}: image {container.get('image')!r} is not deploy/k8s's GPU image "
                           f"{_gpu_image()!r}")
    return out


def problems(docs: list[Doc]) -> list[str]:
    """Every problem of the KServe objects in ``docs`` (schema, pod, camserve rules)."""
    out = schema_problems(docs)
    isvcs = _of(docs, "InferenceService")
    for runtime in _of(docs, "ServingRuntime"):
        name = runtime["metadata"]["name"]
        isvc = next((i for i in isvcs
                     if i.get("spec", {}).get("predictor", {}).get("model", {}).get("runtime") == name), None)
        out += pod_problems(runtime, isvc)
    return out + camserve_problems(docs)


def main() -> int:
    found = problems(load())
    for line in found:
        print(line)
    print(f"deploy/kserve: {len(found)} problem(s) in {', '.join(p.name for p in FILES)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

"""The small subset of kustomize that deploy/k8s uses, in Python, so overlays render offline.

Why: there is no kubectl here, and kubectl's kustomize is the reference the manifests must still
satisfy. So the files stay plain kustomize (`kubectl apply -k deploy/k8s/overlays/gpu` works), and
this module implements exactly the fields they use, failing loudly on any other field rather than
rendering something kustomize would render differently:

- `resources`: YAML files (multi-document) or folders holding a kustomization.yaml;
- `patches`: `path:` or inline `patch:`, strategic merge (a mapping) or JSON 6902 (a list of
  operations, which needs `target:`), with the strategic-merge list keys of the fields we patch;
- `labels`: `pairs`, `includeSelectors`, `includeTemplates`;
- `images`: `name`, `newName`, `newTag`, `digest`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "patches", "labels", "images"}

#: Strategic-merge keys (patchMergeKey in the Kubernetes API) of the lists our patches touch.
#: Lists not named here are replaced by the patch, as the API does for lists without a merge key.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
}


class RenderError(ValueError):
    """A kustomization this renderer cannot render (or kustomize would reject)."""


def load_docs(path: Path) -> list[Doc]:
    """Every non-empty YAML document of a file, each checked to be a Kubernetes object."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise RenderError(f"{path}: not valid YAML: {exc}") from exc
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise RenderError(f"{path}: every document needs apiVersion and kind")
    return docs


def _kustomization_file(folder: Path) -> Path:
    for name in KUSTOMIZATION_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise RenderError(f"{folder}: no kustomization.yaml")


def render(folder: Path) -> list[Doc]:
    """Render the kustomization in `folder` (recursively) to a list of objects."""
    folder = Path(folder)
    kfile = _kustomization_file(folder)
    spec = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise RenderError(f"{kfile}: field(s) {sorted(unknown)} not supported by deploy's renderer "
                          f"(supported: {sorted(SUPPORTED_FIELDS - {'apiVersion', 'kind'})})")
    docs: list[Doc] = []
    for res in spec.get("resources", []):
        target = (folder / res).resolve()
        if target.is_dir():
            docs.extend(render(target))
        elif target.is_file():
            docs.extend(load_docs(target))
        else:
            raise RenderError(f"{kfile}: resource {res!r} does not exist")
    _check_unique(docs, kfile)
    for entry in spec.get("labels", []):
        apply_labels(docs, entry)
    for entry in spec.get("patches", []):
        apply_patch(docs, entry, folder, kfile)
    for entry in spec.get("images", []):
        apply_image(docs, entry)
    return docs


def object_id(doc: Doc) -> tuple[str, str, str]:
    """(group, kind, name): what kustomize matches patches on."""
    group = doc["apiVersion"].rsplit("/", 1)[0] if "/" in doc["apiVersion"] else ""
    return group, doc["kind"], doc.get("metadata", {}).get("name", "")


def _check_unique(docs: list[Doc], where: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for d in docs:
        oid = object_id(d)
        if oid in seen:
            raise RenderError(f"{where}: {oid[1]}/{oid[2]} defined twice")
        seen.add(oid)


# ---- labels ---------------------------------------------------------------------------------------

def pod_template(doc: Doc) -> Doc | None:
    """The pod template of a workload (Deployment, StatefulSet, DaemonSet, Job, ReplicaSet)."""
    spec = doc.get("spec") or {}
    if doc.get("kind") == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    tpl = spec.get("template")
    return tpl if isinstance(tpl, dict) else None


def apply_labels(docs: list[Doc], entry: Doc) -> None:
    """kustomize `labels`: metadata always; selectors and templates when asked."""
    pairs = entry.get("pairs") or {}
    if not isinstance(pairs, dict):
        raise RenderError("labels: `pairs` must be a mapping")
    include_selectors = bool(entry.get("includeSelectors", False))
    include_templates = bool(entry.get("includeTemplates", False)) or include_selectors
    for d in docs:
        d.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        tpl = pod_template(d)
        if tpl is not None and include_templates:
            tpl.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        if include_selectors:
            spec = d.get("spec") or {}
            if d["kind"] == "Service":
                spec.setdefault("selector", {}).update(pairs)
            elif tpl is not None or d["kind"] == "PodDisruptionBudget":
                spec.setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)


# ---- images ---------------------------------------------------------------------------------------

def _split_image(image: str) -> tuple[str, str]:
    """("registry/name", ":tag" or "@sha256:..." or "")."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def apply_image(docs: list[Doc], entry: Doc) -> None:
    """kustomize `images`: rewrite matching container images of every pod template."""
    if "name" not in entry:
        raise RenderError("images: every entry needs `name`")
    for d in docs:
        tpl = pod_template(d)
        if tpl is None:
            continue
        pod = tpl.get("spec") or {}
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            name, suffix = _split_image(str(c.get("image", "")))
            if name != entry["name"]:
                continue
            name = entry.get("newName", name)
            if "digest" in entry:
                suffix = "@" + entry["digest"]
            elif "newTag" in entry:
                suffix = ":" + str(entry["newTag"])
            c["image"] = name + suffix


# ---- patches --------------------------------------------------------------------------------------

def apply_patch(docs: list[Doc], entry: Doc, folder: Path, kfile: Path) -> None:
    """One `patches:` entry: strategic merge (by its own kind/name or `target`) or JSON 6902."""
    if "path" in entry:
        text = (folder / entry["path"]).read_text()
    elif "patch" in entry:
        text = entry["patch"]
    else:
        raise RenderError(f"{kfile}: a patch needs `path` or `patch`")
    try:
        patch = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RenderError(f"{kfile}: patch is not valid YAML: {exc}") from exc
    target = entry.get("target")
    if isinstance(patch, list):
        if not target:
            raise RenderError(f"{kfile}: a JSON 6902 patch needs `target`")
        matched = [d for d in docs if _matches(d, target)]
        if not matched:
            raise RenderError(f"{kfile}: patch target {target} matches no object")
        for d in matched:
            json6902(d, patch)
        return
    if not isinstance(patch, dict) or "kind" not in patch:
        raise RenderError(f"{kfile}: a strategic-merge patch must be one object with kind and name")
    target = target or {"kind": patch["kind"], "name": patch.get("metadata", {}).get("name")}
    matched = [d for d in docs if _matches(d, target)]
    if not matched:
        raise RenderError(f"{kfile}: patch for {target.get('kind')}/{target.get('name')} matches no object")
    for d in matched:
        body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
        body.setdefault("metadata", {})["name"] = d["metadata"]["name"]
        merged = strategic_merge(d, body)
        d.clear()
        d.update(merged)


def _matches(doc: Doc, target: Doc) -> bool:
    group, kind, name = object_id(doc)
    version = doc["apiVersion"].rsplit("/", 1)[-1]
    return all((
        target.get("kind") in (None, kind),
        target.get("name") in (None, name),
        target.get("group") in (None, group),
        target.get("version") in (None, version),
    ))


def strategic_merge(base: Any, patch: Any, key: str = "") -> Any:
    """Kubernetes strategic merge for the directives we use: maps merge, `null` deletes a key,
    `$patch: replace|delete` on a map, keyed lists (MERGE_KEYS; container/service `ports` by
    containerPort/port) merge item by item with `$patch: delete` items, other lists replace."""
    if isinstance(patch, dict):
        directive = patch.get("$patch")
        clean = {k: v for k, v in patch.items() if k != "$patch"}
        if directive == "replace":
            return copy.deepcopy(clean)
        if directive not in (None, "merge"):
            raise RenderError(f"unsupported $patch directive {directive!r} at {key or 'top level'}")
        if not isinstance(base, dict):
            return copy.deepcopy(clean)
        out = copy.deepcopy(base)
        for k, v in clean.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, k)
            else:
                out[k] = strategic_merge(None, v, k)
        return out
    if isinstance(patch, list):
        mkey = _merge_key(key, patch, base)
        if mkey is None or not isinstance(base, list):
            return [strategic_merge(None, p, key) if isinstance(p, dict) else copy.deepcopy(p)
                    for p in patch if not (isinstance(p, dict) and p.get("$patch") == "delete")]
        out = copy.deepcopy(base)
        for item in patch:
            if not isinstance(item, dict) or mkey not in item:
                raise RenderError(f"list {key!r} merges on {mkey!r}: every patch item needs it")
            idx = next((i for i, b in enumerate(out) if isinstance(b, dict) and b.get(mkey) == item[mkey]),
                       None)
            if item.get("$patch") == "delete":
                if idx is not None:
                    out.pop(idx)
            elif idx is None:
                out.append(strategic_merge(None, item, key))
            else:
                out[idx] = strategic_merge(out[idx], item, key)
        return out
    return copy.deepcopy(patch)


def _merge_key(key: str, patch: list[Any], base: Any) -> str | None:
    if key in MERGE_KEYS:
        return MERGE_KEYS[key]
    if key == "ports":
        items = [i for i in [*patch, *(base or [])] if isinstance(i, dict)]
        if items and all("containerPort" in i for i in items):
            return "containerPort"
        if items and all("port" in i for i in items):
            return "port"
    return None


def json6902(doc: Doc, ops: Iterable[Doc]) -> None:
    """RFC 6902 `add`, `replace`, `remove` (the operations kustomize overlays use)."""
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in str(op.get("path", "")).split("/")[1:]]
        if not parts:
            raise RenderError(f"JSON 6902: bad path in {op}")
        parent: Any = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1]
        kind = op.get("op")
        try:
            if kind in ("add", "replace"):
                value = copy.deepcopy(op.get("value"))
                if isinstance(parent, list):
                    if last == "-":
                        parent.append(value)
                    elif kind == "add":
                        parent.insert(int(last), value)
                    else:
                        parent[int(last)] = value
                else:
                    if kind == "replace" and last not in parent:
                        raise RenderError(f"JSON 6902: replace of missing {op['path']}")
                    parent[last] = value
            elif kind == "remove":
                if isinstance(parent, list):
                    parent.pop(int(last))
                else:
                    del parent[last]
            else:
                raise RenderError(f"JSON 6902: unsupported op {kind!r}")
        except (KeyError, IndexError, ValueError) as exc:
            raise RenderError(f"JSON 6902: {op} does not apply: {exc}") from exc

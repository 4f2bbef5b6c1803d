"""Offline rendering and validation of deploy/kubernetes: a small subset of kustomize (``resources``,
``namespace``, ``labels``, JSON 6902 ``patches`` with a target) and schema checks: core kinds with
``kubernetes-validate`` (the Kubernetes OpenAPI schemas it ships), KEDA kinds with KEDA's CRD schemas
vendored in deploy/kubernetes/schemas/keda (see SOURCE.md there)."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
KEDA_CRDS = DEPLOY / "schemas" / "keda"
#: The Kubernetes version whose schemas the core kinds are checked against.
K8S_VERSION = "1.30.0"

Doc = dict[str, Any]


def _load_all(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pointer(doc: Any, path: str) -> tuple[Any, str]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    for p in parts[:-1]:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc, parts[-1]


def apply_patch(doc: Doc, ops: list[Doc]) -> Doc:
    """Apply JSON 6902 ``add``/``replace``/``remove`` operations (what the overlays use) to a copy of ``doc``."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parent, key = _pointer(doc, op["path"])
        if op["op"] == "remove":
            del parent[int(key) if isinstance(parent, list) else key]
        elif op["op"] == "add" and isinstance(parent, list):
            parent.insert(len(parent) if key == "-" else int(key), op["value"])
        elif op["op"] in ("add", "replace"):
            if op["op"] == "replace" and (key not in parent if isinstance(parent, dict) else int(key) >= len(parent)):
                raise KeyError(f"replace of a missing {op['path']}")
            parent[int(key) if isinstance(parent, list) else key] = op["value"]
        else:
            raise ValueError(f"unsupported patch op {op['op']!r}")
    return doc


def render(directory: Path) -> list[Doc]:
    """The objects ``kubectl apply -k directory`` would create (for the fields these kustomizations use)."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "resources", "namespace", "labels", "patches"}
    if set(kust) - known:
        raise ValueError(f"{directory}: kustomization fields this renderer does not know: {set(kust) - known}")
    docs: list[Doc] = []
    for res in kust.get("resources", []):
        path = directory / res
        docs += render(path) if path.is_dir() else _load_all(path)
    for p in kust.get("patches", []):
        ops = yaml.safe_load((directory / p["path"]).read_text())
        hits = [i for i, d in enumerate(docs) if all(d.get("kind") == v if k == "kind" else d["metadata"].get(k) == v
                                                     for k, v in p["target"].items())]
        if len(hits) != 1:
            raise ValueError(f"{directory}: patch {p['path']} matches {len(hits)} objects, expected 1")
        docs[hits[0]] = apply_patch(docs[hits[0]], ops)
    for d in docs:
        if "namespace" in kust and d["kind"] != "Namespace":
            d["metadata"]["namespace"] = kust["namespace"]
        for lab in kust.get("labels", []):
            d["metadata"].setdefault("labels", {}).update(lab["pairs"])
    return docs


def _strict(schema: Any) -> Any:
    """``schema`` with undeclared properties forbidden where the schema lists its properties."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_schemas() -> dict[tuple[str, str], Doc]:
    """(apiVersion, kind) -> JSON schema, from every vendored KEDA CRD and each version it serves."""
    out = {}
    for path in sorted(KEDA_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for v in crd["spec"]["versions"]:
            schema = _strict(v["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = {"type": "object", "required": ["name"],
                                                "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                                                               "labels": {"type": "object"},
                                                               "annotations": {"type": "object"}},
                                                "additionalProperties": False}
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
            out[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = schema
    return out


def validate(doc: Doc) -> None:
    """Raise on a document that is not a valid object of its kind (core: strict Kubernetes schemas)."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key in crd_schemas():
        jsonschema.validate(doc, crd_schemas()[key], cls=jsonschema.Draft7Validator)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def pod_specs(docs: list[Doc]) -> dict[str, Doc]:
    """``Kind/name`` -> pod spec, for every object that runs pods."""
    out = {}
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            out[f"{d['kind']}/{d['metadata']['name']}"] = spec["template"]["spec"]
    return out

"""Render daemonset/ (a kustomization) without kubectl or kustomize.

Supports what our kustomizations use: resources (files and ../ bases), namespace, labels,
images, and JSON6902 patches with a target. `kubectl apply -k daemonset/` renders the same.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageProblem

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
OVERLAYS = {"default": ".", "kernel-pre-5.11": "overlays/kernel-pre-5.11", "kernel-pre-5.8": "overlays/kernel-pre-5.8",
            "with-control-plane": "overlays/with-control-plane"}


def manifest_dir() -> Path:
    """daemonset/ in the repository, else the installed package data."""
    repo = Path(__file__).resolve().parents[2] / "daemonset"
    if (repo / "kustomization.yaml").is_file():
        return repo
    from importlib.resources import files
    return Path(str(files("sigtrace.daemonset")))


def _load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pointer(doc: Any, path: str) -> tuple[Any, str]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    for p in parts[:-1]:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc, parts[-1]


def apply_json_patch(doc: dict, ops: list[dict]) -> dict:
    doc = copy.deepcopy(doc)
    for op in ops:
        parent, key = _pointer(doc, op["path"])
        if op["op"] == "add":
            if isinstance(parent, list):
                parent.insert(len(parent) if key == "-" else int(key), op["value"])
            else:
                parent[key] = op["value"]
        elif op["op"] == "replace":
            parent[int(key) if isinstance(parent, list) else key] = op["value"]
        elif op["op"] == "remove":
            del parent[int(key) if isinstance(parent, list) else key]
        else:
            raise UsageProblem(f"unsupported JSON patch op {op['op']!r}")
    return doc


def _matches(obj: dict, target: dict) -> bool:
    group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
    return all([target.get("kind") in (None, obj["kind"]),
                target.get("name") in (None, obj["metadata"]["name"]),
                target.get("group") in (None, group)])


def render_dir(d: Path) -> list[dict]:
    k = yaml.safe_load((d / "kustomization.yaml").read_text())
    objs: list[dict] = []
    for res in k.get("resources") or []:
        p = d / res
        objs += render_dir(p) if p.is_dir() else _load(p)
    if k.get("namespace"):
        objs = [set_namespace(o, k["namespace"]) for o in objs]
    for lab in k.get("labels") or []:
        for o in objs:
            o["metadata"].setdefault("labels", {}).update(lab.get("pairs") or {})
    for img in k.get("images") or []:
        for o in objs:
            for c in (((o.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []:
                if c["image"].split(":")[0] == img["name"]:
                    c["image"] = f"{img.get('newName', img['name'])}:{img['newTag']}" if img.get("newTag") \
                        else img.get("newName", img["name"])
    for patch in k.get("patches") or []:
        ops = yaml.safe_load((d / patch["path"]).read_text())
        objs = [apply_json_patch(o, ops) if _matches(o, patch.get("target") or {}) else o for o in objs]
    return objs


def set_namespace(obj: dict, ns: str) -> dict:
    obj = copy.deepcopy(obj)
    if obj["kind"] == "Namespace":
        obj["metadata"]["name"] = ns
    elif obj["kind"] not in CLUSTER_SCOPED:
        obj["metadata"]["namespace"] = ns
    for s in obj.get("subjects") or []:
        if s.get("kind") == "ServiceAccount":
            s["namespace"] = ns
    return obj


def render(overlay: str = "default", namespace: str | None = None, image: str | None = None) -> list[dict]:
    """The objects `kubectl sigtrace deploy` applies, in dependency order."""
    if overlay not in OVERLAYS:
        raise UsageProblem(f"unknown overlay {overlay!r}; choose one of {', '.join(OVERLAYS)}")
    objs = render_dir(manifest_dir() / OVERLAYS[overlay])
    if namespace:
        objs = [set_namespace(o, namespace) for o in objs]
    if image:
        for o in objs:
            for c in (((o.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []:
                c["image"] = image
    order = ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"]
    return sorted(objs, key=lambda o: order.index(o["kind"]) if o["kind"] in order else len(order))

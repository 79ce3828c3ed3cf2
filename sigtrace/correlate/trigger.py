"""What stopped a pod, from the pod object itself as the API watcher recorded it (pod_lifecycle
details, no other API object and so no extra RBAC): the DisruptionTarget condition's reason, else
the controller that owns it (a ReplicaSet: a rollout or a scale-down), else a plain delete.

Known only when the recording carries the pod object's owner (`owner` in a pod_seen or pod_deleted
detail: `sigtrace agent`, the lab); otherwise the report has no `trigger`.
"""
from __future__ import annotations

from typing import Any

from ..events import lifecycle as L
from .pod import PodContext, deletion_ts

# DisruptionTarget reasons (k8s.io/api core/v1 PodReason*): kind, what happened
DISRUPTIONS = {
    "EvictionByEvictionAPI": ("eviction", "evicted through the Eviction API (kubectl drain, a cluster autoscaler "
                                          "or a descheduler)"),
    "PreemptionByScheduler": ("preemption", "preempted by the scheduler to make room for a pod of higher priority"),
    "DeletionByTaintManager": ("taint-manager", "deleted by the taint manager: its node got a NoExecute taint the "
                                                "pod does not tolerate (node not ready or unreachable)"),
    "TerminationByKubelet": ("kubelet", "terminated by the kubelet itself (node-pressure eviction or a node "
                                        "shutdown)"),
    "DeletionByPodGC": ("pod-gc", "deleted by the pod garbage collector (its node is gone)"),
}


def _details(ctx: PodContext) -> list[dict[str, Any]]:
    return [lc.detail for lc in ctx.lifecycle_events(L.POD_SEEN, L.POD_DELETED)]


def owner_of(ctx: PodContext) -> tuple[bool, dict[str, str] | None, str | None]:
    """(the recording knows the pod's owner, the owner {"kind", "name"} or None, its pod-template-hash)."""
    known, owner, hash_ = False, None, None
    for d in _details(ctx):
        if "owner" in d:
            known = True
            if isinstance(d["owner"], dict) and d["owner"].get("kind") and d["owner"].get("name"):
                owner = {"kind": str(d["owner"]["kind"]), "name": str(d["owner"]["name"])}
        labels = d.get("labels")
        if isinstance(labels, dict) and labels.get("pod-template-hash"):
            hash_ = str(labels["pod-template-hash"])
    return known, owner, hash_


def deployment_of(owner: dict[str, str] | None, hash_: str | None) -> str | None:
    """A ReplicaSet made by a Deployment is named <deployment>-<pod-template-hash>."""
    if not owner or owner["kind"] != "ReplicaSet" or not hash_ or not owner["name"].endswith(f"-{hash_}"):
        return None
    return owner["name"][: -len(hash_) - 1]


def replica_sets(ctxs: dict[str, PodContext]) -> dict[str, set[str]]:
    """Deployment name (namespace/name) -> the ReplicaSets whose pods the recording saw."""
    out: dict[str, set[str]] = {}
    for ctx in ctxs.values():
        _, owner, hash_ = owner_of(ctx)
        dep = deployment_of(owner, hash_)
        if dep is not None and owner is not None:
            out.setdefault(f"{ctx.namespace}/{dep}", set()).add(owner["name"])
    return out


def pod_trigger(ctx: PodContext, rs_by_deployment: dict[str, set[str]]) -> dict[str, Any] | None:
    """The trigger of a pod that was deleted or stopped, when the recording has its owner data:
    {"kind", "reason", "owner", "replaced_by", "t", "text"} (t: the deletion, relative to t0)."""
    known, owner, hash_ = owner_of(ctx)
    deleted = deletion_ts(ctx)
    if not known or (deleted is None and not ctx.stopped):
        return None
    disruption = None
    for d in _details(ctx):
        if isinstance(d.get("disruption"), dict) and d["disruption"].get("reason"):
            disruption = d["disruption"]
    owner_txt = f"{owner['kind']}/{owner['name']}" if owner else None
    out: dict[str, Any] = {"kind": None, "reason": None, "owner": owner_txt, "replaced_by": None,
                           "t": ctx.rel(deleted) if deleted is not None else None, "text": ""}
    if disruption is not None:
        reason = str(disruption["reason"])
        kind, what = DISRUPTIONS.get(reason, ("disruption", "disrupted"))
        out.update(kind=kind, reason=reason, text=f"{what} (DisruptionTarget: {reason})")
    elif deleted is None:
        out.update(kind="not-deleted", text="stopped without a deletion in the API: a container restart (a failed "
                                            "liveness probe, an exit) or the kubelet acting on its own")
    elif owner is not None and owner["kind"] == "ReplicaSet":
        dep = deployment_of(owner, hash_)
        others = sorted(rs_by_deployment.get(f"{ctx.namespace}/{dep}", set()) - {owner["name"]}) if dep else []
        if others:
            out.update(kind="rollout", replaced_by=f"ReplicaSet/{others[-1]}",
                       text=f"a rollout of Deployment {dep}: ReplicaSet {owner['name']} is being replaced by "
                            f"{', '.join(others)}")
        else:
            out.update(kind="rollout-or-scale-down", text=f"deleted while owned by ReplicaSet {owner['name']}: a scale-down, or "
                                               "a rollout whose new pods run on other nodes (or a manual delete)")
    elif owner is not None:
        out.update(kind="controller", text=f"deleted while owned by {owner['kind']} {owner['name']}: its rollout "
                                           "or scale-down (or a manual delete)")
    else:
        out.update(kind="delete", text="deleted through the API: no controller owns it and no disruption "
                                       "condition names a cause (a plain delete)")
    return out

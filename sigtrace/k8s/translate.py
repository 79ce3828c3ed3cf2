"""Pod and EndpointSlice objects -> pod_lifecycle events (see sigtrace.events.lifecycle).

Pure and stateful: PodTracker and SliceTracker remember what they have already said, so the
same object seen again (a relist, a status-only update) produces no duplicate event, and a
change is reported once, when it is first seen. Objects are plain dicts in the API's JSON
shape (camelCase), which is what the watch stream and our tests both hand over.

What they remember is bounded by this node, so an agent's memory stays flat for weeks: live pods
(at most the node's max-pods), removed pods for REMOVED_TTL_S (at most MAX_REMOVED of them: long
enough that a late event of a removed pod is not taken for a new pod), and only those
EndpointSlices that have an endpoint of this node.
"""
from __future__ import annotations

import json
import shlex
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..events import lifecycle
from ..events.schema import POD_LIFECYCLE, new_event

REMOVED_TTL_S = 900.0      # a removed pod is remembered this long (its late slice updates keep its name)
MAX_REMOVED = 5000         # ... and at most this many (a node churning Jobs)
# What translating well-formed JSON of the wrong shape raises (a string where a list belongs...)
UNUSABLE = (KeyError, TypeError, AttributeError, ValueError, RecursionError)   # RecursionError: labels nested past json's stack

# metadata.deletionTimestamp etc. are metav1.Time: RFC 3339, serialized truncated to seconds.
def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def strip_runtime(container_id: str | None) -> str | None:
    """'containerd://abc' -> 'abc': the id as it appears in the container's cgroup path."""
    if not container_id:
        return None
    return container_id.split("://", 1)[-1] or None


def describe_handler(handler: dict[str, Any] | None) -> str | None:
    """A preStop handler as one line: the command for exec, the URL for httpGet, 'sleep Ns'."""
    if not handler:
        return None
    if "exec" in handler:
        return shlex.join(str(a) for a in (handler["exec"] or {}).get("command") or [])
    if "httpGet" in handler:
        h = handler["httpGet"] or {}
        scheme = str(h.get("scheme") or "HTTP").lower()
        return f"httpGet {scheme}://{h.get('host') or ''}:{h.get('port')}{h.get('path') or '/'}"
    if "sleep" in handler:
        return f"sleep {(handler['sleep'] or {}).get('seconds')}s"
    if "tcpSocket" in handler:
        return f"tcpSocket :{(handler['tcpSocket'] or {}).get('port')}"
    return json.dumps(handler, sort_keys=True)


def _lifecycle_event(ts: float, event: str, pod_uid: str, name: str | None, namespace: str | None,
                     detail: dict[str, Any], container_name: str | None = None) -> dict:
    return new_event(POD_LIFECYCLE, ts, event=event, pod_uid=pod_uid, pod_name=name, namespace=namespace,
                     container_name=container_name, detail=json.dumps(detail, sort_keys=True))


def controller_of(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The owner that manages the pod (ownerReferences[].controller; else the first owner):
    {"kind": "ReplicaSet", "name": ...}. What stopped the pod: a rollout or scale-down of it."""
    refs = [r for r in meta.get("ownerReferences") or [] if isinstance(r, dict)]
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    return {"kind": ref.get("kind"), "name": ref.get("name")} if ref else None


def disruption_of(status: dict[str, Any]) -> dict[str, Any] | None:
    """The DisruptionTarget condition (Kubernetes >= 1.26) when true: why the pod is going away
    (EvictionByEvictionAPI, PreemptionByScheduler, DeletionByTaintManager, TerminationByKubelet...)."""
    for c in status.get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "DisruptionTarget" and str(c.get("status")) == "True":
            return {"reason": c.get("reason"), "message": c.get("message"), "since": c.get("lastTransitionTime")}
    return None


def pod_facts(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod_seen detail: what the report needs to name containers and judge the stop."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    specs = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or []),
                *(status.get("ephemeralContainerStatuses") or [])]
    containers: dict[str, str] = {}
    missing: list[str] = []
    status_signal: dict[str, str] = {}
    for cs in statuses:
        cid = strip_runtime(cs.get("containerID"))
        if cid:
            containers[cid] = cs["name"]
        if cs.get("stopSignal"):
            status_signal[cs["name"]] = cs["stopSignal"]
    seen_names = set(containers.values())
    for c in spec.get("containers") or []:
        if c["name"] not in seen_names:
            missing.append(c["name"])
    prestop: dict[str, str] = {}
    stop_signal: dict[str, str] = {}
    for c in specs:
        lc = c.get("lifecycle") or {}
        cmd = describe_handler(lc.get("preStop"))
        if cmd is not None:
            prestop[c["name"]] = cmd
        # spec (lifecycle.stopSignal) first; kubelet >= 1.33 also reports the effective one in status
        sig = lc.get("stopSignal") or status_signal.get(c["name"])
        if sig:
            stop_signal[c["name"]] = sig
    grace = spec.get("terminationGracePeriodSeconds")
    return {
        "containers": containers,
        "missing_container_ids": missing,
        "grace_period_s": 30 if grace is None else grace,   # the API default when unset
        "prestop": prestop,
        "stop_signal": stop_signal,
        "node": spec.get("nodeName"),
        "phase": status.get("phase"),
        "pod_ip": status.get("podIP"),
        "labels": (pod.get("metadata") or {}).get("labels") or {},
        "owner": controller_of(pod.get("metadata") or {}),
        "disruption": disruption_of(status),
    }


@dataclass
class _PodState:
    facts_key: str = ""
    deleted: bool = False
    removed: bool = False


@dataclass
class PodTracker:
    """Remembers each pod's last reported facts; emits pod_seen / pod_deleted / pod_removed."""
    pods: dict[str, _PodState] = field(default_factory=dict)
    names: dict[str, tuple[str, str]] = field(default_factory=dict)   # uid -> (namespace, name)
    removed_ttl_s: float = REMOVED_TTL_S
    max_removed: int = MAX_REMOVED
    removed_at: "OrderedDict[str, float]" = field(default_factory=OrderedDict)   # uid -> when, oldest first

    def update(self, pod: dict[str, Any], now: float, gone: bool = False) -> list[dict]:
        meta = pod.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            return []
        # first: a pod it cannot read (a field of the wrong type, labels nested past json's stack)
        # leaves no state behind
        facts = pod_facts(pod)
        name, ns = meta.get("name"), meta.get("namespace")
        # labels, phase and IP change without changing what the report needs: not a new pod_seen
        # the DisruptionTarget condition says why the pod goes away (it may come before the deletion)
        key = json.dumps({k: facts[k] for k in ("containers", "grace_period_s", "prestop", "stop_signal", "disruption")},
                         sort_keys=True)
        known = self.pods.get(uid)
        new = known is None or (key != known.facts_key and not known.removed)
        seen = _lifecycle_event(now, lifecycle.POD_SEEN, uid, name, ns, facts) if new else None
        self.names[uid] = (ns, name)
        st = self.pods.setdefault(uid, _PodState())
        out: list[dict] = []
        if seen is not None:
            st.facts_key = key
            out.append(seen)
        deletion = meta.get("deletionTimestamp")
        if deletion and not st.deleted:
            st.deleted = True
            grace = meta.get("deletionGracePeriodSeconds")
            dts = parse_time(deletion)
            # deletionTimestamp = time of the delete request + grace (the moment kubelet will SIGKILL)
            ts = dts - (grace or 0) if dts is not None else now
            out.append(_lifecycle_event(ts, lifecycle.POD_DELETED, uid, name, ns, {
                "deletion_timestamp": deletion,
                "deletion_ts": dts,
                "grace_period_s": grace,
                "observed_ts": now,
                "owner": facts["owner"],
                "disruption": facts["disruption"],
            }))
        if gone and not st.removed:
            st.removed = True
            self._removed(uid, now)
            out.append(_lifecycle_event(now, lifecycle.POD_REMOVED, uid, name, ns, {"phase": facts["phase"]}))
        self.expire(now)
        return out

    def resync(self, pods: list[dict[str, Any]], now: float, bad: Any = None) -> list[dict]:
        """After a (re)list: update every listed pod; pods no longer listed left while we were away.
        A pod that cannot be translated is handed to bad(pod, exc) (and still counts as listed)."""
        out: list[dict] = []
        listed = set()
        for pod in pods:
            listed.add((pod.get("metadata") or {}).get("uid"))
            try:
                out += self.update(pod, now)
            except UNUSABLE as exc:
                if bad is None:
                    raise
                bad(pod, exc)
        for uid, st in self.pods.items():
            if uid not in listed and not st.removed:
                st.removed = True
                self._removed(uid, now)
                ns, name = self.names.get(uid, (None, None))
                out.append(_lifecycle_event(now, lifecycle.POD_REMOVED, uid, name, ns, {"via": "relist"}))
        self.expire(now)
        return out

    def _removed(self, uid: str, now: float) -> None:
        self.removed_at[uid] = now
        self.removed_at.move_to_end(uid)

    def expire(self, now: float) -> None:
        """Forget removed pods past their TTL, oldest first, and beyond max_removed."""
        while self.removed_at:
            uid, at = next(iter(self.removed_at.items()))
            if now - at < self.removed_ttl_s and len(self.removed_at) <= self.max_removed:
                break
            del self.removed_at[uid]
            st = self.pods.get(uid)
            if st is not None and st.removed:
                del self.pods[uid]
                self.names.pop(uid, None)


# ---- EndpointSlices -------------------------------------------------------------------------
@dataclass(frozen=True)
class EndpointState:
    ready: bool
    serving: bool
    terminating: bool
    addresses: tuple[str, ...]


def endpoint_state(ep: dict[str, Any]) -> EndpointState:
    c = ep.get("conditions") or {}
    # discovery/v1: a nil ready or serving means true; a nil terminating means false
    ready = c.get("ready") is not False
    serving = c.get("serving", ready) is not False
    return EndpointState(ready, serving, c.get("terminating") is True, tuple(ep.get("addresses") or ()))


def slice_endpoints(es: dict[str, Any]) -> dict[str, tuple[dict, EndpointState]]:
    """pod uid -> (endpoint, state) for the Pod endpoints of one slice."""
    out: dict[str, tuple[dict, EndpointState]] = {}
    for ep in es.get("endpoints") or []:
        ref = ep.get("targetRef") or {}
        if ref.get("kind", "Pod") == "Pod" and ref.get("uid"):
            out[ref["uid"]] = (ep, endpoint_state(ep))
    return out


@dataclass
class SliceTracker:
    """Per EndpointSlice, the last state of each of our pods' endpoints; emits the transitions.

    An endpoint is ours when its pod is one the PodTracker knows (pod_names, shared with it)
    or the endpoint's nodeName is this node (a slice may arrive before its pod). Only slices with
    at least one of our endpoints are kept: on a big cluster almost every slice is another node's.
    """
    node: str | None = None
    pod_names: dict[str, tuple[str, str]] = field(default_factory=dict)
    slices: dict[str, dict[str, EndpointState]] = field(default_factory=dict)   # slice uid -> pod uid -> state
    infos: dict[str, dict[str, Any]] = field(default_factory=dict)             # slice uid -> slice/service names

    def _ours(self, pod_uid: str, ep: dict[str, Any]) -> bool:
        return pod_uid in self.pod_names or (self.node is not None and ep.get("nodeName") == self.node)

    @staticmethod
    def key(es: dict[str, Any]) -> str:
        meta = es.get("metadata") or {}
        return meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"

    def relevant(self, es: dict[str, Any]) -> bool:
        """Worth keeping from a list: it has one of our endpoints, or we hold it (it may have lost them)."""
        return self.key(es) in self.slices or any(self._ours(uid, ep) for uid, (ep, _) in slice_endpoints(es).items())

    def update(self, es: dict[str, Any], now: float, deleted: bool = False, via: str = "watch") -> list[dict]:
        meta = es.get("metadata") or {}
        suid = self.key(es)
        before = self.slices.get(suid)
        current = {} if deleted else {uid: v for uid, v in slice_endpoints(es).items() if self._ours(uid, v[0])}
        if before is None and not current:
            return []          # another node's slice: nothing to say, nothing to keep
        info = self.infos.get(suid, {}) if deleted and not meta.get("name") else {
            "slice": f"{meta.get('namespace')}/{meta.get('name')}",
            "service": (meta.get("labels") or {}).get("kubernetes.io/service-name"),
            "ports": [p.get("port") for p in es.get("ports") or [] if p.get("port") is not None],
            "trigger_time": (meta.get("annotations") or {}).get("endpoints.kubernetes.io/last-change-trigger-time"),
        }
        info = {**info, "via": via}
        out: list[dict] = []
        for uid, (ep, state) in current.items():
            old = before.get(uid) if before is not None else None
            ns, name = self._pod_name(uid, ep, meta)
            detail = {**info, "addresses": list(state.addresses), "ready": state.ready,
                      "serving": state.serving, "terminating": state.terminating}
            first = old is None
            if first:
                detail["first_seen"] = True   # no earlier state: the change happened at or before ts
            if state.terminating and (first or not old.terminating):
                out.append(_lifecycle_event(now, lifecycle.ENDPOINTS_TERMINATING, uid, name, ns, detail))
            # not-ready at first sight is a pod starting up, unless it is already terminating
            if not state.ready and ((old is not None and old.ready) or (first and state.terminating)):
                out.append(_lifecycle_event(now, lifecycle.ENDPOINTS_NOT_READY, uid, name, ns, detail))
        for uid in (before or {}):
            if uid not in current:
                ns, name = self.pod_names.get(uid, (meta.get("namespace"), None))
                out.append(_lifecycle_event(now, lifecycle.ENDPOINTS_REMOVED, uid, name, ns,
                                            {**info, "slice_deleted": deleted}))
        if deleted or not current:
            self.slices.pop(suid, None)
            self.infos.pop(suid, None)
        else:
            self.slices[suid] = {uid: st for uid, (_, st) in current.items()}
            self.infos[suid] = info
        return out

    def _pod_name(self, uid: str, ep: dict, meta: dict) -> tuple[str | None, str | None]:
        if uid in self.pod_names:
            return self.pod_names[uid]
        ref = ep.get("targetRef") or {}
        return ref.get("namespace") or meta.get("namespace"), ref.get("name")

    def resync(self, slices: list[dict[str, Any]], now: float, bad: Any = None) -> list[dict]:
        """After a relist: diff every listed slice, and report endpoints of slices that vanished.
        `slices` may leave out slices relevant() rejects: those cannot have vanished from our view.
        A slice that cannot be translated is handed to bad(slice, exc)."""
        out: list[dict] = []
        listed = set()
        for es in slices:
            listed.add(self.key(es))
            try:
                out += self.update(es, now, via="relist")
            except UNUSABLE as exc:
                if bad is None:
                    raise
                bad(es, exc)
        for suid in list(self.slices):
            if suid not in listed:
                out += self.update({"metadata": {"uid": suid}}, now, deleted=True, via="relist")
        return out

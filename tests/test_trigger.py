"""What stopped the pod (`trigger`), from the pod object as the API watcher records it: the recorded
rolling update (tests/data/k8s/rolling-update.json, the API's exact shape) replayed through the
agent's PodTracker, with the kernel's stop of the old pod, and the same pod evicted, preempted,
tainted away, killed by the kubelet, deleted without a controller, or stopped without a deletion."""
from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from sigtrace.report import build_reports
from sigtrace.events import capabilities as C
from sigtrace.events.reader import events_frame
from sigtrace.k8s.translate import PodTracker, parse_time, pod_facts
from sigtrace.render.html import render_html
from sigtrace.render.text import render_text

DATA = json.loads((Path(__file__).parent / "data/k8s/rolling-update.json").read_text())
EXP = DATA["expect"]
OLD, NEW = EXP["old_uid"], EXP["new_uid"]
META = {"capabilities": sorted(set(C.ALL) - {C.SOCKET_CALLS})}
DELETED_AT = parse_time("2026-11-29T09:10:30Z")      # the delete request: deletionTimestamp - 45 s


def pod_steps(node: str = "node-a") -> list[tuple[str, dict]]:
    objs = [("ADDED", o) for o in DATA["initial"] if o["kind"] == "Pod"]
    objs += [(s["type"], s["object"]) for s in DATA["steps"] if s["object"]["kind"] == "Pod"]
    return [(t, copy.deepcopy(o)) for t, o in objs if (o.get("spec") or {}).get("nodeName") == node]


def condition(reason: str) -> dict:
    return {"type": "DisruptionTarget", "status": "True", "reason": reason, "message": "test",
            "lastTransitionTime": "2026-11-29T09:10:30Z"}


def kernel_stop(uid: str, cid: str, ts: float) -> list[dict]:
    """The runtime's TERM to the old pod's nginx, as the recorder writes it."""
    return [dict(ts=ts, kind="signal_generate", pid=900, comm="runc", sig="SIGTERM", target_pid=1001,
                 target_comm="nginx", target_pod_uid=uid, target_container_id=cid, target_nspid=1, result="delivered"),
            dict(ts=ts + 0.01, kind="process_exit", pid=1001, comm="nginx", pod_uid=uid, container_id=cid, nspid=1,
                 exit_code=0)]


def report(steps: list[tuple[str, dict]], stop: bool = True, strip_owner: bool = False) -> dict[str, dict]:
    tracker, events = PodTracker(), []
    for i, (kind, obj) in enumerate(steps):
        events += tracker.update(obj, DELETED_AT - 60 + i, gone=kind == "DELETED")
    if strip_owner:          # a recording of an agent from before the trigger existed
        for e in events:
            d = json.loads(e["detail"])
            d.pop("owner", None)
            d.pop("disruption", None)
            e["detail"] = json.dumps(d)
    cid = next(c for c, n in EXP["containers_old"].items() if n == "nginx")
    if stop:
        events += kernel_stop(OLD, cid, DELETED_AT + 0.5)
    return {p["pod_uid"]: p for p in build_reports(events_frame(events), META).to_dict()["pods"]}


def test_rollout_names_the_old_and_the_new_replicaset():
    pods = report(pod_steps())
    t = pods[OLD]["trigger"]
    assert (t["kind"], t["owner"], t["replaced_by"], t["reason"]) == \
        ("rollout", "ReplicaSet/web-7d9c5b8f6d", "ReplicaSet/web-5f6b7c9d8e", None)
    assert "Deployment web" in t["text"] and t["t"] == -0.5         # the deletion, 0.5 s before the TERM
    assert "trigger" not in pods[NEW]                                 # running, never deleted: nothing stopped it


def test_replicaset_pod_without_a_newer_replicaset_on_the_node():
    steps = [(k, o) for k, o in pod_steps() if o["metadata"]["uid"] != NEW]
    t = report(steps)[OLD]["trigger"]
    assert (t["kind"], t["owner"], t["replaced_by"]) == ("rollout-or-scale-down", "ReplicaSet/web-7d9c5b8f6d", None)


@pytest.mark.parametrize("reason, kind", [
    ("EvictionByEvictionAPI", "eviction"), ("PreemptionByScheduler", "preemption"),
    ("DeletionByTaintManager", "taint-manager"), ("TerminationByKubelet", "kubelet"),
    ("DeletionByPodGC", "pod-gc"), ("SomethingNew", "disruption"),
])
def test_disruption_condition_names_the_cause(reason, kind):
    steps = pod_steps()
    for _, o in steps:
        if o["metadata"]["uid"] == OLD and o["metadata"].get("deletionTimestamp"):
            o["status"].setdefault("conditions", []).append(condition(reason))
    t = report(steps)[OLD]["trigger"]
    assert (t["kind"], t["reason"], t["owner"]) == (kind, reason, "ReplicaSet/web-7d9c5b8f6d")
    assert reason in t["text"]


def test_condition_before_the_deletion_is_a_new_pod_seen():
    # the eviction API (or the kubelet) writes the condition first, then deletes (or not at all)
    old = copy.deepcopy(DATA["initial"][0])
    t = PodTracker()
    assert [e["event"] for e in t.update(old, 1.0)] == ["pod_seen"]
    old["status"]["conditions"].append(condition("TerminationByKubelet"))
    (seen,) = t.update(old, 2.0)
    detail = json.loads(seen["detail"])
    assert seen["event"] == "pod_seen" and detail["disruption"]["reason"] == "TerminationByKubelet"
    assert detail["owner"] == {"kind": "ReplicaSet", "name": "web-7d9c5b8f6d"}
    assert pod_facts(DATA["initial"][0])["disruption"] is None


def test_kubelet_termination_without_a_deletion():
    steps = [(k, o) for k, o in pod_steps() if not o["metadata"].get("deletionTimestamp")]
    for _, o in steps:
        if o["metadata"]["uid"] == OLD:
            o["status"]["conditions"].append(condition("TerminationByKubelet"))
    t = report(steps)[OLD]["trigger"]
    assert (t["kind"], t["t"]) == ("kubelet", None)


def test_plain_delete_and_stop_without_deletion():
    steps = pod_steps()
    for _, o in steps:
        o["metadata"].pop("ownerReferences", None)
    assert report(steps)[OLD]["trigger"]["kind"] == "delete"
    not_deleted = [(k, o) for k, o in pod_steps() if not o["metadata"].get("deletionTimestamp")]
    t = report(not_deleted)[OLD]["trigger"]
    assert t["kind"] == "not-deleted" and t["t"] is None


def test_no_trigger_without_the_pod_objects_owner():
    pods = report(pod_steps(), strip_owner=True)
    assert "trigger" not in pods[OLD] and "trigger" not in pods[NEW]


def test_trigger_is_shown_as_text_and_html_with_hostile_names_escaped():
    steps = pod_steps()
    for _, o in steps:
        for ref in o["metadata"].get("ownerReferences", []):
            ref["name"] = "web\x1b]0;owned\x07-7d9c5b8f6d"
    tracker, events = PodTracker(), []
    for i, (kind, obj) in enumerate(steps):
        events += tracker.update(obj, DELETED_AT - 60 + i, gone=kind == "DELETED")
    cid = next(c for c, n in EXP["containers_old"].items() if n == "nginx")
    rs = build_reports(events_frame(events + kernel_stop(OLD, cid, DELETED_AT + 0.5)), META)
    buf = io.StringIO()
    render_text(rs, Console(file=buf, width=200, force_terminal=False, color_system=None))
    text = buf.getvalue()
    assert "stopped by: rollout-or-scale-down" in text and "\\x1b]0;owned\\x07" in text and "\x1b" not in text
    page = render_html(rs)
    assert "stopped by: rollout-or-scale-down" in page and "\x1b" not in page.replace("\\x1b", "")

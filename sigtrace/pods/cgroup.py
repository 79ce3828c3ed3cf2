"""Parse kubelet cgroup paths into (pod_uid, container_id).

Two layouts exist (kubelet --cgroup-driver):
  cgroupfs: /kubepods[/<qos>]/pod<uid>/<container id>
  systemd:  /kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice/<runtime>-<id>.scope
with runtime cri-containerd, crio or docker. The path may sit under a prefix (a nested
runtime, kind, or the v1 controller mount), so the pattern is searched, not anchored.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from .proc import PROC, read_cgroup

_UID = r"[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}"
_CGROUPFS = re.compile(rf"/kubepods(?:/(?:besteffort|burstable|guaranteed))?/pod(?P<uid>{_UID})(?:/(?P<cid>[0-9a-zA-Z]+))?(?:/|$)")
_SYSTEMD = re.compile(
    rf"/kubepods(?:-(?:besteffort|burstable|guaranteed))?-pod(?P<uid>{_UID})\.slice"
    rf"(?:/(?:cri-containerd|crio|docker)-(?P<cid>[0-9a-zA-Z]+)\.scope)?(?:/|$)"
)


class PodRef(NamedTuple):
    pod_uid: str | None
    container_id: str | None


NO_POD = PodRef(None, None)


def parse_cgroup_path(path: str) -> PodRef:
    """Return the pod and container a cgroup path belongs to, or NO_POD."""
    for pattern in (_SYSTEMD, _CGROUPFS):
        m = pattern.search(path)
        if m:
            return PodRef(m.group("uid").replace("_", "-").lower(), m.group("cid"))
    return NO_POD


def pod_of_pid(pid: int, proc: str = PROC) -> PodRef:
    """The pod and container of a live process, from /proc/<pid>/cgroup (NO_POD when it is gone)."""
    text = read_cgroup(pid, proc)
    return parse_proc_cgroup(text) if text is not None else NO_POD


def parse_proc_cgroup(text: str) -> PodRef:
    """Pick the pod out of /proc/PID/cgroup (v2 line '0::/path' or v1 'N:ctrl:/path').

    On a v1/hybrid node all hierarchies carry the same kubelet path; the first that
    parses wins, with a container id preferred over a pod-level (sandbox) cgroup.
    """
    best = NO_POD
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ref = parse_cgroup_path(parts[2])
        if ref.container_id:
            return ref
        if ref.pod_uid and not best.pod_uid:
            best = ref
    return best


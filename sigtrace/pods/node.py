"""Find a pod's processes on the node without the API server: by UID from the processes' cgroups,
by name from the kubelet's log directories.

This is what `sigtrace record --backend strace --pod` runs in a `kubectl debug node/<node>` pod:
the host's PID namespace (its /proc) and the node's filesystem under /host. Kubelet writes every
pod's container logs to /var/log/pods/<namespace>_<name>_<uid>/ (the CRI log layout), so a pod
name resolves to its UID there; the UID then matches the `pod<uid>` part of kubelet's cgroup path.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import UsageProblem
from .cgroup import pod_of_pid
from .proc import PROC, list_pids

PODS_LOG_DIR = "var/log/pods"
# where `kubectl debug node/` mounts the node's root filesystem
DEBUG_NODE_ROOT = "/host"
_UID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# <namespace>_<name>_<uid>: namespace and name are DNS labels/subdomains, so they hold no '_'
_LOG_DIR = re.compile(r"^(?P<ns>[a-z0-9][-a-z0-9]*)_(?P<name>[a-z0-9][-.a-z0-9]*)_(?P<uid>[-0-9a-fA-F]{36})$")


def default_node_root() -> Path:
    """/ on the node itself; /host inside a `kubectl debug node/` pod (where / is the debug image)."""
    if not (Path("/") / PODS_LOG_DIR).is_dir() and (Path(DEBUG_NODE_ROOT) / PODS_LOG_DIR).is_dir():
        return Path(DEBUG_NODE_ROOT)
    return Path("/")


def pods_on_node(node_root: Path) -> list[tuple[str, str, str]]:
    """(namespace, name, uid) of every pod the kubelet keeps a log directory for."""
    try:
        entries = os.listdir(node_root / PODS_LOG_DIR)
    except OSError:
        return []
    out = []
    for entry in sorted(entries):
        m = _LOG_DIR.match(entry)
        if m:
            out.append((m.group("ns"), m.group("name"), m.group("uid").lower()))
    return out


def resolve_pod(ref: str, node_root: Path) -> str:
    """The UID of pod `ref` (a UID, NAME or NAMESPACE/NAME); one clear error when it is not one pod."""
    if _UID.match(ref):
        return ref.lower()
    ns, _, name = ref.rpartition("/")
    matches = [p for p in pods_on_node(node_root) if p[1] == name and (not ns or p[0] == ns)]
    if len(matches) == 1:
        return matches[0][2]
    where = node_root / PODS_LOG_DIR
    if not matches:
        raise UsageProblem(f"--pod {ref}: no such pod in {where} (the kubelet's pod log directories); "
                           f"pass the pod's UID (kubectl get pod NAME -o jsonpath='{{.metadata.uid}}') "
                           f"or --node-root where the node's filesystem is mounted")
    names = ", ".join(f"{p[0]}/{p[1]} ({p[2]})" for p in matches)
    raise UsageProblem(f"--pod {ref}: {len(matches)} pods match ({names}); pass NAMESPACE/NAME or the UID")


def pod_pids(uids: set[str], proc: str = PROC, skip: set[int] = frozenset()) -> dict[str, list[int]]:
    """uid -> the pids of its processes (thread group leaders) now running, from /proc/*/cgroup."""
    out: dict[str, list[int]] = {uid: [] for uid in uids}
    for pid in list_pids(proc):
        if pid in skip:
            continue
        uid = pod_of_pid(pid, proc).pod_uid
        if uid in out:
            out[uid].append(pid)
    for pids in out.values():
        pids.sort()
    return out

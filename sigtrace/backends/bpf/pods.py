"""User-space knowledge about pods, pushed into the probes' maps.

The probes can read only tracepoint fields (and a TCP socket's tuple) and the current task's cgroup
v2 id, so what must be known about a pod is learned here and written to BPF maps:
  pod_cgroups  cgroup v2 id of each kubepods container cgroup -> (container index, pod index)
  pod_tasks    tgid of each pod process (also --pid) -> (container index, pod index, INIT flag)
  endpoints    each pod's listening (address, port) -> pod index: from the probes' listener events
               (listen() in the owner's context), and once per new process from /proc/<pid>/net/tcp{,6}
               and its socket inodes (listeners opened before the recorder started); a wildcard
               listener also under each address of the pod's network namespace; remembered after
               the listener closes (refusals)
  endpoint_ports  the ports of those endpoints, never cleared: the probes' cheap first test
  armed        pod index -> when its stop began: a stop signal to a container's PID 1 or an init's
               exit (both in the kernel), or the pod's deletion in the API (the agent)
Indices are small integers assigned here, never reused; decode.py maps them back to pod_uid /
container_id. A node agent runs for weeks with a new pid every second (exec probes) and hundreds of
new containers a day (rollouts): what is gone is forgotten after RETAIN_S, here and in the maps,
whose fixed sizes would otherwise fill within a day and silently stop taking new pods.
"""
from __future__ import annotations

import functools
import ipaddress
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from ...pods.cgroup import parse_cgroup_path, parse_proc_cgroup
from ...pods.proc import (PROC, is_alive, list_pids, mountinfo as read_mountinfo, netns_local_addrs, ns_id,
                          read_cgroup, read_comm, read_lines, read_ns, read_status, tcp_sockets)
from ...pods.sockets import socket_inodes

SELECTED_PIDX = 1          # pseudo-pod of --pid / --comm processes that are not in a pod
AMBIGUOUS = 0xFFFFFFFF
TASK_INIT = 1
# how long a gone container (cgroup removed) or process (no longer in any pod cgroup) is remembered:
# its exit, closes and resets arrive after it is gone, and a live report is due after its pod's end
RETAIN_S = 120.0
# other_cgroups (non-pod cgroups the kernel should not ask about again) is cleared when this full:
# systemd makes a transient scope per session/unit; re-asking costs one classification per cgroup
OTHER_CGROUPS_CLEAR_AT = 12_000
RUNTIME_COMMS = ("runc", "crun", "containerd-shim", "containerd", "conmon", "crio", "kubelet", "dockerd")


class ContainerRef(NamedTuple):
    pod_uid: str | None
    container_id: str | None
    pidx: int


@dataclass
class TaskInfo:
    cidx: int
    nspid: int | None = None
    comm: str | None = None
    ppid: int | None = None


def cgroup_mounts(mountinfo: str | None = None) -> tuple[list[Path], list[Path]]:
    """(cgroup v2 mount points, cgroup v1 mount points) from /proc/self/mountinfo."""
    v2, v1 = [], []
    for line in (mountinfo.splitlines() if mountinfo is not None else read_mountinfo() or []):
        left, _, right = line.partition(" - ")
        fstype = right.split(" ", 1)[0] if right else ""
        parts = left.split()
        if len(parts) < 5:
            continue
        mnt = Path(parts[4].replace("\\040", " "))
        if fstype == "cgroup2":
            v2.append(mnt)
        elif fstype == "cgroup":
            v1.append(mnt)
    return v2, v1


# ---- listeners ------------------------------------------------------------------------------
WILDCARDS = (b"\0" * 16, b"\0" * 10 + b"\xff\xff" + b"\0" * 4)


def expand_wildcard(addr: bytes, port: int, local: set[bytes]) -> set[tuple[bytes, int]]:
    """A listener's endpoints: a wildcard also under each address of its netns (0.0.0.0
    accepts IPv4 only, :: dual stack both)."""
    if addr not in WILDCARDS:
        return {(addr, port)}
    out = {(WILDCARDS[0], port)}
    out.update((a, port) for a in local if addr == WILDCARDS[0] or a[:12] == WILDCARDS[1][:12])
    return out


def listening_endpoints(pids: Iterable[int], proc: str = PROC) -> set[tuple[bytes, int]]:
    """(addr16, port) that these processes listen on; wildcards also under each netns address."""
    pids = list(pids)
    inodes: set[int] = set()
    for pid in pids:
        inodes |= socket_inodes(pid, proc)
    if not inodes:
        return set()
    seen_ns: set[str] = set()
    out: set[tuple[bytes, int]] = set()
    for pid in pids:
        ns = read_ns(pid, "net", proc)
        if ns is None or ns in seen_ns:
            continue
        seen_ns.add(ns)
        listeners = [(a, p) for a, p, ino in tcp_sockets(pid, proc) if ino in inodes]
        if not listeners:
            continue
        local = netns_local_addrs(pid, proc)
        for addr, port in listeners:
            out |= expand_wildcard(addr, port, local)
    return out


@functools.lru_cache(maxsize=65536)
def format_addr(addr16: bytes) -> str:
    # cached: ipaddress is most of a TCP event's decoding cost, and a node's addresses repeat
    ip = ipaddress.IPv6Address(addr16)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


def format_endpoint(addr16: bytes, port: int) -> str:
    if addr16 in WILDCARDS:
        return f"*:{port}"
    a = format_addr(addr16)
    return f"[{a}]:{port}" if ":" in a else f"{a}:{port}"


# ---- the registry -------------------------------------------------------------------------
@dataclass
class PodRegistry:
    """Containers, pods and processes seen, by the indices the probes carry. What is gone is kept
    RETAIN_S (exits and TCP events arrive after the process is gone), then forgotten (forget_gone)."""
    proc: str = PROC
    containers: dict[tuple[str | None, str | None], int] = field(default_factory=dict)
    cref: dict[int, ContainerRef] = field(default_factory=dict)
    pods: dict[str | None, int] = field(default_factory=lambda: {None: SELECTED_PIDX})
    pod_uids: dict[int, str | None] = field(default_factory=lambda: {SELECTED_PIDX: None})
    tasks: dict[int, TaskInfo] = field(default_factory=dict)
    cgroups: dict[int, int] = field(default_factory=dict)               # cgroup v2 id -> cidx
    endpoints: dict[tuple[bytes, int], set[int]] = field(default_factory=dict)
    selected_pids: set[int] = field(default_factory=set)
    selected_comms: set[str] = field(default_factory=set)
    pidns: dict[int, int] = field(default_factory=dict)                 # cidx -> PID namespace inode
    nsfs_dev: int = 0
    last_seen: dict[int, float] = field(default_factory=dict)           # cidx -> when a scan found it
    task_seen: dict[int, float] = field(default_factory=dict)           # pid -> when a scan found it
    forgotten: dict[str, int] = field(default_factory=lambda: {"containers": 0, "pods": 0, "tasks": 0})
    _next_pidx: int = SELECTED_PIDX + 1
    _next_cidx: int = 1

    def pidx_of(self, pod_uid: str | None) -> int:
        if pod_uid not in self.pods:
            self.pods[pod_uid] = self._next_pidx          # counters, not len(): indices are never reused
            self._next_pidx += 1
            self.pod_uids[self.pods[pod_uid]] = pod_uid
        return self.pods[pod_uid]

    def cidx_of(self, pod_uid: str | None, container_id: str | None) -> int:
        key = (pod_uid, container_id)
        if key not in self.containers:
            cidx = self._next_cidx
            self._next_cidx += 1
            self.containers[key] = cidx
            self.cref[cidx] = ContainerRef(pod_uid, container_id, self.pidx_of(pod_uid))
        return self.containers[key]

    def forget_gone(self, now: float, retain_s: float = RETAIN_S) -> None:
        """Drop containers no scan found for retain_s (their pods when none is left) and processes
        gone as long, with their cgroups, PID namespaces and endpoints."""
        for pid in [p for p, t in self.task_seen.items() if now - t > retain_s]:
            del self.task_seen[pid]
            if self.tasks.pop(pid, None) is not None:
                self.forgotten["tasks"] += 1
        gone = {c for c, t in self.last_seen.items() if now - t > retain_s}
        if not gone:
            return
        for cidx in gone:
            ref = self.cref.pop(cidx)
            del self.last_seen[cidx]
            self.containers.pop((ref.pod_uid, ref.container_id), None)
            self.pidns.pop(cidx, None)
            self.forgotten["containers"] += 1
        for cgid in [g for g, c in self.cgroups.items() if c in gone]:
            del self.cgroups[cgid]
        for pid in [p for p, info in self.tasks.items() if info.cidx in gone]:
            del self.tasks[pid]
            self.task_seen.pop(pid, None)
        live_pods = {ref.pidx for ref in self.cref.values()}
        for uid, pidx in list(self.pods.items()):
            if pidx != SELECTED_PIDX and pidx not in live_pods:
                del self.pods[uid]
                del self.pod_uids[pidx]
                self.forgotten["pods"] += 1
                for key in [k for k, owners in self.endpoints.items() if pidx in owners]:
                    self.endpoints[key].discard(pidx)
                    if not self.endpoints[key]:
                        del self.endpoints[key]

    def container(self, cidx: int) -> ContainerRef | None:
        return self.cref.get(cidx)

    def pod_uid(self, pidx: int) -> str | None:
        return self.pod_uids.get(pidx)

    def note_task(self, pid: int, cidx: int) -> TaskInfo:
        info = self.tasks.get(pid)
        if info is None or info.cidx != cidx or info.nspid is None:
            st = read_status(pid, self.proc)
            # one NSpid entry: the process is in the node's PID namespace (runc's setup stages, hostPID)
            nspid = st.nspid[-1] if st and len(st.nspid) > 1 else None
            if info is not None and nspid is None:    # gone: keep what we knew
                info.cidx = cidx or info.cidx
                return info
            info = TaskInfo(cidx, nspid, st.name if st else None, st.ppid if st else None)
            self.tasks[pid] = info
            self.task_seen.setdefault(pid, time.monotonic())
        return info

    def resolve_pid(self, pid: int) -> TaskInfo | None:
        """A process not seen by a scan (--all mode, or just started): resolve from /proc now."""
        if pid <= 0:
            return None
        info = self.tasks.get(pid)
        if info is not None:
            return info
        text = read_cgroup(pid, self.proc)
        if text is None:
            return None
        ref = parse_proc_cgroup(text)
        cidx = self.cidx_of(ref.pod_uid, ref.container_id) if ref.pod_uid else 0
        return self.note_task(pid, cidx)

    # -- scanning
    def scan(self, v2: list[Path], v1: list[Path]) -> dict[int, list[int]]:
        """Find kubepods containers; return cidx -> tgids. Also fills self.cgroups (v2 ids)."""
        found: dict[int, list[int]] = {}
        for root in v2 + v1:
            kube = [root / n for n in ("kubepods", "kubepods.slice") if (root / n).is_dir()]
            for top in kube:
                for dirpath, dirnames, filenames in os.walk(top):
                    ref = parse_cgroup_path("/" + os.path.relpath(dirpath, root))
                    if not ref.pod_uid:
                        continue
                    cidx = self.cidx_of(ref.pod_uid, ref.container_id)
                    if root in v2:
                        try:
                            self.cgroups[os.stat(dirpath).st_ino] = cidx
                        except OSError:
                            continue
                    procs = read_lines(os.path.join(dirpath, "cgroup.procs"))    # as long as the container is big
                    found.setdefault(cidx, [])
                    found[cidx].extend(int(p) for p in procs if p.isdigit())
        for pid in list(self.selected_pids):
            if is_alive(pid, self.proc):
                found.setdefault(self.cidx_of(None, None), []).append(pid)
        if self.selected_comms:
            # --comm processes join the selection (children, TCP endpoints, exit codes), like --pid
            for pid in list_pids(self.proc):
                if (read_comm(pid, self.proc) or "").strip() in self.selected_comms:
                    if not any(pid in pids for pids in found.values()):
                        found.setdefault(self.cidx_of(None, None), []).append(pid)
        now = time.monotonic()
        for cidx, pids in found.items():
            found[cidx] = sorted(set(pids))
            self.last_seen[cidx] = now
            for pid in found[cidx]:
                self.note_task(pid, cidx)
                self.task_seen[pid] = now
            if found[cidx] and cidx not in self.pidns and self.cref[cidx].pod_uid:
                ns = ns_id(found[cidx][0], "pid", self.proc)
                if ns is not None:
                    self.pidns[cidx], self.nsfs_dev = ns
        return found

    def claimants(self, addr16: bytes, port: int) -> set[int]:
        """Pods that listen(ed) on this endpoint (exact, else the port's wildcard)."""
        return self.endpoints.get((addr16, port)) or self.endpoints.get((WILDCARDS[0], port)) or set()

    def learn_endpoints(self, found: dict[int, list[int]]) -> bool:
        """Add the listening endpoints of each pod's processes; True when something new."""
        by_pod: dict[int, list[int]] = {}
        for cidx, pids in found.items():
            by_pod.setdefault(self.cref[cidx].pidx, []).extend(pids)
        changed = False
        for pidx, pids in by_pod.items():
            for key in listening_endpoints(pids, self.proc):
                owners = self.endpoints.setdefault(key, set())
                if pidx not in owners:
                    owners.add(pidx)
                    changed = True
        return changed

    def learn_listener(self, pid: int, pidx: int, addr16: bytes, port: int) -> bool:
        """A listen() the probes streamed (in the owner's context): add the pod's endpoint(s);
        True when something new. Kept after the listener closes (refusals name the pod)."""
        local = netns_local_addrs(pid, self.proc) if addr16 in WILDCARDS else set()
        changed = False
        for key in expand_wildcard(addr16, port, local):
            owners = self.endpoints.setdefault(key, set())
            if pidx not in owners:
                owners.add(pidx)
                changed = True
        return changed

    def endpoint_value(self, key: tuple[bytes, int]) -> int:
        owners = self.endpoints[key]
        return next(iter(owners)) if len(owners) == 1 else AMBIGUOUS


class MapSync:
    """Writes the registry into the loaded program's maps (bcc tables)."""

    def __init__(self, bpf: Any, registry: PodRegistry, arm_window_s: float):
        self.bpf = bpf
        self.reg = registry
        self._written_cg: dict[int, int] = {}
        self._nsfs_written = False
        self._written_tasks: dict[int, tuple[int, int, int]] = {}
        self._written_ep: dict[tuple[bytes, int], int] = {}
        self._written_ports: set[int] = set()
        cfg = bpf["config"]
        cfg[cfg.Key(0)] = cfg.Leaf(int(arm_window_s * 1e9))

    def set_comms(self, table: str, names: Iterable[str]) -> None:
        t = self.bpf[table]
        for name in names:
            key = t.Key()
            key.c = name.encode()[:15]       # comm is at most 15 bytes + NUL
            t[key] = t.Leaf(1)

    def _task_leaf(self, table: Any, cidx: int, flags: int) -> Any:
        leaf = table.Leaf()
        leaf.cidx, leaf.pidx, leaf.flags = cidx, self.reg.cref[cidx].pidx, flags
        leaf.pidns_ino = self.reg.pidns.get(cidx, 0)
        return leaf

    def prune(self, found: dict[int, list[int]], arm_window_s: float) -> None:
        """Delete from the maps what the registry forgot, processes no longer in a pod (the probe
        deletes a process at its exit; a reused pid is written again by sync), and armed entries
        past the window."""
        alive = {pid for pids in found.values() for pid in pids}
        self._delete("pod_tasks", [p for p in self._written_tasks if p not in alive],
                     lambda t, p: t.Key(p), self._written_tasks)
        self._delete("pod_cgroups", [g for g in self._written_cg if g not in self.reg.cgroups],
                     lambda t, g: t.Key(g), self._written_cg)
        self._delete("endpoints", [k for k in self._written_ep if k not in self.reg.endpoints],
                     self._ep_key, self._written_ep)
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        armed = self.bpf["armed"]
        for k, v in list(armed.items()):
            if now - v.value > arm_window_s * 1e9 or (k.value != AMBIGUOUS and k.value not in self.reg.pod_uids):
                try:
                    del armed[k]
                except KeyError:
                    pass
        other = self.bpf["other_cgroups"]
        if len(other) >= OTHER_CGROUPS_CLEAR_AT:
            other.clear()

    def _delete(self, table: str, keys: list, make_key: Any, written: dict) -> None:
        t = self.bpf[table]
        for key in keys:
            written.pop(key, None)
            try:
                del t[make_key(t, key)]
            except KeyError:
                pass                 # the probe deleted it already (an exited process)

    @staticmethod
    def _ep_key(table: Any, key: tuple[bytes, int]) -> Any:
        k = table.Key()
        k.port = key[1]
        for i, b in enumerate(key[0]):
            k.addr[i] = b
        return k

    def sync(self, found: dict[int, list[int]]) -> None:
        if self.reg.nsfs_dev and not self._nsfs_written:
            cfg = self.bpf["config"]
            cfg[cfg.Key(1)] = cfg.Leaf(self.reg.nsfs_dev)
            self._nsfs_written = True
        cg = self.bpf["pod_cgroups"]
        for cgid, cidx in self.reg.cgroups.items():
            want_ns = self.reg.pidns.get(cidx, 0)
            if self._written_cg.get(cgid) != want_ns:      # rewritten once the pidns is known
                cg[cg.Key(cgid)] = self._task_leaf(cg, cidx, 0)
                self._written_cg[cgid] = want_ns
        tasks = self.bpf["pod_tasks"]
        for cidx, pids in found.items():
            for pid in pids:
                info = self.reg.tasks.get(pid)
                flags = TASK_INIT if info and info.nspid == 1 and cidx and self.reg.cref[cidx].pod_uid else 0
                want = (cidx, self.reg.cref[cidx].pidx, flags, self.reg.pidns.get(cidx, 0))
                if self._written_tasks.get(pid) != want:
                    tasks[tasks.Key(pid)] = self._task_leaf(tasks, cidx, flags)
                    self._written_tasks[pid] = want
        ep, ports = self.bpf["endpoints"], self.bpf["endpoint_ports"]
        for key in self.reg.endpoints:
            value = self.reg.endpoint_value(key)
            if self._written_ep.get(key) != value:
                if key[1] not in self._written_ports:      # before the endpoint: the probes look here first
                    ports[ports.Key(key[1])] = ports.Leaf(1)
                    self._written_ports.add(key[1])
                ep[self._ep_key(ep, key)] = ep.Leaf(value)
                self._written_ep[key] = value

    def arm(self, pidx: int) -> None:
        armed = self.bpf["armed"]
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)   # the clock of bpf_ktime_get_ns
        armed[armed.Key(pidx)] = armed.Leaf(now)
        armed[armed.Key(AMBIGUOUS)] = armed.Leaf(now)
        cfg = self.bpf["config"]
        cfg[cfg.Key(2)] = cfg.Leaf(now)      # some pod armed: handshakes are noted (counted closes)

    def armed_pods(self, window_s: float) -> set[int]:
        """Pod indices armed within the window (kernel or user space armed them)."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        return {k.value for k, v in self.bpf["armed"].items()
                if k.value != AMBIGUOUS and now - v.value < window_s * 1e9}

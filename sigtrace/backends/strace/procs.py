"""What /proc says about traced processes: thread group, PID-namespace pid, parent, pod, and which
processes make up a target's container.

Facts are read at first sight of a pid and cached, because the exit line of a process arrives
after it is gone; children that vanish before we look inherit their parent's pod (a container's
processes all share it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ...pods.cgroup import NO_POD, PodRef, parse_proc_cgroup, pod_of_pid
from ...pods.proc import PROC, list_pids, read_cgroup, read_ns, read_status


@dataclass
class ProcFacts:
    pid: int                   # thread group id, node (strace's) namespace
    nspid: int | None          # pid inside the innermost PID namespace
    ppid: int | None
    pod: PodRef
    in_child_ns: bool          # lives in a PID namespace below ours (a container seen from the node)


def _ppid(pid: int, proc: str) -> int:
    st = read_status(pid, proc)
    return (st.ppid if st else None) or 0


def container_key(pid: int, proc: str = PROC, ref: PodRef | None = None) -> tuple | None:
    """What makes processes 'the same container': the kubelet cgroup's container id when there is
    one, else the (mount, PID) namespaces of a process in a container other than ours (a runc
    container without a kubelet cgroup, or the target seen from a `kubectl debug` container).
    None for a process sharing our own namespaces: expanding it would trace the whole host."""
    ref = ref if ref is not None else pod_of_pid(pid, proc)
    if ref.container_id:
        return ("cgroup", ref.container_id)
    mnt, pidns = read_ns(pid, "mnt", proc), read_ns(pid, "pid", proc)
    if mnt is None or pidns is None:
        return None
    own = read_ns("self", "mnt", proc)
    if own is None or mnt == own:
        return None
    return ("ns", mnt, pidns)


def own_lineage(proc: str = PROC) -> set[int]:
    """Our pid and our ancestors: never traced (a tracer cannot trace its own parent chain usefully,
    and in a `kubectl debug` container these are the debug shell and sigtrace itself)."""
    seen, pid = set(), os.getpid()
    while pid > 0 and pid not in seen:
        seen.add(pid)
        pid = _ppid(pid, proc)
    return seen


def expand_targets(pids: list[int], proc: str = PROC) -> dict[int, list[int]]:
    """For each target pid, every live process of its container and its live descendants
    (itself first): -f only follows children born after the attach."""
    keys = {pid: container_key(pid, proc) for pid in pids}
    members: dict[tuple, list[int]] = {k: [] for k in keys.values() if k is not None}
    skip = own_lineage(proc)
    parent: dict[int, int] = {}
    for pid in list_pids(proc):
        if pid in skip:
            continue
        parent[pid] = _ppid(pid, proc)
        if members:
            k = container_key(pid, proc)
            if k in members:
                members[k].append(pid)
    out: dict[int, list[int]] = {}
    for pid in pids:
        k = keys[pid]
        found = set(members.get(k, [])) if k is not None else set()
        frontier = {pid}
        while frontier:               # descendants, whatever their container
            frontier = {c for c, p in parent.items() if p in frontier and c not in found and c != pid}
            found |= frontier
        found.discard(pid)
        out[pid] = [pid] + sorted(found)
    return out


class ProcTable:
    """tid -> ProcFacts, read once from /proc."""

    def __init__(self, proc: str = PROC):
        self.proc = proc
        self._facts: dict[int, ProcFacts] = {}
        self._tgid: dict[int, int] = {}
        self._ns_to_host: dict[tuple[str, int], int] = {}     # (pidns, nspid) -> node pid
        self._pidns: dict[int, str] = {}
        self._host_to_ns: dict[int, int] = {}                 # learnt from strace's pidns comments
        self.fallback_pod: PodRef = NO_POD

    def tgid(self, tid: int) -> int:
        if tid not in self._tgid:
            st = read_status(tid, self.proc)
            self._tgid[tid] = st.tgid if st and st.tgid is not None else tid
        return self._tgid[tid]

    def facts(self, tid: int, parent: int | None = None) -> ProcFacts:
        pid = self.tgid(tid)
        f = self._facts.get(pid)
        if f is None:
            f = self._read_facts(pid, parent)
            self._facts[pid] = f
        return f

    def _read_facts(self, pid: int, parent: int | None) -> ProcFacts:
        st = read_status(pid, self.proc)
        nspids = st.nspid if st else ()
        ppid = st.ppid if st and st.ppid is not None else parent
        cg = read_cgroup(pid, self.proc)
        if cg is not None:
            pod = parse_proc_cgroup(cg)
        elif ppid in self._facts:
            pod = self._facts[ppid].pod          # gone already: a child is in its parent's container
        else:
            pod = self.fallback_pod
        pidns = read_ns(pid, "pid", self.proc)
        if pidns is None:
            pidns = self._pidns.get(ppid or -1, "")
        self._pidns[pid] = pidns
        nspid = nspids[-1] if nspids else self._host_to_ns.get(pid)
        if nspid is not None and pidns:
            self._ns_to_host[(pidns, nspid)] = pid
        return ProcFacts(pid, nspid, ppid, pod, bool(nspids and len(nspids) > 1))

    def learn(self, host_pid: int, nspid: int, like: int) -> None:
        """strace told us `nspid` in the namespace of `like` is host_pid (its pidns comment)."""
        ns = self._pidns.get(self.tgid(like))
        if ns:
            self._ns_to_host[(ns, nspid)] = host_pid
        self._host_to_ns[host_pid] = nspid
        f = self._facts.get(host_pid)
        if f is not None and f.nspid is None:
            f.nspid = nspid

    def host_pid(self, nspid: int, seen_from: int) -> int | None:
        """The node pid of `nspid` as process `seen_from` names it (kill's argument)."""
        f = self.facts(seen_from)
        if not f.in_child_ns:
            return nspid
        return self._ns_to_host.get((self._pidns.get(f.pid, ""), nspid))

    def handler(self, tid: int, signum: int) -> str | None:
        """default/ignore/handler for signum in tid now (SigCgt/SigIgn), None when it is gone.

        Read when the delivery line arrives, a few ms after the fact: a handler installed or reset
        in between is missed, which sigaction calls around a stop signal rarely do."""
        st = read_status(tid, self.proc)
        if st is None or signum <= 0 or st.sig_cgt is None:
            return None
        bit = 1 << (signum - 1)
        if st.sig_cgt & bit:
            return "handler"
        if st.sig_ign is None:
            return None
        return "ignore" if st.sig_ign & bit else "default"

    def forget(self, pid: int) -> None:
        """After a process exit: pids are reused."""
        self._facts.pop(pid, None)
        self._host_to_ns.pop(pid, None)
        for tid in [t for t, g in self._tgid.items() if g == pid]:
            del self._tgid[tid]

    def seed(self, pid: int, *, tgid: int | None = None, nspid: int | None = None, ppid: int | None = None,
             pod: PodRef = NO_POD, pidns: str = "", in_child_ns: bool | None = None) -> None:
        """Known facts for a pid that /proc cannot give (gone already; tests over recorded lines)."""
        self._tgid[pid] = tgid or pid
        if tgid and tgid != pid:
            return
        self._pidns[pid] = pidns
        if nspid is not None and pidns:
            self._ns_to_host[(pidns, nspid)] = pid
        child = in_child_ns if in_child_ns is not None else (nspid is not None and nspid != pid)
        self._facts[pid] = ProcFacts(pid, nspid, ppid, pod, child)

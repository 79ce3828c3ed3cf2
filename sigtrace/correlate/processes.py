"""Processes of one pod and their roles (nginx master/worker, fpm master/child, shell wrapper,
preStop exec...), learned from the events alone: no /proc, the pod may be long gone."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..events import schema as S
from .rows import Row

# comm names of container runtimes (comm is cut at 15 characters by the kernel)
RUNTIME_COMMS = ("runc", "crun", "containerd-shim", "containerd", "conmon", "crio", "dockerd",
                 "docker-init", "kubelet")
SHELLS = frozenset({"sh", "bash", "dash", "ash", "busybox", "zsh"})
INITS = frozenset({"tini", "dumb-init", "supervisord", "s6-svscan", "runsvdir", "catatonit", "runsv"})

# roles (stable strings, part of the JSON)
NGINX_MASTER, NGINX_WORKER = "nginx-master", "nginx-worker"
FPM_MASTER, FPM_CHILD = "fpm-master", "fpm-child"
SHELL, INIT, PRESTOP, EXEC, OTHER = "shell", "init", "prestop", "exec", "other"
RUNTIME, HOST = "runtime", "host"

ROLE_LABELS = {
    NGINX_MASTER: "nginx master", NGINX_WORKER: "nginx worker", FPM_MASTER: "php-fpm master",
    FPM_CHILD: "php-fpm child", SHELL: "shell", INIT: "init", PRESTOP: "preStop exec",
    EXEC: "exec'd process", OTHER: "process", RUNTIME: "runtime", HOST: "host process",
}


def is_runtime_comm(comm: Any) -> bool:
    return isinstance(comm, str) and (comm.startswith(RUNTIME_COMMS) or comm.startswith("runc:"))


def app_of(comm: Any) -> str | None:
    if not isinstance(comm, str):
        return None
    if comm == "nginx" or comm.startswith("nginx"):
        return "nginx"
    if comm.startswith("php-fpm"):
        return "php-fpm"
    return None


@dataclass
class Process:
    pid: int
    comm: str
    container_id: str | None
    nspid: int | None = None
    ppid: int | None = None
    exec_ts: float | None = None
    filename: str | None = None
    exit_ts: float | None = None
    exit_code: int | None = None
    exit_signal: str | None = None
    exit_row: int | None = None
    exec_row: int | None = None     # its first process_exec among its pod's events
    external: bool = False          # exec'd from outside the container (runc exec: preStop, kubectl exec)
    role: str = OTHER

    @property
    def is_pid1(self) -> bool:
        return self.nspid == 1

    def alive_at(self, ts: float) -> bool:
        return self.exit_ts is None or self.exit_ts > ts

    @property
    def label(self) -> str:
        ns = " (PID 1)" if self.is_pid1 else ""
        return f"{ROLE_LABELS.get(self.role, self.role)} {self.comm}[{self.pid}]{ns}"

    def to_dict(self, t0: float) -> dict[str, Any]:
        return {
            "pid": self.pid, "nspid": self.nspid, "comm": self.comm, "role": self.role,
            "exec_t": _rel(self.exec_ts, t0), "exit_t": _rel(self.exit_ts, t0),
            "exit_code": self.exit_code, "exit_signal": self.exit_signal,
        }


def _rel(ts: float | None, t0: float) -> float | None:
    return None if ts is None else round(ts - t0, 6)


def _val(v: Any) -> Any:
    """pandas NA -> None, numpy scalars -> Python."""
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v.item() if hasattr(v, "item") else v


def build_processes(own: list[Row], incoming: list[Row]) -> dict[int, Process]:
    """own: the pod's own non-TCP events (pod_uid == pod), in time order; incoming: signal_generate
    rows targeting the pod (also those sent from inside it)."""
    procs: dict[int, Process] = {}
    for pid, (comm, cid, nspid) in _identities(own, "pid", "comm", "container_id", "nspid").items():
        procs[pid] = Process(pid, comm or "?", cid, nspid)
    for tpid, (comm, cid, nspid) in _identities(incoming, "target_pid", "target_comm", "target_container_id",
                                                "target_nspid").items():
        p = procs.get(tpid)
        if p is None:
            procs[tpid] = Process(tpid, comm or "?", cid, nspid)
        else:
            p.container_id = p.container_id or cid
            p.nspid = p.nspid if p.nspid is not None else nspid
    for r in own:
        kind = r["kind"]
        if kind == S.PROCESS_EXEC:
            p = procs.get(r.get("pid"))
            if p is not None and p.exec_ts is None:
                p.exec_ts, p.filename, p.ppid = float(r["ts"]), r.get("filename"), r.get("ppid")
                p.exec_row = r["row"]
        elif kind == S.PROCESS_EXIT and (r.get("tid") is None or r.get("tid") == r.get("pid")):
            p = procs.get(r.get("pid"))
            if p is not None:
                p.exit_ts, p.exit_code, p.exit_signal = float(r["ts"]), r.get("exit_code"), r.get("exit_signal")
                p.exit_row = r["row"]
    return procs


def _identities(rows: list[Row], pid: str, comm: str, cid: str, nspid: str) -> dict[int, list[Any]]:
    """pid -> [the last comm seen (exec changes it), the first container id, the first namespace pid]."""
    out: dict[int, list[Any]] = {}
    for r in rows:
        p = r.get(pid)
        if p is None:
            continue
        seen = out.get(p)
        if seen is None:
            out[p] = [r.get(comm), r.get(cid), r.get(nspid)]
            continue
        if r.get(comm) is not None:
            seen[0] = r[comm]
        if seen[1] is None:
            seen[1] = r.get(cid)
        if seen[2] is None:
            seen[2] = r.get(nspid)
    return out


def parent_map(procs: dict[int, Process], own: list[Row]) -> dict[int, int]:
    """child pid -> parent pid, from exec's ppid and from SIGCHLD (sent by the exiting child to its parent)."""
    parents = {p.pid: p.ppid for p in procs.values() if p.ppid}
    for r in own:
        if (r["kind"] == S.SIGNAL_GENERATE and r.get("sig") == "SIGCHLD" and r.get("pid") is not None
                and r.get("target_pid") is not None):
            parents.setdefault(r["pid"], r["target_pid"])
    return parents


def assign_roles(procs: dict[int, Process], parents: dict[int, int], rows: list[Row]) -> None:
    """Give every process a role. Order matters: exec'd-from-outside first (a preStop `nginx -s quit`
    has comm nginx but is no nginx master), then the app masters, then their children."""
    # which in-pod processes send (non-SIGCHLD) signals to which pids
    senders: dict[int, set[int]] = {}
    for r in rows:
        if r["kind"] != S.SIGNAL_GENERATE or r.get("sig") == "SIGCHLD":
            continue
        code = r.get("code")
        if isinstance(code, (int, float)) and code == code and code > 0:
            # sent by the kernel in the current task's context (SI_KERNEL: a dying nginx worker's
            # channel socket raises SIGIO at the master that owns it): nobody directs anyone
            continue
        pid, tpid = r.get("pid"), r.get("target_pid")
        # a process signalling itself (fpm children re-raise TERM) is not directing anyone
        if pid is not None and tpid is not None and pid != tpid:
            senders.setdefault(pid, set()).add(tpid)

    for p in procs.values():
        # runc exec: the new process's parent is the runtime, outside the container
        if p.exec_ts is not None and p.nspid != 1 and p.ppid is not None:
            parent = procs.get(p.ppid)
            if parent is None or parent.container_id != p.container_id:
                p.external = True
    # descendants of an exec'd-from-outside process belong to it (preStop `sh -c "sleep 5; nginx -s quit"`)
    changed = True
    while changed:
        changed = False
        for p in procs.values():
            par = procs.get(parents.get(p.pid, -1))
            if not p.external and par is not None and par.external and p.nspid != 1:
                p.external = changed = True

    by_container: dict[Any, list[Process]] = {}
    for p in procs.values():
        by_container.setdefault(p.container_id, []).append(p)
    for members in by_container.values():
        for app, master_role, child_role in (("nginx", NGINX_MASTER, NGINX_WORKER),
                                             ("php-fpm", FPM_MASTER, FPM_CHILD)):
            cands = [p for p in members if not p.external and app_of(p.comm) == app]
            if not cands:
                continue
            pids = {p.pid for p in cands}
            masters = set()
            for p in cands:
                par = parents.get(p.pid)
                if p.is_pid1 or (senders.get(p.pid, set()) & pids) or any(parents.get(q) == p.pid for q in pids):
                    masters.add(p.pid)
                elif par is not None and par not in pids and par in procs:
                    masters.add(p.pid)       # parent is a shell/init: this one is the master
            if not masters:
                # nothing tells: the oldest (smallest in-namespace pid, else pid) is the master
                first = min(cands, key=lambda q: (q.nspid if q.nspid is not None else 1 << 30, q.pid))
                masters.add(first.pid)
            for p in cands:
                p.role = master_role if p.pid in masters else child_role
    for p in procs.values():
        if p.external:
            p.role = PRESTOP     # refined to EXEC by the pod builder when outside the stop window
        elif p.role == OTHER:
            if p.comm in SHELLS:
                p.role = SHELL
            elif p.comm in INITS:
                p.role = INIT

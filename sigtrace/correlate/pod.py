"""PodContext: everything known about one pod's shutdown, derived once from its events; the
verdict rules, the timeline and the stats all read it."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..events import schema as S
from ..events.lifecycle import detail_object
from .connections import DEFAULT_UPSTREAM_PORTS, Listener
from .facts import Connections, Refusals, SocketCalls
from .processes import (EXEC, HOST, PRESTOP, RUNTIME, ROLE_LABELS, Process, app_of, assign_roles,
                        build_processes, is_runtime_comm, parent_map)
from .rows import EventLookup, Row

# signals that are never a stop request (kernel notifications, timers)
NOT_STOP = frozenset({"SIGCHLD", "SIGPIPE", "SIGURG", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGWINCH",
                      "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS", "SIGXCPU", "SIGXFSZ", "SIGCONT"})
DEFAULT_GRACE_S = 30.0
PRESTOP_EXTRA_S = 2.0         # kubelet adds 2 s when a preStop hook outlives the grace period
STOP_PRE_S = 1.0              # a stop's window opens this long before its trigger (the deletion, the hook's exec)


@dataclass
class Signal:
    ts: float
    sig: str
    sender_pid: int | None
    sender_comm: str | None
    sender_role: str                 # a process role, RUNTIME, HOST, or "kernel"
    sender_in_pod: bool
    target: Process | None
    target_pid: int | None
    result: str | None               # signal_generate's result; None when only the delivery was seen
    handler: str | None              # signal_deliver's handler; None when not seen
    row: int                         # the event that shows it (generate, else deliver)
    deliver_row: int | None = None
    si_pid: int | None = None

    @property
    def from_outside(self) -> bool:
        return not self.sender_in_pod

    @property
    def sender_label(self) -> str:
        if self.sender_role == RUNTIME:
            return f"{self.sender_comm or 'runtime'}[{self.sender_pid}] (runtime)" if self.sender_pid else "runtime (outside the container)"
        if self.sender_role == HOST:
            return f"{self.sender_comm}[{self.sender_pid}] (host)"
        if self.sender_role == "kernel":
            return "kernel"
        if self.sender_pid is None:
            return "unknown sender (only the delivery was seen)"
        return f"{ROLE_LABELS.get(self.sender_role, self.sender_role)} {self.sender_comm}[{self.sender_pid}]"

    @property
    def target_label(self) -> str:
        return self.target.label if self.target else f"pid {self.target_pid}"

    @property
    def reached(self) -> bool:
        """The target got it (not dropped by the kernel)."""
        return self.result in (None, "delivered", "already_pending") or self.handler is not None


@dataclass
class Container:
    id: str
    name: str | None
    pid1: Process | None
    processes: list[Process]
    app: str | None
    stop_signal: Signal | None = None

    @property
    def label(self) -> str:
        return self.name or self.id[:12]

    @property
    def exit_ts(self) -> float | None:
        return self.pid1.exit_ts if self.pid1 else None

    @property
    def exited(self) -> bool:
        return self.pid1 is not None and self.pid1.exit_ts is not None


@dataclass(frozen=True)
class LifecycleFact:
    """A pod_lifecycle event: what the API watcher (or the lab) said about the pod."""
    ts: float
    row: int
    event: str | None                # sigtrace.events.lifecycle: pod_seen, pod_deleted, endpoints_...
    detail: dict[str, Any]           # the rest: grace period, preStop hooks, containers, owner...


@dataclass
class ConnDisplay:
    """What the report shows of the pod's connections, made for all pods at once (network.attach_tcp):
    the stats' counts, the timeline's connection lines (as rows) and the HTML picture's lanes. No
    verdict reads them: rules ask PodContext.conns and .refused."""
    stats: dict[str, int] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    lanes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PodContext:
    """The facts of one pod's shutdown. Rules ask them questions: its processes, containers and
    signals as objects, its TCP side as question sets (facts.Connections, Refusals, SocketCalls)."""
    pod_uid: str
    events: pd.DataFrame             # the recording's frame (evidence cites its row index)
    caps: frozenset[str]
    pod_name: str | None = None
    namespace: str | None = None
    grace_s: float | None = None
    t0: float | None = None
    stopped: bool = False
    procs: dict[int, Process] = field(default_factory=dict)
    containers: dict[str, Container] = field(default_factory=dict)
    container_names: dict[str, str] = field(default_factory=dict)   # container id -> name, from the API
    signals: list[Signal] = field(default_factory=list)
    listeners: dict[int, Listener] = field(default_factory=dict)
    lifecycle: list[LifecycleFact] = field(default_factory=list)
    prestops: list[Process] = field(default_factory=list)
    runtime_stops: list[Signal] = field(default_factory=list)
    first_ts: float = 0.0
    recorder_cut: Any = None                    # cut.RecorderCut: the recorder died with this pod's init
    # the TCP side, this pod's rows of tables made for all pods at once (network.attach_tcp)
    conns: Connections = field(default_factory=Connections.empty)
    refused: Refusals = field(default_factory=Refusals.empty)
    calls: SocketCalls = field(default_factory=SocketCalls.empty)
    display: ConnDisplay = field(default_factory=ConnDisplay)
    # indexes of the whole recording, shared by all pods (build.build_contexts)
    lookup: EventLookup | None = None           # ts and kind by row
    # the label of the pod's recording's first row in events: 0, except when events holds several
    # small recordings at once (analyze's small nodes: report.batch), each after the one before;
    # what the report shows is the row's place in its own recording
    row_base: int = 0

    # ---- helpers for rules ---------------------------------------------------------------
    def has(self, *caps: str) -> bool:
        return all(c in self.caps for c in caps)

    def lacking(self, *caps: str) -> list[str]:
        return [c for c in caps if c not in self.caps]

    def rel(self, ts: float | None) -> float | None:
        return None if ts is None else round(ts - (self.t0 if self.t0 is not None else self.first_ts), 6)

    def evidence(self, row: int | None, what: str, ts: float | None = None) -> dict[str, Any]:
        lookup = self._lookup()
        if row is not None and ts is None:
            ts = lookup.ts(row)
        kind = lookup.kind(row) if row is not None else None
        return {"t": self.rel(ts), "ts": ts, "kind": kind, "what": what, "event": self.event_number(row)}

    def event_number(self, row: int | None) -> int | None:
        """What the report calls the event at row: its place in the pod's own recording."""
        return None if row is None else row - self.row_base

    def _lookup(self) -> EventLookup:
        if self.lookup is None:
            self.lookup = EventLookup(self.events)
        return self.lookup

    def event_ts(self, row: int) -> float:
        """When the recording's event at row happened."""
        return self._lookup().ts(row)

    def reset_detail(self, row: int | None) -> list[str]:
        """How the kernel sent the reset at row, where its event says: the (orphan) socket's state and
        the kernel's reason."""
        if row is None or row not in self.events.index:
            return []
        e = self.events.loc[row]
        return [str(v) for v in (e.get("old_state"), e.get("reason")) if isinstance(v, str) and v]

    def exec_row(self, pid: int) -> int | None:
        """The first process_exec of the pod's process pid: among the pod's own events (the pid may
        have been another pod's or the node's process before, on a node running for weeks)."""
        p = self.procs.get(pid)
        return p.exec_row if p is not None else None

    def by_role(self, role: str) -> list[Process]:
        return [p for p in self.procs.values() if p.role == role]

    def signals_to(self, role: str | None = None, pid: int | None = None) -> list[Signal]:
        return [s for s in self.signals if s.target is not None
                and (role is None or s.target.role == role) and (pid is None or s.target.pid == pid)]

    def lifecycle_events(self, *events: str) -> list[LifecycleFact]:
        return [lc for lc in self.lifecycle if lc.event in events]

    @property
    def stop_from(self) -> float | None:
        """Where this pod's stop begins (STOP_PRE_S before its trigger); None: it never stopped. What
        happened before, or on a pod that never stopped (keep-alive expiry at steady state, php-fpm
        recycling its children), is no stop's doing."""
        return None if self.t0 is None else self.t0 - STOP_PRE_S

    def in_stop(self, ts: float) -> bool:
        """Whether ts falls in this pod's stop (stop_from on)."""
        return self.t0 is not None and ts >= self.t0 - STOP_PRE_S

    def last_exit_ts(self) -> float | None:
        ts = [p.exit_ts for p in self.procs.values() if p.exit_ts is not None and not p.external]
        return max(ts) if ts else None


def process_context(events: pd.DataFrame, pod_uid: str, caps: frozenset[str], own: list[Row],
                    incoming: list[Row], first_tcp_ts: float | None = None) -> PodContext:
    """The pod's processes, signals, containers and stop trigger, from its non-TCP events as rows
    (own: pod_uid == pod, time order; incoming: signal_generate rows targeting it). The TCP side is
    attached for all pods at once (network.attach_tcp)."""
    ctx = PodContext(pod_uid=pod_uid, events=events, caps=caps)
    ctx.first_ts = float(min((r["ts"] for r in own), default=float("inf")))
    ctx.first_ts = min(ctx.first_ts, float(min((r["ts"] for r in incoming), default=float("inf"))),
                       first_tcp_ts if first_tcp_ts is not None else float("inf"))
    _lifecycle(ctx, [r for r in own if r["kind"] == S.POD_LIFECYCLE])
    ctx.procs = build_processes(own, incoming)
    parents = parent_map(ctx.procs, own)
    from_outside = [r for r in incoming if r.get("pod_uid") != pod_uid]    # the rest are in own already
    assign_roles(ctx.procs, parents, own + from_outside)
    ctx.signals = _signals(ctx, own, from_outside)
    _containers(ctx)
    _trigger(ctx)
    for s in ctx.signals:      # roles are final now (preStop vs exec is decided by the trigger)
        if s.sender_in_pod and s.sender_pid in ctx.procs:
            s.sender_role = ctx.procs[s.sender_pid].role
    return ctx


def lifecycle_context(events: pd.DataFrame, pod_uid: str, caps: frozenset[str], lc: list[Row]) -> PodContext:
    """A context with only the pod's lifecycle facts (lc: its pod_lifecycle rows, time order)."""
    ctx = PodContext(pod_uid=pod_uid, events=events, caps=caps)
    _lifecycle(ctx, lc)
    return ctx


def _lifecycle(ctx: PodContext, lc: list[Row]) -> None:
    names: dict[str, str] = {}
    for r in lc:
        detail = detail_object(r.get("detail"))
        ctx.pod_name = r.get("pod_name") or ctx.pod_name
        ctx.namespace = r.get("namespace") or ctx.namespace
        if detail.get("grace_period_s") is not None:
            try:
                ctx.grace_s = float(detail["grace_period_s"])
            except (TypeError, ValueError):
                pass
        if isinstance(detail.get("containers"), dict):
            names.update({str(k): str(v) for k, v in detail["containers"].items()})
        if r.get("container_name") and r.get("container_id"):
            names[str(r["container_id"])] = str(r["container_name"])
        ctx.lifecycle.append(LifecycleFact(float(r["ts"]), r["row"], r.get("event"), detail))
    ctx.container_names = names


def _is_exec_noise(r: Row) -> bool:
    """execve kills the other threads of the exec'ing process (de_thread): SIGKILL deliveries to
    threads of runc's init that are no signal anybody sent."""
    if r.get("sig") != "SIGKILL":
        return False
    tid, comm = r.get("tid"), r.get("comm")
    return (tid is not None and tid != r.get("pid")) or (isinstance(comm, str) and comm.startswith("runc:"))


def _signals(ctx: PodContext, own: list[Row], from_outside: list[Row]) -> list[Signal]:
    procs = ctx.procs
    gens = [r for r in own if r["kind"] == S.SIGNAL_GENERATE and r.get("sig") != "SIGCHLD"]
    gens += [r for r in from_outside if r.get("sig") != "SIGCHLD"]
    gens.sort(key=lambda r: r["ts"])        # stable: the pod's own first at equal times
    dels = [r for r in own if r["kind"] == S.SIGNAL_DELIVER and r.get("sig") != "SIGCHLD" and not _is_exec_noise(r)]
    pending: dict[tuple[Any, str], list[Row]] = {}
    for r in dels:
        pending.setdefault((r.get("pid"), str(r.get("sig"))), []).append(r)
    used: set[int] = set()
    out: list[Signal] = []
    for r in gens:
        spid = r.get("pid")
        in_pod = r.get("pod_uid") == ctx.pod_uid
        if in_pod and spid in procs:
            role = procs[spid].role
        else:
            role = RUNTIME if is_runtime_comm(r.get("comm")) else HOST
        tpid = r.get("target_pid")
        target = procs.get(tpid) if r.get("target_pod_uid") in (ctx.pod_uid, None) else None
        if target is None and not in_pod:
            continue
        handler, drow = None, None
        for cand in pending.get((tpid, str(r.get("sig"))), ()):
            if cand["row"] not in used and cand["ts"] >= r["ts"] - 1e-6:
                used.add(cand["row"])
                handler, drow = cand.get("handler"), cand["row"]
                break
        out.append(Signal(float(r["ts"]), str(r.get("sig")), spid, r.get("comm"), role, in_pod, target, tpid,
                          r.get("result"), handler, r["row"], drow))
    for r in dels:
        if r["row"] in used:
            continue
        # a delivery without its generation (strace backend): the sender from si_pid / si_code
        target = procs.get(r.get("pid"))
        si_pid, code = r.get("si_pid"), r.get("code")
        sender = None
        if code is not None and code > 0:
            role, in_pod = "kernel", True
        elif si_pid == 0:
            role, in_pod = RUNTIME, False        # outside the container's PID namespace
        else:
            role, in_pod = "unknown", True
            if si_pid is not None and target is not None:
                sender = next((p for p in procs.values() if p.container_id == target.container_id
                               and p.nspid == si_pid), None)
                if sender is not None:
                    role = sender.role
        out.append(Signal(float(r["ts"]), str(r.get("sig")), sender.pid if sender else None,
                          sender.comm if sender else None, role, in_pod, target, r.get("pid"),
                          None, r.get("handler"), r["row"], r["row"], si_pid))
    out.sort(key=lambda s: (s.ts, s.row))
    return out


def _containers(ctx: PodContext) -> None:
    names = ctx.container_names
    ids: dict[str, list[Process]] = {}
    for p in ctx.procs.values():
        if p.container_id:
            ids.setdefault(p.container_id, []).append(p)
    for cid in names:
        ids.setdefault(cid, [])
    for cid, members in sorted(ids.items()):
        members.sort(key=lambda p: (p.nspid if p.nspid is not None else 1 << 30, p.pid))
        pid1 = next((p for p in members if p.nspid == 1 and not p.external), None)
        apps = [app_of(p.comm) for p in members if not p.external and app_of(p.comm)]
        app = apps[0] if apps else (pid1.comm if pid1 else None)
        ctx.containers[cid] = Container(cid, names.get(cid), pid1, members, app)


def _trigger(ctx: PodContext) -> None:
    stops = [s for s in ctx.signals if s.from_outside and s.target is not None and s.target.is_pid1
             and s.sig not in NOT_STOP]
    ctx.runtime_stops = stops
    for s in stops:
        c = ctx.containers.get(s.target.container_id or "")
        if c is not None and c.stop_signal is None:
            c.stop_signal = s
    first_stop = min((s.ts for s in stops), default=None)
    externals = [p for p in ctx.procs.values() if p.external and p.exec_ts is not None]
    window = (ctx.grace_s or DEFAULT_GRACE_S) + PRESTOP_EXTRA_S + 1.0
    hook_of = declared_hooks(ctx)
    deleted = deletion_ts(ctx)
    if first_stop is not None:
        # containers stop in parallel: a container's preStop may start after another one's stop signal;
        # it ends at its own container's stop signal (or its PID 1's exit)
        def ends(p: Process) -> float:
            c = ctx.containers.get(p.container_id or "")
            if c is not None and c.stop_signal is not None:
                return c.stop_signal.ts
            if c is not None and c.exit_ts is not None:
                return c.exit_ts
            return float("inf")
        pre = [p for p in externals if first_stop - window <= p.exec_ts <= ends(p)]
    else:
        pid1_exits = [p.exit_ts for p in ctx.procs.values() if p.is_pid1 and p.exit_ts is not None]
        pre = [p for p in externals if any(e >= p.exec_ts for e in pid1_exits)]
    # What the API (or the lab) says tells a preStop from an exec probe (kubelet runs those every
    # few seconds, into stopping pods too): a hook starts after the deletion, only in a container
    # that declares one, as the hook's program; the first such exec per container is the hook.
    if deleted is not None:
        pre = [p for p in pre if p.exec_ts >= deleted]
    if hook_of is not None:
        names = ctx.container_names
        kept, first = [], {}
        for p in sorted(pre, key=lambda p: p.exec_ts):
            name = names.get(p.container_id or "")
            if name is None:
                kept.append(p)           # a container the API had not named yet: judged as before
            elif (want := hook_of.get(name)) is not None and p.container_id not in first and want in program_names(p):
                first[p.container_id] = p
        pre = kept + list(first.values())
    pre_pids = {p.pid for p in pre}
    for p in externals:
        # only the first exec of a preStop chain starts it; its descendants inherit the role
        p.role = PRESTOP if p.pid in pre_pids or _descends(p, pre_pids, ctx) else EXEC
    ctx.prestops = sorted(pre, key=lambda p: p.exec_ts)
    cands = [t for t in [first_stop] + [p.exec_ts for p in pre] if t is not None]
    if cands:
        ctx.t0, ctx.stopped = min(cands), True


def deletion_ts(ctx: PodContext) -> float | None:
    """When the pod's deletion was requested (pod_deleted; the API's deletionTimestamp minus the
    grace period, a lower bound of the request time), if the recording says."""
    ts = [lc.ts for lc in ctx.lifecycle_events("pod_deleted")]
    return min(ts) if ts else None


# preStop handlers that run no process in the container (the API watcher's describe_handler)
_NO_EXEC_HOOKS = ("httpGet", "tcpSocket")


def declared_hooks(ctx: PodContext) -> dict[str, str] | None:
    """container name -> the program its exec preStop hook runs (basename of the first word), from
    the last pod_seen that lists preStop hooks; None when the recording does not say (then every
    exec into a stopping container in the stop window may be the hook)."""
    declared = None
    for lc in ctx.lifecycle:
        hooks = lc.detail.get("prestop") if lc.event == "pod_seen" else None
        if isinstance(hooks, dict):
            declared = hooks
    if declared is None or not ctx.container_names:
        return None
    out: dict[str, str] = {}
    for name, cmd in declared.items():
        try:
            words = shlex.split(str(cmd))
        except ValueError:
            words = str(cmd).split()
        if words and words[0] not in _NO_EXEC_HOOKS:
            out[str(name)] = words[0].rsplit("/", 1)[-1]
    return out


def program_names(p: Process) -> set[str]:
    """What an exec'd process may be called: its file's basename and its comm (cut at 15 characters)."""
    names = {p.comm} if p.comm else set()
    if p.filename:
        names.add(str(p.filename).rsplit("/", 1)[-1])
        names.add(str(p.filename).rsplit("/", 1)[-1][:15])
    return names


def _descends(p: Process, roots: set[int], ctx: PodContext) -> bool:
    seen = set()
    cur = p.ppid
    while cur is not None and cur not in seen:
        if cur in roots:
            return True
        seen.add(cur)
        par = ctx.procs.get(cur)
        cur = par.ppid if par else None
    return False


def mark_upstream(ctx: PodContext) -> None:
    """The FastCGI port is the one php-fpm listens on: learned from the LISTEN transition's process,
    else from the container that owns it, else php-fpm's default when the pod runs php-fpm."""
    fpm_containers = {c.id for c in ctx.containers.values() if c.app == "php-fpm"}
    known_owner = False
    for li in ctx.listeners.values():
        owner = ctx.procs.get(li.owner_pid) if li.owner_pid else None
        if owner is not None or li.owner_comm:
            known_owner = True
        comm = owner.comm if owner else li.owner_comm
        if app_of(comm) == "php-fpm" or (li.container_id in fpm_containers and app_of(comm) is None):
            li.upstream = True
    if not known_owner and fpm_containers:
        for port in DEFAULT_UPSTREAM_PORTS:
            if port in ctx.listeners:
                ctx.listeners[port].upstream = True
            else:
                ctx.listeners[port] = Listener(port, None, None, None, None, None, None, None, upstream=True)

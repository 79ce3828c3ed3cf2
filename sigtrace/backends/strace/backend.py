"""StraceBackend: the Backend protocol (sigtrace.backends) over strace, for nodes where eBPF is not
allowed but ptrace is (a `kubectl debug` container with SYS_PTRACE).

open() attaches one strace to the --pid/--comm processes and every other process of their
containers; -f follows their children. Processes that join a container later without being a
child of a traced one (a preStop hook run by `runc exec`) are picked up by a rescan every
RESCAN_S with one more strace. poll() reads the trace pipes without threads.
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...errors import PermissionProblem, UsageProblem
from ...events import capabilities as caps
from ...events import kinds
from ...pods import node
from ...pods.cgroup import pod_of_pid
from ...pods.proc import PROC, is_alive, list_pids, read_ns
from .. import EventSink
from . import command
from .parser import LineParser, parse_message
from .procs import ProcTable, container_key, expand_targets, own_lineage
from .translate import Translator

RESCAN_S = 0.5
ATTACH_WAIT_S = 5.0
STOP_WAIT_S = 5.0
READ_CHUNK = 1 << 16
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1


def _enter_netns(path: str) -> None:
    """setns(2) into a network namespace (os.setns is Python >= 3.12). Best effort: without it
    strace still records everything but socket tuples."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET)
    finally:
        os.close(fd)


def _die_with_parent() -> None:
    # strace must not outlive a SIGKILLed recorder: it would keep its tracees stopped at every syscall
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class _Stream:
    fd: int
    buf: bytes = b""
    eof: bool = False


@dataclass
class _Tracer:
    proc: subprocess.Popen
    pids: list[int]
    trace: _Stream
    err: _Stream
    results: dict[int, str] = field(default_factory=dict)


class StraceBackend:
    name = "strace"
    # what the kinds it sees all of prove (sigtrace.events.kinds): no signal_sender (senders outside the
    # traced processes, and the kernel's verdict on each signal, are invisible), no tcp_states and no
    # kernel_resets (strace sees syscalls, not the TCP stack)
    capabilities = kinds.capabilities_recorded(kinds.STRACE)

    def __init__(self, *, all_processes: bool = False, pids: tuple[int, ...] | list[int] = (),
                 comms: tuple[str, ...] = (), pods: tuple[str, ...] = (), node_root: str | None = None,
                 strace: str = "strace", rescan_s: float = RESCAN_S,
                 note: Callable[[str], None] | None = None, proc: str = PROC, raw_log: str | None = None,
                 **_ignored: Any):
        if all_processes:
            raise UsageProblem("--all is not possible with --backend strace (ptrace follows given processes); "
                               "pass --pid PID (repeatable) or use --backend bpf")
        if not pids and not comms and not pods:
            raise UsageProblem("--backend strace needs --pid PID, --comm NAME or --pod NAME|UID: "
                               "the processes to attach to")
        for pid in pids:
            if pid <= 0:
                raise UsageProblem(f"--pid {pid}: not a process id")
        self.pids, self.comms = list(pids), tuple(comms)
        root = Path(node_root) if node_root else node.default_node_root()
        # pods are resolved before anything runs: a name that is no pod is a usage error
        self.pod_uids = {node.resolve_pod(ref, root): ref for ref in pods}
        self.dies_with: dict[str, Any] | None = None
        self.strace_name, self.rescan_s, self.proc = strace, rescan_s, proc
        self.note = note or (lambda line: print(f"sigtrace: {line}", file=sys.stderr))
        self.procs = ProcTable(proc)
        self.parser = LineParser()
        self.translator: Translator | None = None
        self.tracers: list[_Tracer] = []
        self.attach: dict[int, dict[str, Any]] = {}       # pid -> result, for meta.json
        self.messages: list[str] = []                      # strace's other messages (first few)
        self.events = 0
        self.version = ""
        self.binary = ""
        self.startup_s: float | None = None
        self._keys: set[tuple] = set()                    # container keys of the targets
        self._last_rescan = 0.0
        self._sink: EventSink | None = None
        # every trace line as strace wrote it (tests keep real lines; SIGTRACE_STRACE_LOG for debugging)
        raw_log = raw_log or os.environ.get("SIGTRACE_STRACE_LOG")
        self._raw = open(raw_log, "a", encoding="utf-8") if raw_log else None

    # -- Backend protocol
    def open(self, sink: EventSink) -> None:
        t0 = time.monotonic()
        self.binary = command.find_strace(self.strace_name)
        command.check_ptrace_permission(self.proc)
        self.version = command.strace_version(self.binary)
        self._sink = sink
        self.translator = Translator(self.procs, self._emit)
        targets = self.pids + self._pids_by_comm() + self._pids_of_pods()
        if not targets:
            if self.pod_uids:
                raise UsageProblem(f"pod {', '.join(self.pod_uids.values())} has no running process on this node "
                                   f"(looked in {self.proc}/*/cgroup); run where the pod runs, with the host's "
                                   f"PID namespace (kubectl debug node/NODE)")
            raise UsageProblem(f"no process named {', '.join(self.comms)}; check the name (comm, 15 chars) "
                               f"or pass --pid")
        groups = expand_targets(targets, self.proc)
        wanted: list[int] = []
        for target, members in groups.items():
            key = container_key(target, self.proc)
            if key is not None:
                self._keys.add(key)
            for pid in members:
                if pid in wanted or pid in self.attach:
                    continue
                ok = self._precheck(pid, target)
                if ok:
                    wanted.append(pid)
        refs = {self.procs.facts(p).pod for p in targets if is_alive(p, self.proc)}
        if len(refs) == 1:
            # a child that exits before we read its cgroup belongs to the targets' (single) container
            self.procs.fallback_pod = refs.pop()
        self.dies_with = self._traced_init_of_own_pidns(wanted)
        if wanted:
            self._start(wanted)
        attached = [p for p, r in self.attach.items() if r["status"] == "attached"]
        if not attached:
            self._stop_all()
            raise self._nothing_attached()
        failed = {p: r for p, r in self.attach.items() if r["status"] != "attached"}
        if failed:
            self.note(f"strace attached to {len(attached)} of {len(self.attach)} processes; not attached: "
                      + "; ".join(f"{p}: {r['detail']}" for p, r in sorted(failed.items())))
        if self.dies_with is not None:
            self.note(f"note: this recorder runs in the PID namespace of {self.dies_with['comm']} (PID 1 here), "
                      f"which it traces: when that process exits the kernel kills the recorder too, so what "
                      f"follows is missing (exits are held {command.EXIT_DELAY_MS} ms to be recorded first); to "
                      f"outlive the pod, record from the node (kubectl debug node/NODE ... --pod NAME, see the README)")
        self.startup_s = round(time.monotonic() - t0, 3)
        self._last_rescan = time.monotonic()

    def poll(self, timeout_s: float) -> None:
        """Read what strace wrote; return as soon as a batch of lines gave events (the session
        then makes them durable: a recorder killed with its tracees keeps them) or at timeout_s."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        before = self.events
        while True:
            streams = [s for t in self.tracers for s in (t.trace, t.err) if not s.eof]
            remaining = deadline - time.monotonic()
            if not streams:
                time.sleep(max(0.0, min(remaining, 0.05)))
            else:
                try:
                    ready, _, _ = select.select([s.fd for s in streams], [], [], max(0.0, remaining))
                except InterruptedError:
                    ready = []
                for t in self.tracers:
                    if t.trace.fd in ready:
                        self._read(t.trace, self._trace_line, self._trace_partial)
                    if t.err.fd in ready:
                        self._read(t.err, lambda line, t=t: self._message(t, line))
            if time.monotonic() - self._last_rescan >= self.rescan_s:
                self._last_rescan = time.monotonic()
                self._rescan()
            if self.events != before or time.monotonic() >= deadline:
                return

    def close(self) -> None:
        self._stop_all()
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def lost(self) -> dict[str, int]:
        # a line we could not parse may have been an event
        return {"strace_unparsed_lines": self.parser.unparsed}

    def meta(self) -> dict[str, Any]:
        attached = sorted(p for p, r in self.attach.items() if r["status"] == "attached")
        return {
            "backend": self.name,
            "capabilities": list(self.capabilities),
            "strace": {"binary": self.binary, "version": self.version,
                       "argv": command.build_argv(self.binary or "strace", [], 3)[1:-2]},
            "strace_lines": self.parser.lines,
            "strace_unparsed_lines": self.parser.unparsed,
            "strace_unparsed_samples": list(self.parser.unparsed_samples),
            "strace_messages": list(self.messages),
            "attach": {str(p): r for p, r in sorted(self.attach.items())},
            "attached_pids": attached,
            "pods": sorted(self.pod_uids),
            "dies_with": self.dies_with,
            # a pid that exited before strace reached it ran nothing to miss: listed, not partial
            "partial_attach": any(r["status"] not in ("attached", "gone") for r in self.attach.values()),
            "counts": dict(self.translator.counts) if self.translator else {},
            "startup_s": self.startup_s,
            "header_source": "n/a (strace)",
            "missing_evidence": {
                caps.SIGNAL_SENDER: "the sender of a signal outside the traced processes (si_pid=0 means: outside "
                                    "the container's PID namespace, i.e. the runtime) and whether the kernel "
                                    "dropped a signal (PID 1 without handler)",
                caps.TCP_STATES: "TCP state transitions (FIN vs RST, listener close by the kernel)",
                caps.KERNEL_RESETS: "resets the kernel sends by itself, e.g. a SYN to a closed port",
            },
        }

    # -- attaching
    def _pids_by_comm(self) -> list[int]:
        if not self.comms:
            return []
        skip = own_lineage(self.proc)
        return sorted(pid for pid in list_pids(self.proc)
                      if pid not in skip and command.comm_of(pid, self.proc) in self.comms)

    def _pids_of_pods(self) -> list[int]:
        if not self.pod_uids:
            return []
        found = node.pod_pids(set(self.pod_uids), self.proc, skip=own_lineage(self.proc))
        return sorted(p for pids in found.values() for p in pids)

    def _traced_init_of_own_pidns(self, pids: list[int]) -> dict[str, Any] | None:
        """The PID 1 of our own PID namespace, when we trace it (a `kubectl debug --target`
        container): the kernel SIGKILLs every process of a PID namespace when its init exits."""
        own = read_ns("self", "pid", self.proc)
        if own is None:
            return None
        for pid in pids:
            f = self.procs.facts(pid)
            if read_ns(pid, "pid", self.proc) == own and f.nspid == 1:
                return {"pid": pid, "comm": command.comm_of(pid, self.proc) or None,
                        "pod_uid": f.pod.pod_uid, "container_id": f.pod.container_id}
        return None

    def _precheck(self, pid: int, target: int) -> bool:
        """Record why a pid cannot be attached before strace says it less clearly."""
        entry: dict[str, Any] = {"target": target, "comm": command.comm_of(pid, self.proc) or None}
        self.attach[pid] = entry
        if not is_alive(pid, self.proc):
            entry.update(status="gone", detail="no such process (exited?)")
            return False
        tracer = command.tracer_of(pid, self.proc)
        if tracer:
            entry.update(status="already_traced",
                         detail=f"already traced by pid {tracer} ({command.comm_of(tracer, self.proc) or '?'}); "
                                f"stop that tracer first")
            return False
        f = self.procs.facts(pid)
        entry.update(status="pending", detail="", pod_uid=f.pod.pod_uid, container_id=f.pod.container_id,
                     nspid=f.nspid)
        return True

    def _start(self, pids: list[int]) -> None:
        # strace's -yy asks the kernel (sock_diag) for socket tuples in its own network namespace: a
        # pod's sockets only decode from inside the pod's. One strace per network namespace.
        groups: dict[str | None, list[int]] = {}
        for pid in pids:
            groups.setdefault(read_ns(pid, "net", self.proc), []).append(pid)
        own = read_ns(os.getpid(), "net", self.proc)
        for netns, members in groups.items():
            self._start_one(members, members[0] if netns is not None and netns != own else None)

    def _start_one(self, pids: list[int], netns_pid: int | None) -> None:
        rfd, wfd = os.pipe()
        argv = command.build_argv(self.binary, pids, wfd, delay_exits=self.dies_with is not None)
        ns_path = f"{self.proc}/{netns_pid}/ns/net" if netns_pid is not None else None

        def prepare() -> None:
            _die_with_parent()
            if ns_path is not None:
                _enter_netns(ns_path)
        try:
            proc = subprocess.Popen(argv, pass_fds=(wfd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, start_new_session=True, preexec_fn=prepare)
        except OSError as exc:
            os.close(rfd)
            os.close(wfd)
            raise command.StraceMissing(f"cannot run {self.binary}: {exc.strerror}; install strace") from None
        os.close(wfd)
        os.set_blocking(rfd, False)
        assert proc.stderr is not None
        efd = proc.stderr.fileno()
        os.set_blocking(efd, False)
        tracer = _Tracer(proc, list(pids), _Stream(rfd), _Stream(efd))
        self.tracers.append(tracer)
        self._await_attach(tracer)

    def _await_attach(self, t: _Tracer) -> None:
        """strace reports every -p pid on stderr: attached or why not. Wait for all of them."""
        deadline = time.monotonic() + ATTACH_WAIT_S
        while time.monotonic() < deadline and any(self.attach[p]["status"] == "pending" for p in t.pids):
            ready, _, _ = select.select([t.err.fd, t.trace.fd], [], [], 0.05)
            if t.err.fd in ready:
                self._read(t.err, lambda line: self._message(t, line))
            if t.trace.fd in ready:
                self._read(t.trace, self._trace_line, self._trace_partial)
            if t.proc.poll() is not None and t.err.eof:
                break
        for p in t.pids:
            if self.attach[p]["status"] == "pending":
                rc = t.proc.poll()
                self.attach[p].update(status="failed", detail="strace exited" if rc is not None
                                      else "no attach report from strace")

    def _message(self, t: _Tracer, line: str) -> None:
        msg = parse_message(line)
        if msg is None:
            if line.strip() and len(self.messages) < 20:
                self.messages.append(line.strip()[:300])
            return
        if msg.pid is not None and msg.pid in t.pids and self.attach.get(msg.pid, {}).get("status") == "pending":
            if msg.kind == "attached":
                self.attach[msg.pid].update(status="attached", detail="", threads=msg.threads)
            elif msg.kind == "attach_failed":
                status = "gone" if "No such process" in msg.text else "failed"
                detail = msg.text
                if "Operation not permitted" in msg.text:
                    tracer = command.tracer_of(msg.pid, self.proc)
                    status = "already_traced" if tracer else "not_permitted"
                    detail = (f"already traced by pid {tracer}" if tracer
                              else "ptrace not permitted (needs CAP_SYS_PTRACE / SYS_PTRACE, same user namespace)")
                self.attach[msg.pid].update(status=status, detail=detail)
            return
        if msg.kind in ("attached", "detached"):
            return                                     # children followed with -f, detaches at the end
        if len(self.messages) < 20:
            self.messages.append(msg.text[:300])

    def _nothing_attached(self) -> Exception:
        results = sorted(self.attach.items())
        statuses = {r["status"] for _, r in results}
        what = "; ".join(f"{p}: {r['detail']}" for p, r in results)
        if statuses <= {"not_permitted"}:
            return PermissionProblem(f"strace could not attach to any process ({what}); run as root or add "
                                     f"SYS_PTRACE to the debug container")
        return UsageProblem(f"strace could not attach to any process ({what}); pass the pid of a running, "
                            f"untraced process")

    def _rescan(self) -> None:
        """Attach processes that joined a target container (runc exec) or, with --pod, the pod (a
        restarted container has a new id), without being a traced child."""
        if not self._keys and not self.pod_uids:
            return
        skip = own_lineage(self.proc) | {t.proc.pid for t in self.tracers}
        new = []
        for pid in list_pids(self.proc):
            if pid in skip or pid in self.attach:
                continue
            ref = pod_of_pid(pid, self.proc)
            if container_key(pid, self.proc, ref) not in self._keys and ref.pod_uid not in self.pod_uids:
                continue
            if command.tracer_of(pid, self.proc):
                continue                                # a traced process's child, already followed by -f
            self.attach[pid] = {"target": None, "comm": command.comm_of(pid, self.proc) or None,
                                "status": "pending", "detail": "", "joined_later": True}
            f = self.procs.facts(pid)
            self.attach[pid].update(pod_uid=f.pod.pod_uid, container_id=f.pod.container_id, nspid=f.nspid)
            new.append(pid)
        if new:
            self._start(new)

    # -- reading
    def _read(self, stream: _Stream, on_line: Callable[[str], None],
              on_partial: Callable[[str], None] | None = None) -> None:
        while True:
            try:
                chunk = os.read(stream.fd, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                stream.eof = True
                if stream.buf:
                    # strace died mid-line: the half line is counted as unparsed by the parser
                    tail, stream.buf = stream.buf, b""
                    on_line(tail.decode("utf-8", "replace"))
                return
            stream.buf += chunk
            *lines, stream.buf = stream.buf.split(b"\n")
            for raw in lines:
                on_line(raw.decode("utf-8", "replace"))
            if on_partial is not None and b"exit_group(" in stream.buf:
                on_partial(stream.buf.decode("utf-8", "replace"))
            if len(chunk) < READ_CHUNK:
                return

    def _trace_line(self, line: str) -> None:
        assert self.translator is not None
        if self._raw is not None:
            self._raw.write(line + "\n")
        for rec in self.parser.feed(line):
            try:
                self.translator.handle(rec)
            except (ValueError, IndexError, KeyError, TypeError):
                # a record of a shape we did not foresee: count it, keep recording
                self.parser.unparsed += 1

    def _trace_partial(self, partial: str) -> None:
        """A line strace has begun but not ended: an exit_group() entry is an exit already."""
        assert self.translator is not None
        rec = self.parser.exit_entry(partial)
        if rec is not None:
            self.translator.handle(rec)

    def _emit(self, event: dict[str, Any]) -> None:
        self.events += 1
        if self._sink is not None:
            self._sink(event)

    # -- stopping
    def _stop_all(self) -> None:
        for t in self.tracers:
            if t.proc.poll() is None:
                try:
                    t.proc.send_signal(signal.SIGINT)      # strace detaches from every tracee and exits
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_WAIT_S
        for t in self.tracers:
            while t.proc.poll() is None and time.monotonic() < deadline:
                self._drain(t, 0.05)
            if t.proc.poll() is None:
                t.proc.kill()
                t.proc.wait()
            self._drain(t, 0)
            t.trace.eof = t.err.eof = True
            try:
                os.close(t.trace.fd)
            except OSError:
                pass
            if t.proc.stderr is not None:           # owns the stderr fd
                try:
                    t.proc.stderr.close()
                except OSError:
                    pass
        self.tracers = []

    def _drain(self, t: _Tracer, timeout: float) -> None:
        fds = [s.fd for s in (t.trace, t.err) if not s.eof]
        if not fds:
            if timeout:
                time.sleep(timeout)
            return
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except (OSError, ValueError):
            return
        if t.trace.fd in ready:
            self._read(t.trace, self._trace_line, self._trace_partial)
        if t.err.fd in ready:
            self._read(t.err, lambda line: self._message(t, line))

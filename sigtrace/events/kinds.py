"""The event kinds, each declared once: its fields, the capability it proves and where it comes from.

What else lists kinds is derived from DECLARED: sigtrace.events.schema's KINDS and groups, the bcc
decoder's tables (ST_KIND_* / ST_PROBE_* -> kind, tracepoint), the tracepoint fields the running kernel
must offer, the capabilities each recorder claims and those a recording's events show, and the README's
kind and field tables (`python -m sigtrace.events.markdown`). tests/test_event_kinds.py checks this
declaration against probes/sigtrace.h, the decoder, the strace translator and the README.

Fields are named here; their dtypes and docs are sigtrace.events.schema's FIELDS (the one list of
fields), which checks at import that every name below is one of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from . import capabilities as C

# ---- the kinds' names: the public constants (also sigtrace.events.schema.SIGNAL_GENERATE, ...) ----
SIGNAL_GENERATE = "signal_generate"
SIGNAL_DELIVER = "signal_deliver"
PROCESS_EXEC = "process_exec"
PROCESS_EXIT = "process_exit"
TCP_STATE = "tcp_state"
TCP_RESET_SENT = "tcp_reset_sent"
TCP_RESET_RECEIVED = "tcp_reset_received"
TCP_CLOSE_COUNTS = "tcp_close_counts"
SOCK_CLOSE = "sock_close"
CONNECT_ERROR = "connect_error"
POD_LIFECYCLE = "pod_lifecycle"

BPF, STRACE = "bpf", "strace"      # the recorders (sigtrace.backends.*)


@dataclass(frozen=True)
class Probe:
    """How the eBPF recorder sees a kind: one tracepoint program in probes/sigtrace.bpf.c that emits
    kind ST_KIND_<NAME> and counts its ring buffer losses under ST_PROBE_<NAME> (probes/sigtrace.h),
    decoded by sigtrace/backends/bpf/decode.py."""
    tracepoint: str                 # "signal:signal_generate"
    reads: tuple[str, ...]          # its fields the probe reads: the running kernel's format file must have them

    @property
    def format_path(self) -> str:
        """The tracepoint under tracefs' events/ ("signal/signal_generate")."""
        return self.tracepoint.replace(":", "/")


@dataclass(frozen=True)
class Strace:
    """How the strace recorder sees a kind: the calls (or strace's own `---`/`+++` lines) that
    sigtrace/backends/strace/translate.py turns into it."""
    calls: tuple[str, ...]
    sees_all: bool                  # False: only some of them reach strace, so it claims no capability from them
    note: str = ""                  # which of them it sees, when not all ("only ...")


@dataclass(frozen=True)
class Kind:
    name: str
    group: str                      # "signal", "process", "tcp", "pod": how docs name several kinds at once
    doc: str
    fields: tuple[str, ...]         # besides ts and kind: the fields its events may carry (sparse: null ones omitted)
    proves: tuple[str, ...] = ()    # capabilities (sigtrace.events.capabilities) a recording holding it has
    probe: Probe | None = None
    strace: Strace | None = None
    outside: str = ""               # written from outside the kernel: by whom

    @property
    def kind_define(self) -> str:
        return f"ST_KIND_{self.name.upper()}"

    @property
    def probe_define(self) -> str:
        return f"ST_PROBE_{self.name.upper()}"


# the current task of a kernel event; the eBPF recorder gives no nspid for TCP events (the task on the
# CPU is often not the socket's owner), strace does (its TCP events are the calling process's syscalls)
TASK = ("pid", "tid", "comm", "pod_uid", "container_id", "nspid")
TCP_TASK = ("pid", "tid", "comm", "pod_uid", "container_id")
TUPLE = ("saddr", "sport", "daddr", "dport")
READ_WRITE_CALLS = ("read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg", "sendfile")

DECLARED: tuple[Kind, ...] = (
    Kind(SIGNAL_GENERATE, "signal", "a signal sent, seen in the sender's context (pid, comm: the sender)",
         TASK + ("sig", "code", "target_pid", "target_comm", "target_pod_uid", "target_container_id",
                 "target_nspid", "result"),
         proves=(C.SIGNAL_SENDER,),
         probe=Probe("signal:signal_generate", ("sig", "code", "comm", "pid", "result")),
         strace=Strace(("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal"),
                       sees_all=False, note="those of the processes it traces, without the kernel's result")),
    Kind(SIGNAL_DELIVER, "signal", "a signal taken by the receiver (pid, comm: the receiver)",
         TASK + ("sig", "code", "si_pid", "handler"),
         proves=(C.SIGNAL_DELIVERY,),
         probe=Probe("signal:signal_deliver", ("sig", "code", "sa_handler")),
         strace=Strace(("--- SIG... ---",), sees_all=True)),
    Kind(PROCESS_EXEC, "process", "a process executed a file",
         TASK + ("filename", "ppid"),
         proves=(C.PROCESS_EXEC,),
         probe=Probe("sched:sched_process_exec", ("filename",)),
         strace=Strace(("execve", "execveat"), sees_all=True)),
    Kind(PROCESS_EXIT, "process", "a process (thread group) ended",
         TASK + ("exit_code", "exit_signal"),
         proves=(C.PROCESS_EXIT,),
         probe=Probe("sched:sched_process_exit", ("group_dead",)),
         strace=Strace(("exit_group", "+++ exited/killed +++"), sees_all=True)),
    # only the eBPF recorder writes it, and records the kernel's resets with it
    Kind(TCP_STATE, "tcp", "a TCP socket changed state (routine transitions are counted, not streamed)",
         TCP_TASK + TUPLE + ("old_state", "new_state", "sock"),
         proves=(C.TCP_STATES, C.KERNEL_RESETS),
         probe=Probe("sock:inet_sock_set_state", ("skaddr", "oldstate", "newstate", "sport", "dport", "family",
                                                  "protocol", "saddr", "daddr", "saddr_v6", "daddr_v6"))),
    # its other fields depend on the kernel (handled by shape: sigtrace.backends.bpf.kernel.send_reset_shape)
    Kind(TCP_RESET_SENT, "tcp", "the kernel sent a reset, from a socket or for a packet to no socket",
         TCP_TASK + TUPLE + ("old_state", "sock", "reason"),
         proves=(C.KERNEL_RESETS,),
         probe=Probe("tcp:tcp_send_reset", ("skaddr", "saddr", "daddr"))),
    Kind(TCP_RESET_RECEIVED, "tcp", "a socket received a reset",
         TASK + TUPLE + ("sock", "reason"),
         proves=(C.KERNEL_RESETS,),
         probe=Probe("tcp:tcp_receive_reset", ("skaddr", "sport", "dport", "family", "saddr", "daddr",
                                               "saddr_v6", "daddr_v6")),
         strace=Strace(READ_WRITE_CALLS, sees_all=False,
                       note="those a traced process sees fail with ECONNRESET")),
    # the kernel counts them (probes/sigtrace.bpf.c, close_counts); the recorder writes the counts
    Kind(TCP_CLOSE_COUNTS, "tcp", "routine closes of a stopping pod's connections counted in the kernel, not "
         "streamed: `count` closes in the 100 ms from `ts` on the pod's port (`sport`: server side, `dport`: client "
         "side), `old_state` → `new_state` as in `tcp_state`; what a verdict needs still streams",
         ("pod_uid", "sport", "dport", "old_state", "new_state", "count"),
         outside="the eBPF recorder, from the kernel's per-pod close counters"),
    Kind(SOCK_CLOSE, "tcp", "a process closed or shut down a TCP socket (or exited holding it)",
         TASK + TUPLE + ("reason",),
         proves=(C.SOCKET_CALLS,),
         strace=Strace(("close", "shutdown", "exit_group"), sees_all=True)),
    Kind(CONNECT_ERROR, "tcp", "connect() or accept() failed: refused, reset, unreachable (a non-blocking "
         "connect's failure is seen by getsockopt(SO_ERROR) or the next read or write)",
         TASK + TUPLE + ("reason",),
         proves=(C.SOCKET_CALLS,),
         strace=Strace(("connect", "accept", "accept4", "getsockopt") + READ_WRITE_CALLS, sees_all=True)),
    Kind(POD_LIFECYCLE, "pod", "what happened to a pod (`sigtrace.events.lifecycle`)",
         ("pod_uid", "event", "pod_name", "namespace", "container_name", "detail"),
         outside="outside the kernel: the lab driver and the Kubernetes watcher"),
)

BY_NAME: dict[str, Kind] = {k.name: k for k in DECLARED}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def in_group(group: str) -> tuple[str, ...]:
    return tuple(k.name for k in DECLARED if k.group == group)


def strace_calls(name: str) -> tuple[str, ...]:
    """The calls the strace translator makes a kind from (none when strace cannot see it)."""
    source = BY_NAME[name].strace
    return source.calls if source is not None else ()


# ---- derived: the eBPF recorder's tables ----------------------------------------------------------
def probed() -> tuple[Kind, ...]:
    """The kinds the eBPF recorder writes, in declaration order (= ST_KIND_* / ST_PROBE_* order)."""
    return tuple(k for k in DECLARED if k.probe is not None)


def kind_defines() -> dict[str, str]:
    """ST_KIND_* define -> kind name (the decoder maps the header's numbers through it)."""
    return {k.kind_define: k.name for k in probed()}


def probe_defines() -> dict[str, str]:
    """ST_PROBE_* define -> tracepoint (how lost events are named)."""
    return {k.probe_define: k.probe.tracepoint for k in probed() if k.probe is not None}


def tracepoint_fields() -> dict[str, tuple[str, ...]]:
    """tracefs path ("signal/signal_generate") -> the fields its probe reads."""
    return {k.probe.format_path: k.probe.reads for k in probed() if k.probe is not None}


def fields_of(recorder: str) -> tuple[str, ...]:
    """Every field the recorder's kinds may carry (ts and kind first), in first-declared order."""
    names = dict.fromkeys(("ts", "kind"))
    for k in DECLARED:
        if (k.probe if recorder == BPF else k.strace) is not None:
            names.update(dict.fromkeys(k.fields))
    return tuple(names)


# ---- derived: capabilities ----------------------------------------------------------------------
def capabilities_recorded(recorder: str) -> tuple[str, ...]:
    """What a recorder's recordings hold (meta.json "capabilities"), in capabilities.ALL order: what
    the kinds it sees all of prove."""
    proven = {c for k in DECLARED for c in k.proves
              if (k.probe is not None if recorder == BPF else k.strace is not None and k.strace.sees_all)}
    return tuple(c for c in C.ALL if c in proven)


def capabilities_shown(kinds: Iterable[str]) -> frozenset[str]:
    """What a recording's events show it can hold (for a meta.json that lists no capabilities)."""
    return frozenset(c for name in kinds if name in BY_NAME for c in BY_NAME[name].proves)

"""The one event schema every backend writes and every later stage reads.

An event is a flat JSON object (one line of events.jsonl, one row of the CSV export).
Field names here are the contract: the README documents them, the CSV export uses
them as columns, and both backends (bcc, strace) produce exactly these.
"""
from __future__ import annotations

import signal as _signal
from dataclasses import dataclass

SCHEMA_VERSION = 1

# ---- kinds -------------------------------------------------------------------------
SIGNAL_GENERATE = "signal_generate"      # in the sender's context: pid/comm = sender
SIGNAL_DELIVER = "signal_deliver"        # in the receiver's context: pid/comm = receiver
PROCESS_EXEC = "process_exec"
PROCESS_EXIT = "process_exit"
TCP_STATE = "tcp_state"                  # a TCP state transition of a socket
TCP_RESET_SENT = "tcp_reset_sent"
TCP_RESET_RECEIVED = "tcp_reset_received"
SOCK_CLOSE = "sock_close"                # close()/shutdown() of a TCP socket (strace view)
CONNECT_ERROR = "connect_error"          # connect() failed: refused, reset (strace view)
POD_LIFECYCLE = "pod_lifecycle"          # facts from outside the kernel: lab driver, Kubernetes API

KINDS = (
    SIGNAL_GENERATE, SIGNAL_DELIVER, PROCESS_EXEC, PROCESS_EXIT,
    TCP_STATE, TCP_RESET_SENT, TCP_RESET_RECEIVED, SOCK_CLOSE, CONNECT_ERROR, POD_LIFECYCLE,
)
SIGNAL_KINDS = (SIGNAL_GENERATE, SIGNAL_DELIVER)
TCP_KINDS = (TCP_STATE, TCP_RESET_SENT, TCP_RESET_RECEIVED, SOCK_CLOSE, CONNECT_ERROR)


# ---- fields ------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    name: str
    dtype: str          # pandas dtype used by correlation and the CSV export
    doc: str


COMMON_FIELDS = (
    Field("ts", "float64", "epoch seconds (float) when the kernel saw it"),
    Field("kind", "category", "one of KINDS"),
    Field("pid", "Int64", "process (thread group) id of the current task, in the node's PID namespace"),
    Field("tid", "Int64", "thread id of the current task"),
    Field("comm", "string", "command name of the current task"),
    Field("pod_uid", "string", "pod of the current task (null outside pods, or for TCP events its socket's pod)"),
    Field("container_id", "string", "container of the current task (null outside pods)"),
    Field("nspid", "Int64", "pid of the current task inside its container's PID namespace (1 = the container's init)"),
)

SIGNAL_FIELDS = (
    Field("sig", "category", "signal name, e.g. SIGTERM"),
    Field("code", "Int64", "si_code (0 = SI_USER: kill(); -6 = SI_TKILL; >0 = from the kernel)"),
    Field("si_pid", "Int64", "sender pid as the receiver sees it (strace; 0 = outside its PID namespace)"),
    Field("target_pid", "Int64", "signal_generate: the target process (thread group)"),
    Field("target_comm", "string", "signal_generate: command name of the target"),
    Field("target_pod_uid", "string", "signal_generate: pod of the target"),
    Field("target_container_id", "string", "signal_generate: container of the target"),
    Field("target_nspid", "Int64", "signal_generate: target pid inside its container (1 = the container's init)"),
    Field("result", "category", "signal_generate: delivered, ignored, already_pending, overflow_fail, lose_info"),
    Field("handler", "category", "signal_deliver: default, ignore or handler"),
)

PROCESS_FIELDS = (
    Field("filename", "string", "process_exec: the executed file"),
    Field("ppid", "Int64", "process_exec: parent pid"),
    Field("exit_code", "Int64", "process_exit: exit status when it exited (null when killed)"),
    Field("exit_signal", "category", "process_exit: fatal signal name when killed by one (null otherwise)"),
)

TCP_FIELDS = (
    Field("saddr", "string", "local address of the socket (for a reset sent without a socket: the packet's destination side)"),
    Field("sport", "Int64", "local port"),
    Field("daddr", "string", "remote address"),
    Field("dport", "Int64", "remote port"),
    Field("old_state", "category", "tcp_state: state before, e.g. ESTABLISHED"),
    Field("new_state", "category", "tcp_state: state after, e.g. CLOSE_WAIT"),
    Field("sock", "string", "kernel socket identity (hex) to follow one connection; null when none"),
    Field("reason", "string", "tcp_reset_sent: the kernel's reset reason where it reports one; connect_error: errno name"),
)

LIFECYCLE_FIELDS = (
    Field("event", "category", "pod_lifecycle: what happened (see sigtrace.events.lifecycle)"),
    Field("pod_name", "string", "pod_lifecycle: the pod's name where known"),
    Field("namespace", "string", "pod_lifecycle: the pod's namespace where known"),
    Field("container_name", "string", "pod_lifecycle: container name where known"),
    Field("detail", "string", "pod_lifecycle: JSON object with the rest (grace period, preStop, stop signal...)"),
)

FIELDS = COMMON_FIELDS + SIGNAL_FIELDS + PROCESS_FIELDS + TCP_FIELDS + LIFECYCLE_FIELDS
FIELD_NAMES = tuple(f.name for f in FIELDS)
DTYPES = {f.name: f.dtype for f in FIELDS}

# ---- value vocabularies -------------------------------------------------------------
SIGNAL_NAMES = {s.value: s.name for s in _signal.Signals}
SIGNAL_NUMBERS = {name: num for num, name in SIGNAL_NAMES.items()}

# signal_generate's result field (enum trace_signal_result in include/trace/events/signal.h)
GENERATE_RESULTS = ("delivered", "ignored", "already_pending", "overflow_fail", "lose_info")

# include/net/tcp_states.h
TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
    11: "CLOSING", 12: "NEW_SYN_RECV", 13: "BOUND_INACTIVE",
}

def signal_name(num: int) -> str:
    return SIGNAL_NAMES.get(num, f"SIG{num}")


def new_event(kind: str, ts: float, **fields) -> dict:
    """An event dict with every field of the schema present (null where unknown).

    Backends build events through this so that events.jsonl lines all have the same keys
    and a typo in a field name fails at once instead of producing a silent new column.
    """
    unknown = set(fields) - set(FIELD_NAMES)
    if unknown:
        raise ValueError(f"not in the event schema: {sorted(unknown)}")
    event = dict.fromkeys(FIELD_NAMES)
    event.update(fields, ts=ts, kind=kind)
    return event

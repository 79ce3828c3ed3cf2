"""The one event schema every backend writes and every later stage reads.

An event is a flat JSON object (one line of events.jsonl, one row of the CSV export), built by
new_event. Field names here are the contract: the README documents them (its tables are generated
from FIELDS and kinds.DECLARED), the CSV export uses them as columns, and both backends (bcc, strace)
produce exactly these. Which kinds exist, and which fields each carries, is declared in kinds.py.
"""
from __future__ import annotations

import signal as _signal
from dataclasses import dataclass
from typing import Any

from .kinds import (CONNECT_ERROR, DECLARED, NAMES as KINDS, POD_LIFECYCLE, PROCESS_EXEC, PROCESS_EXIT,
                    SIGNAL_DELIVER, SIGNAL_GENERATE, SOCK_CLOSE, TCP_CLOSE_COUNTS, TCP_RESET_RECEIVED, TCP_RESET_SENT,
                    TCP_STATE, in_group)

__all__ = [
    "SCHEMA_VERSION", "KINDS", "SIGNAL_KINDS", "PROCESS_KINDS", "TCP_KINDS",
    "SIGNAL_GENERATE", "SIGNAL_DELIVER", "PROCESS_EXEC", "PROCESS_EXIT", "TCP_STATE", "TCP_RESET_SENT",
    "TCP_RESET_RECEIVED", "TCP_CLOSE_COUNTS", "SOCK_CLOSE", "CONNECT_ERROR", "POD_LIFECYCLE",
    "Field", "FIELDS", "FIELD_NAMES", "DTYPES", "COMMON_FIELDS", "SIGNAL_FIELDS", "PROCESS_FIELDS", "TCP_FIELDS",
    "LIFECYCLE_FIELDS", "SIGNAL_NAMES", "SIGNAL_NUMBERS", "GENERATE_RESULTS", "TCP_STATES", "signal_name",
    "new_event",
]

SCHEMA_VERSION = 1

# ---- kinds: each declared once in kinds.py (fields, capability, source); re-exported here -------
SIGNAL_KINDS = in_group("signal")
PROCESS_KINDS = in_group("process")
TCP_KINDS = in_group("tcp")


# ---- fields: the one list, with dtypes and docs (the README's field table is generated from it) ----
@dataclass(frozen=True)
class Field:
    name: str
    dtype: str          # pandas dtype used by correlation and the CSV export
    doc: str            # markdown: the README's field table shows it


COMMON_FIELDS = (
    Field("ts", "float64", "epoch seconds (float) when the kernel saw it"),
    Field("kind", "category", "one of the kinds above"),
    Field("pid", "Int64", "the current task's process (thread group) id, in the node's PID namespace. For "
          "`signal_generate` the sender, for `signal_deliver` the receiver; for TCP events whatever task was on "
          "the CPU (often not the socket's owner)"),
    Field("tid", "Int64", "the current task's thread id"),
    Field("comm", "string", "the current task's command name"),
    Field("pod_uid", "string", "pod of the current task, null outside pods; for TCP events the **socket's** pod "
          "by endpoint; for `pod_lifecycle` the pod it is about"),
    Field("container_id", "string", "container of the current task, null outside pods; for TCP events only when "
          "the current task is in the socket's pod"),
    Field("nspid", "Int64", "pid of the current task inside its container's PID namespace (1 = the container's "
          "init). The eBPF recorder takes it in the kernel at the event, so also for short-lived preStop processes, "
          "and gives none for TCP events"),
)

SIGNAL_FIELDS = (
    Field("sig", "category", "signal name, e.g. `SIGTERM`"),
    Field("code", "Int64", "si_code: 0 = `SI_USER` (kill()), -6 = `SI_TKILL`, > 0 from the kernel (e.g. SIGCHLD "
          "`CLD_EXITED`=1, `CLD_KILLED`=2)"),
    Field("si_pid", "Int64", "sender pid as the receiver sees it (strace; 0 = outside its PID namespace)"),
    Field("target_pid", "Int64", "the target process (thread group)"),
    Field("target_comm", "string", "the target's command name"),
    Field("target_pod_uid", "string", "the target's pod"),
    Field("target_container_id", "string", "the target's container"),
    Field("target_nspid", "Int64", "the target's pid inside its container (1 = the container's init)"),
    Field("result", "category", "`delivered`, `ignored` (dropped by the kernel, e.g. a default-action signal to a "
          "container's PID 1), `already_pending`, `overflow_fail`, `lose_info`"),
    Field("handler", "category", "`default`, `ignore` or `handler` (the process installed one)"),
)

PROCESS_FIELDS = (
    Field("filename", "string", "the executed file"),
    Field("ppid", "Int64", "parent pid (from fork, else /proc)"),
    Field("exit_code", "Int64", "exit status when the process exited, null when killed"),
    Field("exit_signal", "category", "the fatal signal when killed by one (the signal that was sent, e.g. "
          "`SIGTERM`, though the kernel delivers it to the threads as SIGKILL)"),
)

TCP_FIELDS = (
    Field("saddr", "string", "local address of the socket; for a reset sent without a socket (refused SYN) the "
          "address the packet was sent to"),
    Field("sport", "Int64", "local port (as `saddr`). A socket whose `sport` is a pod listening port (`meta.json` "
          "`pod_endpoints`) is the server side"),
    Field("daddr", "string", "remote address"),
    Field("dport", "Int64", "remote port"),
    Field("old_state", "category", "`tcp_state`: the state before, e.g. `LISTEN` → `CLOSE` (listener closed), "
          "`ESTABLISHED` → `FIN_WAIT1` (this side closed), → `CLOSE_WAIT` (peer closed), → `CLOSE` (reset/abort), "
          "`SYN_SENT` → `CLOSE` (connect refused). `tcp_reset_sent`: the state of the socket that sent it; null "
          "when no socket (the kernel answered a SYN to a closed port: a refused connection attempt)"),
    Field("new_state", "category", "the state after (see `old_state`)"),
    Field("sock", "string", "kernel socket identity (hex) to follow one connection across events; null for a "
          "reset without a socket"),
    Field("count", "Int64", "`tcp_close_counts`: how many closes the event stands for"),
    Field("reason", "string", "`tcp_reset_sent`: the kernel's reset reason where it reports one (≥ 6.10: "
          "`NO_SOCKET`, `TCP_ABORT_ON_CLOSE` = closed with unread data, `TCP_STATE`...); strace: the errno name "
          "(`connect_error`), the call (`sock_close`: `close`, `shutdown SHUT_WR`, `exit`; `tcp_reset_received`: "
          "the read or write)"),
)

LIFECYCLE_FIELDS = (
    Field("event", "category", "what happened (`sigtrace.events.lifecycle`)"),
    Field("pod_name", "string", "the pod's name where known"),
    Field("namespace", "string", "the pod's namespace where known"),
    Field("container_name", "string", "the container's name where known"),
    Field("detail", "string", "JSON object with the rest (grace period, preStop, stop signal...)"),
)

FIELDS = COMMON_FIELDS + SIGNAL_FIELDS + PROCESS_FIELDS + TCP_FIELDS + LIFECYCLE_FIELDS
FIELD_NAMES = tuple(f.name for f in FIELDS)
DTYPES = {f.name: f.dtype for f in FIELDS}
_FIELD_SET = frozenset(FIELD_NAMES)
_KIND_SET = frozenset(KINDS)


def _check_declared_fields() -> None:
    """Every field a kind declares is one of FIELDS: checked once, at import, rather than per event."""
    undeclared = sorted((k.name, f) for k in DECLARED for f in k.fields if f not in _FIELD_SET)
    if undeclared:
        raise ValueError(f"sigtrace/events/kinds.py declares fields not in the schema: {undeclared}")


_check_declared_fields()


# ---- value vocabularies -------------------------------------------------------------
SIGNAL_NAMES = {s.value: s.name for s in _signal.Signals}
SIGNAL_NUMBERS = {name: num for num, name in SIGNAL_NAMES.items()}

# signal_generate's result field (enum trace_signal_result in include/trace/events/signal.h)
GENERATE_RESULTS = ("delivered", "ignored", "already_pending", "overflow_fail", "lose_info")

# include/net/tcp_states.h; probes/sigtrace.h names them ST_TCP_* (tests/test_event_kinds.py: they agree)
TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
    11: "CLOSING", 12: "NEW_SYN_RECV", 13: "BOUND_INACTIVE",
}


def signal_name(num: int) -> str:
    return SIGNAL_NAMES.get(num, f"SIG{num}")


def new_event(kind: str, ts: float, **fields: Any) -> dict[str, Any]:
    """An event as the writer keeps it: ts, kind, then the fields that are known (null ones are left
    out; readers restore them).

    The one builder of events (strace translator, lab driver, Kubernetes watcher, tests), except the
    eBPF decoder's hot path (sigtrace/backends/bpf/decode.py says why). A kind or field name that is
    not in the schema fails at once instead of producing a silent new column.
    """
    if kind not in _KIND_SET or not fields.keys() <= _FIELD_SET:
        bad = sorted(fields.keys() - _FIELD_SET) if kind in _KIND_SET else [kind]
        raise ValueError(f"not in the event schema: {bad}")
    event: dict[str, Any] = {"ts": ts, "kind": kind}
    for name, value in fields.items():
        if value is not None:
            event[name] = value
    return event

"""Kernel event (struct st_event, probes/sigtrace.h) -> schema event (sigtrace.events.schema)."""
from __future__ import annotations

import time
from typing import Any

from ...events import kinds, schema
from .pods import AMBIGUOUS, PodRegistry, format_addr

# the C struct's fields the decoder reads; tests check the compiled struct has exactly these
STRUCT_FIELDS = (
    "ts_ns", "cgroup_id", "skaddr", "kind", "pid", "tid", "cidx", "sig", "code", "result",
    "target_pid", "target_cidx", "handler", "ppid", "exit_code", "exit_signal", "pidx", "role",
    "old_state", "new_state", "reason", "family", "sport", "dport", "pad", "nspid", "flags", "saddr", "daddr",
    "comm", "target_comm", "filename",
)

# ST_KIND_* / ST_PROBE_* define -> kind / tracepoint, derived from the one declaration of each kind
KIND_NAMES = kinds.kind_defines()
PROBE_NAMES = kinds.probe_defines()
HANDLERS = {"ST_HANDLER_DEFAULT": "default", "ST_HANDLER_IGNORE": "ignore", "ST_HANDLER_HANDLER": "handler"}

# Events are built here as sparse dicts, inline, not through schema.new_event (the one builder
# elsewhere): for a TCP event its keyword arguments, name checks and None filter cost ~1.1 us more
# than the dict built in place, on a decode of ~3 us (+35%, measured 2026-12), at the ~80k events/s
# the recorder decodes. Which fields each kind may carry is declared in sigtrace.events.kinds, whose
# names schema checks at import; tests/test_event_kinds.py checks each kind decoded here against it.
DECODED_FIELDS = kinds.fields_of(kinds.BPF)


MAX_LISTENER_CLOSES = 4096     # (pod, port) listener closes kept for telling shared endpoints apart


def _opt(event: dict[str, Any], **fields: Any) -> None:
    """Add the fields that are known (not None): events are sparse."""
    for k, v in fields.items():
        if v is not None:
            event[k] = v


def _str(raw: Any) -> str:
    # bcc's ctypes char arrays read as bytes already cut at the NUL; keep the cut for other views
    b = raw if isinstance(raw, bytes) else bytes(raw)
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def monotonic_offset() -> float:
    """epoch - CLOCK_MONOTONIC, to turn bpf_ktime_get_ns() into epoch seconds."""
    return time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)


class Decoder:
    def __init__(self, defines: dict[str, int], registry: PodRegistry, reset_reasons: dict[int, str],
                 resolve_unknown: bool = False):
        self.reg = registry
        self.kinds = {defines[k]: v for k, v in KIND_NAMES.items()}
        self.probes = {defines[k]: v for k, v in PROBE_NAMES.items()}
        self.handlers = {defines[k]: v for k, v in HANDLERS.items()}
        # TCP states by the header's ST_TCP_* numbers (the kernel's, include/net/tcp_states.h)
        self.tcp_states = {defines[f"ST_TCP_{name}"]: name for name in schema.TCP_STATES.values()}
        self.listen, self.close = defines["ST_TCP_LISTEN"], defines["ST_TCP_CLOSE"]
        self.reset_reasons = reset_reasons
        self.resolve_unknown = resolve_unknown     # --all: processes outside the registry
        self.offset = monotonic_offset()
        self.armed_pods: Any = lambda: set()      # set by the backend: pods stopping now
        self.listener_closed: dict[tuple[str, int], float] = {}     # (pod_uid, port) -> when
        self.bucket_s = defines["ST_CLOSE_BUCKET_MS"] / 1000
        self.server_role = defines["ST_ROLE_SERVER"]

    def _disambiguate(self, e: Any, ts: float) -> str | None:
        """Several pods claim the endpoint (each lab pod's 127.0.0.1:8080) and the kernel's tie-break
        (the current task's pod) found none: the claimant that is stopping, else, for a port that
        refused, the claimant whose listener on it closed last before the event."""
        port = e.sport
        owners = self.reg.claimants(bytes(e.saddr), e.sport)
        if not owners:
            port = e.dport
            owners = self.reg.claimants(bytes(e.daddr), e.dport)
        armed = owners & self.armed_pods()
        if len(armed) == 1:
            return self.reg.pod_uid(next(iter(armed)))
        closed = []
        for pidx in armed or owners:
            uid = self.reg.pod_uid(pidx)
            at = self.listener_closed.get((uid, port))
            if at is not None and at <= ts:
                closed.append((at, uid))
        return max(closed)[1] if closed else None

    def _task(self, pid: int, cidx: int) -> tuple[str | None, str | None, int | None]:
        """(pod_uid, container_id, nspid) of a process, from the kernel's index or /proc."""
        if cidx:
            ref = self.reg.container(cidx)
            info = self.reg.note_task(pid, cidx)
            return (ref.pod_uid, ref.container_id, info.nspid if ref and ref.pod_uid else None) if ref else (None, None, None)
        if self.resolve_unknown or pid:
            # not in the kernel's maps (a container younger than the last scan): /proc, cached
            info = self.reg.resolve_pid(pid)
            if info and info.cidx:
                ref = self.reg.container(info.cidx)
                return ref.pod_uid, ref.container_id, info.nspid
        return None, None, None

    def decode(self, e: Any, cidx: int | None = None) -> dict[str, Any]:
        """cidx overrides e.cidx when user space placed a process the kernel could not."""
        kind = self.kinds.get(e.kind)
        if kind is None:
            raise ValueError(f"unknown event kind {e.kind}")
        ts = e.ts_ns / 1e9 + self.offset
        common: dict[str, Any] = {"ts": ts, "kind": kind, "pid": e.pid, "tid": e.tid, "comm": _str(e.comm)}
        if kind in schema.TCP_KINDS:
            return self._tcp(kind, ts, e, common)
        pod_uid, cid, nspid = self._task(e.pid, e.cidx if cidx is None else cidx)
        if e.nspid and pod_uid:
            nspid = e.nspid                       # from the kernel, right when it happened
            info = self.reg.tasks.get(e.pid)
            if info is not None and info.nspid is None:
                info.nspid = nspid
        if pod_uid is not None:
            _opt(common, pod_uid=pod_uid, container_id=cid, nspid=nspid)
        if kind == schema.SIGNAL_GENERATE:
            t_pod, t_cid, t_nspid = self._task(e.target_pid, e.target_cidx)
            result = schema.GENERATE_RESULTS[e.result] if 0 <= e.result < len(schema.GENERATE_RESULTS) else str(e.result)
            common.update(sig=schema.signal_name(e.sig), code=e.code,
                          target_pid=e.target_pid, target_comm=_str(e.target_comm))
            if t_pod is not None:
                _opt(common, target_pod_uid=t_pod, target_container_id=t_cid, target_nspid=t_nspid)
            common["result"] = result
        elif kind == schema.SIGNAL_DELIVER:
            common.update(sig=schema.signal_name(e.sig), code=e.code, handler=self.handlers.get(e.handler, "handler"))
        elif kind == schema.PROCESS_EXEC:
            ppid = e.ppid or None
            if ppid is None:
                info = self.reg.tasks.get(e.pid)
                ppid = info.ppid if info else None
            common["filename"] = _str(e.filename)
            _opt(common, ppid=ppid)
        else:    # process_exit
            _opt(common, exit_code=e.exit_code if e.exit_code >= 0 and not e.exit_signal else None,
                 exit_signal=schema.signal_name(e.exit_signal) if e.exit_signal else None)
        return common

    def _tcp(self, kind: str, ts: float, e: Any, common: dict[str, Any]) -> dict[str, Any]:
        # the socket's pod (by endpoint), not the current task's: TCP runs in softirq context
        pod_uid = self.reg.pod_uid(e.pidx) if e.pidx and e.pidx != AMBIGUOUS else None
        if e.pidx == AMBIGUOUS:
            pod_uid = self._disambiguate(e, ts)
        cid = None
        if e.cidx:
            ref = self.reg.container(e.cidx)
            cid = ref.container_id if ref and ref.pod_uid == pod_uid else None
        fields = common
        _opt(fields, pod_uid=pod_uid, container_id=cid)
        fields.update(saddr=format_addr(bytes(e.saddr)), sport=e.sport, daddr=format_addr(bytes(e.daddr)), dport=e.dport)
        if e.skaddr:
            fields["sock"] = f"{e.skaddr:#x}"
        if kind == schema.TCP_STATE:
            if e.old_state == self.listen and e.new_state == self.close and pod_uid is not None:
                self.listener_closed[(pod_uid, e.sport)] = ts
                if len(self.listener_closed) > MAX_LISTENER_CLOSES:
                    # an agent runs for weeks: keep the last hour's closes (pods stopping now)
                    self.listener_closed = {k: t for k, t in self.listener_closed.items() if t > ts - 3600}
            fields.update(old_state=self.tcp_states.get(e.old_state, str(e.old_state)),
                          new_state=self.tcp_states.get(e.new_state, str(e.new_state)))
        elif kind == schema.TCP_RESET_SENT:
            # state of the socket that sent it (none: the kernel answered a packet for no socket)
            _opt(fields, old_state=self.tcp_states.get(e.old_state) if e.old_state else None,
                 reason=self.reset_reasons.get(e.reason, str(e.reason)) if self.reset_reasons else None)
        return fields

    def close_counts(self, key: Any, counted: int) -> dict[str, Any] | None:
        """A bucket of the kernel's counted closes (struct st_close_key) as a tcp_close_counts event;
        None when its pod is forgotten already."""
        pod_uid = self.reg.pod_uid(key.pidx) if key.pidx != AMBIGUOUS else None
        if pod_uid is None:
            return None
        port = "sport" if key.role == self.server_role else "dport"
        return {"ts": key.bucket * self.bucket_s + self.offset, "kind": schema.TCP_CLOSE_COUNTS, "pod_uid": pod_uid,
                port: key.port, "old_state": "ESTABLISHED",
                "new_state": self.tcp_states.get(key.new_state, str(key.new_state)), "count": counted}

    def probe_name(self, index: int) -> str:
        return self.probes.get(index, f"probe{index}")

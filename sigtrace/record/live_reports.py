"""Live reports while `sigtrace record` runs: a pod's report as soon as all its containers exited.

Part of the recorder (sigtrace.record): it decides when a pod's report is due, builds it with the
report stage (sigtrace.report) and writes and prints it with the renderers (sigtrace.render).

The recorder calls feed() for every event it writes, so feed() only files the event under its pod;
the report itself (pandas) is built once per pod, after its last container's PID 1 exited and the
sockets closed by those exits had time to show up (SETTLE_S).

Bounded, because the agent runs for weeks on a node whose pods mostly never stop: a running pod
holds only what its future report needs (its live processes' execs, its lifecycle facts, its recent
process and signal events; exec probes come and go every second), TCP events are held as encoded
lines with a cap per pod and in total (a rollout stops many pods at once), and the number of pods
followed is capped. Whatever is cut is counted and the report says so.
"""
from __future__ import annotations

import json
import re
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

import orjson

from ..events import schema as S
from ..events.writer import META_FILE, atomic_file

REPORTS_DIR = "reports"
_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SETTLE_S = 0.5      # sockets are closed in do_exit after sched_process_exit: wait for their events
# A stopping pod under load streams TCP events by the ten thousand per second: keep its latest ones.
# ~300 bytes each as encoded lines: 40k per pod, 120k in all ~ 36 MB held; building the report of a
# pod at the cap peaks ~160 MB (a 100k-event report peaked at 389 MB, docs/benchmarks.md), which
# keeps the agent under its 512Mi limit at the moment a report matters.
MAX_TCP_EVENTS_PER_POD = 40_000
MAX_TCP_EVENTS_TOTAL = 120_000
# Process and signal events of a pod that has not stopped: the latest ones (exec probes make two a
# second per container), besides the exec of every process still alive.
MAX_RECENT_EVENTS_PER_POD = 5_000
MAX_LIVE_PROCESSES_PER_POD = 4_096
MAX_SIGNALS_PER_POD = 1_024
MAX_PODS = 2_000                # followed at once (a node runs ~100); the least recently active go first
MAX_DONE = 10_000               # reported pods remembered (their late events are ignored)


class _Pod:
    """What one pod's future report needs, bounded."""
    __slots__ = ("tcp", "tcp_seen", "live", "recent", "signals", "lifecycle", "trimmed", "containers", "exited")

    def __init__(self, max_tcp: int) -> None:
        self.tcp: deque[bytes] = deque(maxlen=max_tcp)
        self.tcp_seen = 0
        self.live: OrderedDict[int, dict] = OrderedDict()     # pid -> exec event, while it runs
        self.recent: deque[dict] = deque(maxlen=MAX_RECENT_EVENTS_PER_POD)
        self.signals: deque[dict] = deque(maxlen=MAX_SIGNALS_PER_POD)   # a long stop's first signal too
        self.lifecycle: dict[str, dict] = {}                  # pod_lifecycle event name -> the latest
        self.trimmed = 0                                      # process/signal events no longer held
        self.containers: set[str] = set()
        self.exited: set[str] = set()

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == S.POD_LIFECYCLE:
            self.lifecycle[str(event.get("event"))] = event
            return
        if len(self.recent) == self.recent.maxlen:
            self.trimmed += 1
        self.recent.append(event)
        pid = event.get("pid")
        if kind == S.PROCESS_EXEC and pid is not None:
            self.live[pid] = event
            self.live.move_to_end(pid)
            if len(self.live) > MAX_LIVE_PROCESSES_PER_POD:
                self.live.popitem(last=False)
        elif kind == S.PROCESS_EXIT and pid is not None:
            exec_ = self.live.pop(pid, None)
            if exec_ is not None:
                # an exec leaves the window when its process exits, not when it started: a preStop
                # that ran while probes came and went keeps its exec next to its exit
                self.recent.append(exec_)
        elif kind in S.SIGNAL_KINDS:
            self.signals.append(event)

    def events(self) -> list[dict]:
        """Lifecycle facts, execs of processes still alive, then the recent events (each once)."""
        seen: set[int] = set()
        out = []
        for e in [*self.lifecycle.values(), *self.live.values(), *self.signals, *self.recent]:
            if id(e) not in seen:
                seen.add(id(e))
                out.append(e)
        return out


class LiveReporter:
    def __init__(self, out_dir: Path, console: Any = None, meta: dict[str, Any] | None = None,
                 settle_s: float = SETTLE_S, max_tcp_events: int = MAX_TCP_EVENTS_PER_POD,
                 max_tcp_total: int = MAX_TCP_EVENTS_TOTAL, max_pods: int = MAX_PODS):
        self.out_dir = Path(out_dir)
        self.console = console
        self.meta = meta
        self.settle_s = settle_s
        self.max_tcp_events = max_tcp_events
        self.max_tcp_total = max_tcp_total
        self.max_pods = max_pods
        self._pods: OrderedDict[str, _Pod] = OrderedDict()   # least recently active first
        self._tcp_total = 0
        self._due: dict[str, tuple[float, float]] = {}      # pod -> (event ts, wall time) when all exited
        self._done: OrderedDict[str, None] = OrderedDict()
        self._last_ts = 0.0
        self._kinds: set[str] = set()
        self.written: deque[Path] = deque(maxlen=MAX_DONE)   # report files, newest last
        self.evicted_pods = 0

    def _pod(self, uid: str) -> _Pod:
        pod = self._pods.get(uid)
        if pod is None:
            pod = self._pods[uid] = _Pod(self.max_tcp_events)
            if len(self._pods) > self.max_pods:
                old_uid, old = self._pods.popitem(last=False)
                self._tcp_total -= len(old.tcp)
                self._due.pop(old_uid, None)
                self.evicted_pods += 1
        else:
            self._pods.move_to_end(uid)
        return pod

    def feed(self, event: dict[str, Any]) -> None:
        ts = event.get("ts") or 0.0
        self._last_ts = max(self._last_ts, ts)
        uid = event.get("pod_uid")
        tuid = event.get("target_pod_uid")
        kind = event.get("kind")
        is_tcp = kind in S.TCP_KINDS
        for u in {uid, tuid} - {None}:
            if u in self._done:
                continue
            pod = self._pod(u)
            if is_tcp:
                full = len(pod.tcp) == pod.tcp.maxlen
                pod.tcp.append(orjson.dumps(event))
                pod.tcp_seen += 1
                if not full:
                    self._tcp_total += 1
                    if self._tcp_total > self.max_tcp_total:
                        self._trim_tcp()
            else:
                pod.add(event)
        if uid and uid not in self._done:
            pod = self._pod(uid)
            cid = event.get("container_id")
            if cid:
                pod.containers.add(cid)
                if kind == S.PROCESS_EXIT and event.get("nspid") == 1:
                    pod.exited.add(cid)
                    if pod.exited >= pod.containers:
                        self._due[uid] = (ts, time.monotonic())
                elif uid in self._due and cid not in pod.exited:
                    self._due.pop(uid)          # a container we did not know yet is still alive
        if tuid and tuid not in self._done and event.get("target_container_id"):
            self._pod(tuid).containers.add(event["target_container_id"])
        if kind not in self._kinds:
            self._kinds.add(kind)
        if self._due:
            self.poll()

    def _trim_tcp(self) -> None:
        """Over the total: the pod holding the most TCP events gives up its oldest tenth."""
        pod = max(self._pods.values(), key=lambda p: len(p.tcp))
        for _ in range(max(1, len(pod.tcp) // 10)):
            pod.tcp.popleft()
            self._tcp_total -= 1

    def held(self) -> dict[str, int]:
        """What is held now (for metrics and tests): pods, TCP events, other events."""
        return {"pods": len(self._pods), "tcp_events": self._tcp_total,
                "other_events": sum(len(p.recent) + len(p.live) + len(p.lifecycle) for p in self._pods.values()),
                "evicted_pods": self.evicted_pods}

    def poll(self) -> None:
        """Report pods whose settle time passed (by event time or wall time); cheap when none is due."""
        now = time.monotonic()
        for uid, (ts, wall) in list(self._due.items()):
            if self._last_ts >= ts + self.settle_s or now >= wall + self.settle_s:
                self._report_safely(uid)

    def close(self) -> None:
        """Report what is due now, without waiting (the recording ends)."""
        for uid in list(self._due):
            self._report_safely(uid)

    def _finish(self, uid: str) -> _Pod | None:
        self._due.pop(uid, None)
        self._done[uid] = None
        if len(self._done) > MAX_DONE:
            self._done.popitem(last=False)
        pod = self._pods.pop(uid, None)
        if pod is not None:
            self._tcp_total -= len(pod.tcp)
        return pod

    def _meta(self) -> dict[str, Any]:
        meta = self.meta
        if meta is None:
            try:
                meta = json.loads((self.out_dir / META_FILE).read_text())
            except (OSError, ValueError):
                meta = {}
        if not meta.get("capabilities"):
            # the stream so far shows what this recorder records (not just this pod's events)
            import pandas as pd
            from ..correlate.build import capabilities_of
            caps, _ = capabilities_of({}, pd.DataFrame({"kind": sorted(k for k in self._kinds if k)}))
            meta = dict(meta, capabilities=sorted(caps))
        return meta

    def _report_safely(self, uid: str) -> None:
        """One pod's report failing must not stop the others' (nor the recording)."""
        try:
            self._report(uid)
        except Exception as exc:          # noqa: BLE001 - reported, and the recording goes on
            self._finish(uid)
            if self.console is not None:
                from ..render.safe import safe_text
                self.console.print(safe_text(f"sigtrace: live report for pod {uid} failed: {exc}; run `sigtrace "
                                             f"report {self.out_dir}` after the recording"), highlight=False)

    def _report(self, uid: str) -> None:
        from ..events.reader import events_frame
        from ..report.build import build_reports
        pod = self._finish(uid)
        if pod is None:
            return
        tcp = [orjson.loads(line) for line in pod.tcp]
        dropped = pod.tcp_seen - len(tcp)
        rows = [{k: v for k, v in e.items() if k in S.DTYPES} for e in [*pod.events(), *tcp]]
        incomplete = []
        if dropped > 0:
            incomplete.append(f"live report: kept the last {len(tcp)} of {pod.tcp_seen} TCP events of this pod; "
                              f"`sigtrace report {self.out_dir}` reads them all")
        if pod.trimmed:
            incomplete.append(f"live report: {pod.trimmed} older process and signal events of this pod (exec "
                              f"probes...) were not kept; `sigtrace report {self.out_dir}` reads them all")
        del pod
        rs = build_reports(events_frame(rows), self._meta(), incomplete)
        pod = rs.pod(uid)
        if pod is None:
            return
        rs.pods = [pod]
        if not _UID.fullmatch(uid):
            # a pod uid names the file: from the kernel it is a cgroup's UUID, but the API, a --pid
            # process or a copied recording can say anything ("../../etc/x")
            raise ValueError(f"pod uid {uid!r} is not a UUID; no file is named after it")
        d = self.out_dir / REPORTS_DIR
        d.mkdir(mode=0o750, parents=True, exist_ok=True)
        if d.is_symlink() or not d.is_dir():
            # planted in a shared output directory: writing there would follow it anywhere
            raise ValueError(f"{d} is not a directory of ours (a symbolic link?); no report is written through it")
        path = d / f"{uid}.json"
        from ..render.json import render_json
        text = render_json(rs)
        # a private new file renamed into place: nothing planted in reports/ is written through
        atomic_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        self.written.append(path)
        if self.console is not None:
            from ..render.text import render_text
            render_text(rs, self.console, brief=True)

"""Live reports while `sigtrace record` runs: a pod's report as soon as all its containers exited.

The recorder calls feed() for every event it writes, so feed() only files the event under its pod
and updates two sets; the report itself (pandas) is built once per pod, after its last container's
PID 1 exited and the sockets closed by those exits had time to show up (SETTLE_S).
"""
from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..events import schema as S
from ..events.writer import META_FILE

REPORTS_DIR = "reports"
SETTLE_S = 0.5      # sockets are closed in do_exit after sched_process_exit: wait for their events
# A stopping pod under load streams TCP events by the ten thousand per second: keep its latest ones
# only, so a long-lived agent's memory stays bounded. Process and signal events (few) are all kept.
MAX_TCP_EVENTS_PER_POD = 200_000


class LiveReporter:
    def __init__(self, out_dir: Path, console: Any = None, meta: dict[str, Any] | None = None,
                 settle_s: float = SETTLE_S, max_tcp_events: int = MAX_TCP_EVENTS_PER_POD):
        self.out_dir = Path(out_dir)
        self.console = console
        self.meta = meta
        self.settle_s = settle_s
        self.max_tcp_events = max_tcp_events
        self._events: dict[str, list[dict]] = {}
        self._tcp: dict[str, deque] = {}
        self._tcp_seen: dict[str, int] = {}
        self._containers: dict[str, set[str]] = {}
        self._exited: dict[str, set[str]] = {}
        self._due: dict[str, tuple[float, float]] = {}      # pod -> (event ts, wall time) when all exited
        self._done: set[str] = set()
        self._last_ts = 0.0
        self._kinds: set[str] = set()
        self.written: list[Path] = []

    def feed(self, event: dict[str, Any]) -> None:
        ts = event.get("ts") or 0.0
        self._last_ts = max(self._last_ts, ts)
        pod = event.get("pod_uid")
        tpod = event.get("target_pod_uid")
        is_tcp = event.get("kind") in S.TCP_KINDS
        for uid in {pod, tpod} - {None}:
            if uid in self._done:
                continue
            if is_tcp:
                q = self._tcp.get(uid)
                if q is None:
                    q = self._tcp[uid] = deque(maxlen=self.max_tcp_events)
                q.append(event)
                self._tcp_seen[uid] = self._tcp_seen.get(uid, 0) + 1
            else:
                self._events.setdefault(uid, []).append(event)
        if pod and pod not in self._done:
            cid = event.get("container_id")
            if cid:
                self._containers.setdefault(pod, set()).add(cid)
                if event.get("kind") == S.PROCESS_EXIT and event.get("nspid") == 1:
                    ex = self._exited.setdefault(pod, set())
                    ex.add(cid)
                    if ex >= self._containers[pod]:
                        self._due[pod] = (ts, time.monotonic())
                elif pod in self._due and cid not in self._exited.get(pod, ()):
                    self._due.pop(pod)          # a container we did not know yet is still alive
        if tpod and tpod not in self._done and event.get("target_container_id"):
            self._containers.setdefault(tpod, set()).add(event["target_container_id"])
        kind = event.get("kind")
        if kind not in self._kinds:
            self._kinds.add(kind)
        if self._due:
            self.poll()

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
            from .build import capabilities_of
            caps, _ = capabilities_of({}, pd.DataFrame({"kind": sorted(k for k in self._kinds if k)}))
            meta = dict(meta, capabilities=sorted(caps))
        return meta

    def _report_safely(self, uid: str) -> None:
        """One pod's report failing must not stop the others' (nor the recording)."""
        try:
            self._report(uid)
        except Exception as exc:          # noqa: BLE001 - reported, and the recording goes on
            self._done.add(uid)
            if self.console is not None:
                self.console.print(f"sigtrace: live report for pod {uid} failed: {exc!r}; "
                                   f"run `sigtrace report {self.out_dir} --pod {uid}` after the recording")

    def _report(self, uid: str) -> None:
        from ..events.reader import events_frame
        from .build import build_reports
        self._due.pop(uid, None)
        self._done.add(uid)
        tcp = self._tcp.pop(uid, ())
        dropped = self._tcp_seen.pop(uid, 0) - len(tcp)
        rows = [{k: v for k, v in e.items() if k in S.DTYPES} for e in [*self._events.pop(uid, []), *tcp]]
        incomplete = [f"live report: kept the last {len(tcp)} of {len(tcp) + dropped} TCP events of this pod; "
                      f"`sigtrace report {self.out_dir}` reads them all"] if dropped > 0 else []
        rs = build_reports(events_frame(rows), self._meta(), incomplete)
        pod = rs.pod(uid)
        if pod is None:
            return
        rs.pods = [pod]
        d = self.out_dir / REPORTS_DIR
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{uid}.json"
        tmp = path.with_suffix(".json.tmp")
        from ..render.json import render_json
        tmp.write_text(render_json(rs), encoding="utf-8")
        os.replace(tmp, path)
        self.written.append(path)
        if self.console is not None:
            from ..render.text import render_text
            render_text(rs, self.console, brief=True)

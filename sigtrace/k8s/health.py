"""What one `sigtrace agent` says about itself: status.json, the report lines on stdout, and the
figures the metrics endpoint serves.

AgentHealth is fed from the recording thread only (WatcherBackend.poll and the session's
on_report hook), so it needs no lock around the backend: bcc maps are read where they are
polled. Other threads (the metrics server) read `snapshot`, a dict replaced whole, never mutated.

status.json lives in the output root (OUTPUT/status.json, beside the recordings), rewritten every
STATUS_EVERY_S through a temporary file and a rename: `kubectl sigtrace status` reads it over
pods/exec (`cat`), the same access `collect` needs, so no port, Service or extra RBAC is involved.
"""
from __future__ import annotations

import logging
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

import orjson

from .. import __version__
from ..events.writer import atomic_file

log = logging.getLogger("sigtrace.k8s")

STATUS_FILE = "status.json"
STATUS_SCHEMA = 1
REPORT_LINE_SCHEMA = 1
STATUS_EVERY_S = 5.0        # status.json rewrite period; the plugin calls an older file stale
REFRESH_EVERY_S = 1.0       # counters for the metrics endpoint
DISK_EVERY_S = 30.0         # a walk of the output root; its size moves slowly
# One log record per line: container runtimes split longer lines into 16 KiB partial records that
# shippers join again (Fluent Bit's cri parser, Vector's kubernetes_logs, promtail's cri stage), but
# a report of a pod with a long timeline could reach megabytes. Past this the timeline is left out
# (it stays in the report file the line names).
REPORT_LINE_MAX = 64 * 1024


def disk_used(root: Path) -> int:
    """Bytes allocated under root (st_blocks, like du), symlinks not followed, unreadable parts skipped."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return total


def report_line(report: dict[str, Any], node: str | None, path: Path | None = None,
                max_bytes: int = REPORT_LINE_MAX) -> bytes:
    """One pod's live report (the JSON of DIR/reports/<uid>.json) as one compact JSON line, without
    the newline. Keys: sigtrace_report (schema), node, pod_uid, pod_name, namespace, verdicts (ids),
    report (the pod's report, plus the recording's incomplete notes and lost events); "truncated"
    and "report_file" when the line had to be cut to max_bytes."""
    pods = report.get("pods") or [{}]
    pod = pods[0] if isinstance(pods[0], dict) else {}
    body = {**pod, "incomplete": report.get("incomplete") or [], "lost_events": report.get("lost_events", 0)}
    line: dict[str, Any] = {
        "sigtrace_report": REPORT_LINE_SCHEMA,
        "node": node,
        "pod_uid": pod.get("pod_uid"),
        "pod_name": pod.get("pod_name"),
        "namespace": pod.get("namespace"),
        "verdicts": [v.get("id") for v in pod.get("verdicts") or [] if isinstance(v, dict)],
        "report": body,
    }
    out = orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY, default=str)
    if len(out) <= max_bytes:
        return out
    cut = ["timeline"]
    line["report"] = {k: v for k, v in body.items() if k != "timeline"}
    out = orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY, default=str)
    if len(out) > max_bytes:
        # still too big (a pod with hundreds of containers): the verdicts' words, not their evidence
        cut = sorted(set(body) - {"pod_uid", "pod_name", "namespace", "stopped", "t0", "incomplete", "lost_events"})
        line["report"] = {k: v for k, v in body.items() if k not in cut}
        line["report"]["verdicts"] = [{k: v.get(k) for k in ("id", "status", "summary", "fix")}
                                      for v in pod.get("verdicts") or [] if isinstance(v, dict)]
        cut.remove("verdicts")
    line["truncated"] = cut
    if path is not None:
        line["report_file"] = str(path)
    return orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY, default=str)


class AgentHealth:
    """One agent's figures; see the module docstring for who calls what."""

    def __init__(self, root: str | Path, node: str | None, recording: str | Path | None = None, *,
                 out: BinaryIO | None = None, status_every_s: float = STATUS_EVERY_S,
                 refresh_every_s: float = REFRESH_EVERY_S, disk_every_s: float = DISK_EVERY_S,
                 clock: Callable[[], float] = time.time):
        self.root = Path(root)
        self.node = node
        self.recording = str(recording) if recording is not None else None
        self.out = out if out is not None else sys.stdout.buffer
        self.status_every_s, self.refresh_every_s, self.disk_every_s = status_every_s, refresh_every_s, disk_every_s
        self.clock = clock
        self.started_at = clock()
        self.events_by_kind: dict[str, int] = {}
        self.events = 0
        self.reports = 0
        self.reports_by_verdict: dict[str, int] = {}
        self.last_report: dict[str, Any] | None = None
        self.recording_now = False
        self.disk_used_bytes: int | None = None
        self.backend_name: str | None = None
        self.lost_by_probe: dict[str, int] = {}
        self.armed_pods: int | None = None          # None: no kernel recorder to ask
        self.kubernetes: dict[str, Any] = {}
        self.api_events_dropped = 0
        self.snapshot: dict[str, Any] = {}
        self._last_refresh = self._last_status = self._last_disk = float("-inf")
        self._rate_mark: tuple[float, int] | None = None
        self._events_per_s = 0.0
        self._stdout_ok = True
        self._status_problem: str | None = None
        self._sweep_temporaries()

    # ---- fed by the recording thread ---------------------------------------------------------
    def count(self, event: dict[str, Any]) -> None:
        kind = event.get("kind") or "unknown"
        self.events_by_kind[kind] = self.events_by_kind.get(kind, 0) + 1
        self.events += 1

    def report_written(self, path: Path) -> None:
        """The session's on_report hook: one line on stdout, and the counters. Never raises: a report
        that cannot be read or printed must not stop the recording."""
        try:
            report = orjson.loads(Path(path).read_bytes())
            line = report_line(report, self.node, Path(path))
        except (OSError, ValueError) as exc:
            log.warning("live report %s unreadable (%s); it stays on disk for `sigtrace report`", path, exc)
            return
        pods = report.get("pods") or [{}]
        pod = pods[0] if isinstance(pods[0], dict) else {}
        verdicts = [v.get("id") for v in pod.get("verdicts") or [] if isinstance(v, dict)]
        self.reports += 1
        for v in verdicts or ["none"]:
            self.reports_by_verdict[v] = self.reports_by_verdict.get(v, 0) + 1
        self.last_report = {"at": self.clock(), "pod_uid": pod.get("pod_uid"), "pod_name": pod.get("pod_name"),
                            "namespace": pod.get("namespace"), "verdicts": verdicts}
        if self._stdout_ok:
            try:
                self.out.write(line + b"\n")
                self.out.flush()
            except (OSError, ValueError) as exc:
                # stdout closed (BrokenPipe) or gone: the reports stay on disk; say so once
                self._stdout_ok = False
                log.warning("stdout unwritable (%s); report lines stop, reports stay in %s", exc, path.parent)
        self._publish()

    def tick(self, backend: Any, force: bool = False) -> None:
        """Called at every poll of the recording loop; refreshes what is due."""
        now = time.monotonic()
        if not force and now - self._last_refresh < self.refresh_every_s:
            return
        self._last_refresh = now
        if force or now - self._last_disk >= self.disk_every_s:
            self._last_disk = now
            self.disk_used_bytes = disk_used(self.root)
        self.backend_name = getattr(backend, "name", None)
        self.lost_by_probe = dict(backend.lost())
        self.armed_pods = backend.armed_pods()
        self.kubernetes = backend.kubernetes_summary()
        self.api_events_dropped = backend.dropped
        if force or now - self._last_status >= self.status_every_s:
            self._last_status = now
            if self._rate_mark is not None and now > self._rate_mark[0]:
                self._events_per_s = (self.events - self._rate_mark[1]) / (now - self._rate_mark[0])
            self._rate_mark = (now, self.events)
            self._publish()
            self.write_status()
        else:
            self._publish()

    def started(self) -> None:
        self.recording_now = True

    def stopped(self, backend: Any) -> None:
        """The recording ended: a last status.json that says so."""
        self.recording_now = False
        try:
            self.tick(backend, force=True)
        except Exception as exc:  # noqa: BLE001 - the backend may be half closed; the status is a courtesy
            log.warning("final status.json not written (%s)", exc)

    # ---- read by others ----------------------------------------------------------------------
    def _publish(self) -> None:
        lost = self.lost_by_probe
        self.snapshot = {
            "sigtrace_status": STATUS_SCHEMA,
            "node": self.node,
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "written_at": self.clock(),
            "every_s": self.status_every_s,
            "recording": self.recording_now,
            "recording_dir": self.recording,
            "backend": self.backend_name,
            "armed_pods": self.armed_pods,
            "events": self.events,
            "events_per_s": round(self._events_per_s, 2),
            "events_by_kind": dict(self.events_by_kind),
            "lost_events": sum(lost.values()),
            "lost_by_probe": dict(lost),
            "api_events_dropped": self.api_events_dropped,
            "disk_root": str(self.root),
            "disk_used_bytes": self.disk_used_bytes,
            "reports": self.reports,
            "reports_by_verdict": dict(self.reports_by_verdict),
            "last_report": self.last_report,
            "kubernetes": self.kubernetes,
        }

    def write_status(self) -> None:
        try:
            data = orjson.dumps(self.snapshot, option=orjson.OPT_INDENT_2) + b"\n"
            atomic_file(self.root / STATUS_FILE, lambda tmp: tmp.write_bytes(data))
            if self._status_problem:
                log.warning("%s written again", STATUS_FILE)
                self._status_problem = None
        except OSError as exc:
            line = f"cannot write {self.root / STATUS_FILE} ({exc.strerror}); `kubectl sigtrace status` shows no health"
            if line != self._status_problem:
                self._status_problem = line
                log.warning("%s", line)

    def _sweep_temporaries(self) -> None:
        """Temporary status files a killed agent left behind (ours only: regular files, our prefix)."""
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return
        for e in entries:
            if e.name.startswith(f".{STATUS_FILE}-") and e.name.endswith(".tmp") and e.is_file(follow_symlinks=False):
                try:
                    os.unlink(e.path)
                except OSError:
                    pass

"""Merge the API watcher's events into a record session's stream.

WatcherBackend wraps the kernel backend (or none, when it cannot run) and is what the
RecordSession drives: the watcher thread only puts events on a queue; poll() hands them to
the session's sink from the session's own thread, after the output file is open, so no
event is dropped at start and the writer is never raced. meta() adds the watcher's state
("kubernetes" in meta.json): API problems and the pods that lack container IDs, which
reports show as missing API data.

The queue is bounded (MAX_QUEUED): a recording loop stalled for long must not turn API events
into unbounded memory; what does not fit is counted (meta.json kubernetes.api_events_dropped).
With an AgentHealth, every event is counted by kind and health.tick() runs at each poll, in the
recording thread (where the kernel backend's maps may be read).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..backends import EventSink


MAX_QUEUED = 100_000        # API events waiting for the recording loop (a few per pod change)

log = logging.getLogger("sigtrace.k8s")


class WatcherBackend:
    def __init__(self, inner: Any | None, ready_file: str | None = None, health: Any | None = None,
                 max_queued: int = MAX_QUEUED):
        self._note: str | None = None
        self.set_recorder(inner)
        self.queue: "queue.Queue[dict[str, Any]]" = queue.Queue(maxsize=max_queued)
        self._summary: Callable[[], dict[str, Any]] | None = None
        self._sink: EventSink | None = None
        self._ready_file = ready_file
        self.health = health
        self.api_events = 0
        self.dropped = 0
        self._drop_lock = threading.Lock()

    def follow(self, summary: Callable[[], dict[str, Any]]) -> None:
        """From now on meta.json's "kubernetes" carries summary() (the watcher's state)."""
        self._summary = summary

    def set_recorder(self, inner: Any | None, note: str | None = None) -> None:
        """Drive this kernel recorder, or none (API events only); note says why, in meta.json
        kubernetes.note (fallback headers, or the recorder's failure)."""
        self.inner = inner
        self.name = inner.name if inner is not None else "kubernetes-api-only"
        if note:
            self._note = note

    def put(self, event: dict[str, Any]) -> None:
        """The watcher's sink: thread-safe, never blocks."""
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            with self._drop_lock:
                self.dropped += 1
                first = self.dropped == 1
            if first:
                log.warning("the recording loop is not taking API events (%d queued); dropping and counting "
                            "them (meta.json kubernetes.api_events_dropped)", self.queue.maxsize)

    def open(self, sink: EventSink) -> None:
        if self.health is not None:
            count, inner_sink = self.health.count, sink

            def sink(event: dict[str, Any]) -> None:
                count(event)
                inner_sink(event)
        self._sink = sink
        if self.inner is not None:
            self.inner.open(sink)

    def _drain(self) -> None:
        while True:
            try:
                ev = self.queue.get_nowait()
            except queue.Empty:
                return
            self.api_events += 1
            if ev.get("event") == "pod_deleted" and ev.get("pod_uid") and hasattr(self.inner, "arm_pod"):
                # the deletion starts the stop (preStop hooks run before any signal): stream the pod's
                # TCP detail from now on, not only from its first stop signal
                self.inner.arm_pod(ev["pod_uid"])
            self._sink(ev)

    def poll(self, timeout_s: float) -> None:
        if self._ready_file:
            # the session opened its files before its first poll: the agent is recording
            Path(self._ready_file).write_text(f"{time.time()}\n")
            self._ready_file = None
        if self.health is not None and not self.health.recording_now:
            self.health.started()
        self._drain()
        if self.inner is not None:
            self.inner.poll(timeout_s)
        else:
            time.sleep(timeout_s)
        self._drain()
        if self.health is not None:
            self.health.tick(self)

    def close(self) -> None:
        try:
            if self.inner is not None:
                self.inner.close()
        finally:
            if self._sink is not None:
                self._drain()

    def lost(self) -> dict[str, int]:
        return self.inner.lost() if self.inner is not None else {}

    def armed_pods(self) -> int | None:
        """Pods the kernel recorder is streaming TCP detail for (stopping now); None without one."""
        count = getattr(self.inner, "armed_pod_count", None)
        return count() if count is not None else None

    def kubernetes_summary(self) -> dict[str, Any]:
        k8s = dict(self._summary()) if self._summary else {}
        k8s["api_events"] = self.api_events
        k8s["api_events_dropped"] = self.dropped
        return k8s

    def meta(self) -> dict[str, Any]:
        meta = dict(self.inner.meta()) if self.inner is not None else {"capabilities": []}
        k8s = self.kubernetes_summary()
        if self._note:
            k8s["note"] = self._note
        meta["kubernetes"] = k8s
        return meta

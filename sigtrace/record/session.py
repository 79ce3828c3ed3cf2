"""RecordSession: run a backend into DIR/events.jsonl + DIR/meta.json until a duration, a
threading.Event or SIGINT/SIGTERM; show progress; feed live reports when available.

The events go to rotating segments within an optional disk budget (max_disk/max_age_s over
disk_root: the agent's root with all its runs, or DIR itself); a full disk or a removed output
directory costs events (counted as lost, shown live, in meta.json and in reports), never the
recording (sigtrace.events.writer).

Stopping is a flag set by the signal handler and a poll with a timeout (never KeyboardInterrupt
inside a ctypes callback), so every stop path flushes and writes meta.json's end time.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..backends import Backend
from .live_reports import LiveReporter
from ..events.segments import SEGMENT_AGE_S, SEGMENT_BYTES, DiskBudget, OutputDir
from ..events.writer import EventWriter, base_meta, prepare_output_dir
from .live import LiveView, Rates

POLL_S = 0.2
META_EVERY_S = 5.0
# A recorder that will die with a traced process (meta.json dies_with) rewrites meta.json this often:
# alive_at (+ alive_every_s) then bounds when it was killed, which the report needs.
DOOMED_META_EVERY_S = 0.25
VIEW_EVERY_S = 0.5


@dataclass
class RecordResult:
    out_dir: Path
    events: int
    lost_events: int
    lost_by_probe: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    stopped_by: str = ""


class RecordSession:
    """One recording. Thread-safe add_event() lets other threads (the Kubernetes watcher, the lab
    driver) put pod_lifecycle events into the same stream."""

    def __init__(self, backend: Backend, out_dir: str | Path, *, console: Any = None, live: bool = True,
                 live_reports: bool = True, poll_s: float = POLL_S, extra_meta: dict[str, Any] | None = None,
                 on_report: Callable[[Path], None] | None = None,
                 max_disk: int | None = None, max_age_s: float | None = None, disk_root: str | Path | None = None,
                 segment_bytes: int = SEGMENT_BYTES, segment_age_s: float = SEGMENT_AGE_S,
                 compact: bool = True, clock: Callable[[], float] = time.time):
        self.backend = backend
        self.out_dir = prepare_output_dir(out_dir)
        self.console = console
        self.poll_s = poll_s
        self.view = LiveView(console, str(self.out_dir), enabled=live)
        self.rates = Rates()
        self.extra_meta = dict(extra_meta or {})
        self.live_reports = live_reports
        self.reporter: Any = None
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._writer: EventWriter | None = None
        self._meta: dict[str, Any] = {}
        self.events = 0
        self.stopped_by = ""
        self._pending: list[dict[str, Any]] = []
        self._closed = False
        # disk: caps over disk_root (default: this recording's directory), segment rotation
        self.max_disk, self.max_age_s = max_disk, max_age_s
        self.disk_root = Path(disk_root) if disk_root is not None else self.out_dir
        self.segment_bytes, self.segment_age_s, self.clock = segment_bytes, segment_age_s, clock
        self.compact = compact          # closed segments become columnar (sigtrace.events.compactor)
        self._outdir: OutputDir | None = None
        self._meta_writer: EventWriter | None = None     # still writes meta.json after the events stop
        self.on_report = on_report      # called with each new live report file (the agent prints it)
        self._last_report: Any = None

    # -- events
    def add_event(self, event: dict[str, Any]) -> None:
        """Append one schema event (from the backend or any thread)."""
        with self._lock:
            if self._writer is None:
                if not self._closed:
                    self._pending.append(event)   # before run() opened the file: kept, not lost
                return
            self._writer.write(event)
            self.events += 1
            self.rates.add(event)
            if self.reporter is not None:
                try:
                    self.reporter.feed(event)
                except Exception as exc:    # a live report bug must never lose the recording
                    self._drop_reporter(exc)

    def request_stop(self, reason: str = "requested") -> None:
        self.stopped_by = self.stopped_by or reason
        self.stop_event.set()

    # -- running
    def run(self, *, duration: float | None = None, stop: threading.Event | None = None,
            handle_signals: bool | None = None) -> RecordResult:
        """Record until `duration` seconds, `stop` is set, request_stop(), or SIGINT/SIGTERM
        (handlers installed only in the main thread unless handle_signals says otherwise)."""
        if handle_signals is None:
            handle_signals = threading.current_thread() is threading.main_thread()
        old_handlers = self._install_signals() if handle_signals else {}
        started = time.monotonic()
        opened = False
        try:
            self.backend.open(self.add_event)
            opened = True
            # the backend only calls the sink from poll(): nothing is missed by opening the file now
            self._meta = base_meta(self.backend.name)
            self._meta.update(self.extra_meta)
            writer = self._open_writer()
            with self._lock:
                self._writer = writer
            pending, self._pending = self._pending, []
            for event in pending:
                self.add_event(event)
            if self.live_reports:
                self.reporter = LiveReporter(self.out_dir, self.console)
            self._write_meta()          # end=None until we stop: a killed recorder is recognisable
            meta_every = DOOMED_META_EVERY_S if self._meta.get("dies_with") else META_EVERY_S
            # the next sign of life is due by then (a poll may run late by one poll_s)
            self._meta["alive_every_s"] = meta_every + self.poll_s
            self.view.start()
            last_meta = last_view = time.monotonic()
            while not self.stop_event.is_set() and not (stop is not None and stop.is_set()):
                elapsed = time.monotonic() - started
                if duration is not None and elapsed >= duration:
                    self.stopped_by = self.stopped_by or "duration"
                    break
                timeout = self.poll_s if duration is None else max(0.0, min(self.poll_s, duration - elapsed))
                self.backend.poll(timeout)
                self._flush()                           # the batch is durable before the next one
                now = time.monotonic()
                if now - last_view >= VIEW_EVERY_S:     # poll returns per batch: keep its loop cheap
                    last_view = now
                    self.view.update(elapsed, self.events, self.rates, self._lost())
                    self._poll_reporter()
                if now - last_meta >= meta_every:
                    last_meta = last_view = time.monotonic()
                    self._write_meta()
            if stop is not None and stop.is_set():
                self.stopped_by = self.stopped_by or "stop event"
        finally:
            self.view.stop()
            try:
                if opened:
                    self.backend.close()
            finally:
                with self._lock:
                    writer, self._writer = self._writer, None
                    self._closed = True
                if writer is not None:
                    writer.close()
                if self.reporter is not None:
                    try:
                        self.reporter.close()
                    except Exception as exc:
                        self._drop_reporter(exc)
                    self._hand_over_reports()
                if opened and self._meta:
                    self._meta["end"] = time.time()
                    self._write_meta()
                if self._outdir is not None:
                    self._outdir.close()
                for sig, handler in old_handlers.items():
                    signal.signal(sig, handler)
        lost = self._lost()
        return RecordResult(self.out_dir, self._written(), sum(lost.values()), lost,
                            time.monotonic() - started, self.stopped_by)

    def _open_writer(self) -> EventWriter:
        self._outdir = OutputDir(self.out_dir)
        budget = None
        if self.max_disk is not None or self.max_age_s is not None:
            budget = DiskBudget(self.disk_root, self.out_dir, max_bytes=self.max_disk, max_age_s=self.max_age_s,
                                clock=self.clock, warn=self._warn)
        writer = EventWriter(self._outdir, segment_bytes=self.segment_bytes, segment_age_s=self.segment_age_s,
                             budget=budget, clock=self.clock, warn=self._warn, compact=self.compact)
        if self.compact and self.disk_root != self.out_dir:
            writer.compact_earlier(self.disk_root)        # an agent's restart: its predecessor's leftovers
        self._meta_writer = writer
        return writer

    def _lost(self) -> dict[str, int]:
        """Lost events by probe (ring buffers) and by output cause (disk_full, write_failed)."""
        lost = dict(self.backend.lost())
        if self._meta_writer is not None:
            for cause, n in self._meta_writer.lost().items():
                if n:
                    lost[cause] = lost.get(cause, 0) + n
        return lost

    def _written(self) -> int:
        """Events handed to the writer minus those it could not write."""
        w = self._meta_writer
        return self.events - (sum(w.lost().values()) if w is not None else 0)

    def _warn(self, message: str) -> None:
        """One line on stderr (above the live table when there is one)."""
        line = f"sigtrace: warning: {message}"
        if self.console is not None:
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def _flush(self) -> None:
        writer = self._writer
        if writer is not None:
            writer.flush()

    def _drop_reporter(self, exc: Exception) -> None:
        self.reporter = None
        print(f"sigtrace: warning: live reports stopped ({type(exc).__name__}: {exc}); the recording goes on, "
              f"run 'sigtrace report {self.out_dir}' afterwards", file=sys.stderr)

    def _poll_reporter(self) -> None:
        """Live reports are due some time after a pod's last exit, also when no event follows."""
        with self._lock:
            if self.reporter is not None:
                try:
                    self.reporter.poll()
                except Exception as exc:
                    self._drop_reporter(exc)
        self._hand_over_reports()

    def _hand_over_reports(self) -> None:
        """New entries of reporter.written to on_report, oldest first; found by walking back to the
        last one handed over, so a bounded (trimmed) written list works too."""
        reporter = self.reporter
        if self.on_report is None or reporter is None:
            return
        new = []
        for path in reversed(reporter.written):
            if path is self._last_report:
                break
            new.append(path)
        if new:
            self._last_report = new[0]
        for path in reversed(new):
            try:
                self.on_report(path)
            except Exception as exc:    # the recording goes on; the report stays on disk
                print(f"sigtrace: warning: report hook failed for {path} ({type(exc).__name__}: {exc})",
                      file=sys.stderr)

    def _write_meta(self) -> None:
        lost = self._lost()
        self._meta.update(self.backend.meta())
        writer = self._meta_writer
        if writer is not None:
            self._meta.update(writer.meta())         # output (segments, write failures), disk, pruned
        self._meta["lost_events"] = sum(lost.values())
        self._meta["events"] = self._written()
        self._meta["alive_at"] = time.time()
        if writer is not None:
            writer.write_meta(self._meta)            # a failure is reported once; the old meta.json stays

    def _install_signals(self) -> dict[int, Any]:
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda signum, frame: self.request_stop(signal.Signals(signum).name))
        return old

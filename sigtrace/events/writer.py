"""Write a recording: DIR/events.jsonl (appended) and DIR/meta.json.

Durability: an event is safe from the writer's death once it is in the kernel's page cache (a
write(2) done), not in our buffer. A recorder in a `kubectl debug --target` container is
SIGKILLed by the kernel together with the PID 1 it watches, the very moment it records, so:
- the rare events that decide verdicts (signals, execs, exits, lifecycle facts) are written out
  as soon as they are encoded, together with whatever is buffered before them;
- the bulk (TCP events, up to tens of thousands a second) is written at the end of each backend
  batch (RecordSession calls flush() after every poll), so a batch costs one write(2), not one per
  event; a timer thread flushes every second in case a backend never returns.
The cost is measured in `make bench` (capacity) and docs/benchmarks.md."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from ..errors import OutputError
from . import schema

EVENTS_FILE = "events.jsonl"
META_FILE = "meta.json"
FLUSH_INTERVAL_S = 1.0
# Kinds written out at once (see the module docstring); every other kind waits for the batch's end.
DURABLE_AT_ONCE = frozenset({schema.SIGNAL_GENERATE, schema.SIGNAL_DELIVER, schema.PROCESS_EXEC,
                             schema.PROCESS_EXIT, schema.POD_LIFECYCLE})


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create DIR if needed and prove it is writable before any probe is loaded."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".sigtrace-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to output dir {out}: {exc.strerror}; choose a writable --output") from exc
    return out


class EventWriter:
    """Appends events as JSON lines (UTF-8), durable as the module docstring says.

    Only non-null fields are written: readers fill the rest from the schema.
    """

    def __init__(self, out_dir: Path, flush_interval: float = FLUSH_INTERVAL_S,
                 at_once: frozenset[str] = DURABLE_AT_ONCE):
        self.path = Path(out_dir) / EVENTS_FILE
        self._fh = open(self.path, "ab", buffering=1 << 16)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._at_once = at_once
        self._unflushed = 0
        self.count = 0
        self.flushes = 0                      # write(2) batches, for the bench
        self._flusher = threading.Thread(target=self._flush_loop, args=(flush_interval,), daemon=True)
        self._flusher.start()

    def write(self, event: dict[str, Any]) -> None:
        # the recorder's hot path: orjson encodes several times faster than json.dumps
        if None in event.values():
            event = {k: v for k, v in event.items() if v is not None}
        line = orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            self._fh.write(line)
            self.count += 1
            self._unflushed += 1
            if event.get("kind") in self._at_once:
                self._flush_locked()

    def flush(self) -> None:
        """Hand every buffered event to the kernel (one write(2)); nothing to do when none is pending."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._unflushed and not self._fh.closed:
            self._fh.flush()
            self._unflushed = 0
            self.flushes += 1

    def _flush_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    """Write meta.json atomically (rename), so a reader never sees half a file."""
    path = Path(out_dir) / META_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def base_meta(backend: str) -> dict[str, Any]:
    """Fields every backend's meta.json starts with."""
    u = os.uname()
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "node": os.environ.get("NODE_NAME") or socket.gethostname(),
        "kernel": u.release,
        "backend": backend,
        "start": time.time(),
        "end": None,
        "lost_events": 0,
        "capabilities": [],
    }

"""Write a recording: DIR/events.jsonl (appended, flushed at least every second) and DIR/meta.json."""
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

EVENTS_FILE = "events.jsonl"
META_FILE = "meta.json"
FLUSH_INTERVAL_S = 1.0


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
    """Appends events as JSON lines (UTF-8); a timer thread flushes so that a SIGKILLed recorder loses at most ~1 s.

    Only non-null fields are written: readers fill the rest from the schema.
    """

    def __init__(self, out_dir: Path, flush_interval: float = FLUSH_INTERVAL_S):
        self.path = Path(out_dir) / EVENTS_FILE
        self._fh = open(self.path, "ab", buffering=1 << 16)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.count = 0
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

    def flush(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()

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
    from .schema import SCHEMA_VERSION
    u = os.uname()
    return {
        "schema_version": SCHEMA_VERSION,
        "node": os.environ.get("NODE_NAME") or socket.gethostname(),
        "kernel": u.release,
        "backend": backend,
        "start": time.time(),
        "end": None,
        "lost_events": 0,
        "capabilities": [],
    }

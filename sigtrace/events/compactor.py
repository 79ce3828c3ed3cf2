"""The writer's side of compaction: closed segments become columnar (sigtrace.events.columnar).

The writer calls closed() when it rotates (its hot path: only a queue append) and tick() from its
timer thread, which runs one child process at a time (sigtrace.events.compact) and collects what it
did for meta.json. A child, not a thread: pyarrow's memory and CPU stay out of the recorder, the
child runs at low priority, and a crash or the OOM killer takes only the child (the segment then
stays JSONL, which every reader reads).
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

EXIT_NO_PYARROW = 3
MAX_PENDING = 16            # closed segments waiting; past that the oldest waiting one stays JSONL
CHILD_TIMEOUT_S = 600.0     # a child still busy after this is ended (its unnamed file goes with it)
CLOSE_WAIT_S = 2.0          # close() waits this long for a running child, so that meta.json has it


@dataclass
class CompactionStats:
    """meta.json `output.compaction`: what became columnar, and what stayed JSONL and why."""
    segments: int = 0
    events: int = 0
    json_bytes: int = 0
    columnar_bytes: int = 0
    kept_jsonl: int = 0
    kept_why: dict[str, int] = field(default_factory=dict)
    pending: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Compactor:
    """Compacts the segments a writer closes, one child process at a time (see the module docstring).

    closed() is called from the writer's hot path (rotation) and only queues; tick() runs from its
    timer thread: it collects a finished child and starts the next; meta() from any thread. The
    queue and the counts are under one lock, never held while a child is waited for. dir_fd() gives
    the directory's descriptor of the moment (the writer re-opens a directory that was removed and
    re-created).
    """

    def __init__(self, dir_fd: Callable[[], int], warn: Callable[[str], None],
                 clock: Callable[[], float] | None = None) -> None:
        self._dir_fd, self._warn, self._clock = dir_fd, warn, clock or time.monotonic
        self._queue: deque[str] = deque()
        self._child: subprocess.Popen | None = None
        self._child_name = ""
        self._started = 0.0
        self._unavailable = False
        self._lock = threading.Lock()
        self.stats = CompactionStats()

    def closed(self, name: str) -> None:
        """The writer closed segment `name` for good: compact it when its turn comes."""
        with self._lock:
            if self._unavailable:
                self._keep_locked(name, "pyarrow is not installed")
                return
            if len(self._queue) >= MAX_PENDING:
                self._keep_locked(self._queue.popleft(), "too many segments waiting")
            self._queue.append(name)

    def tick(self) -> None:
        """Collect a finished child; start the next one when none runs. One caller at a time (the
        writer's timer thread, or close())."""
        if self._child is not None:
            if self._child.poll() is None:
                if self._clock() - self._started < CHILD_TIMEOUT_S:
                    return
                self._child.kill()
                self._child.wait()
            self._collect()
        while self._child is None:
            with self._lock:
                if not self._queue or self._unavailable:
                    return
                name = self._queue.popleft()
            self._start(name)

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Stop starting children; wait a little for a running one (it finishes on its own anyway:
        it holds its own descriptors, and the segments still waiting stay JSONL)."""
        if self._child is not None:
            try:
                self._child.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                # it finishes on its own (meta.json counts it as pending); its pipes are not ours to hold
                self._child.stdout.close()
                return
            self._collect()

    def meta(self) -> dict[str, Any]:
        with self._lock:
            self.stats.pending = len(self._queue) + (self._child is not None)
            return self.stats.as_dict()       # (asdict copies kept_why)

    def _start(self, name: str) -> None:
        fd = self._dir_fd()
        try:
            # -P and cwd /: nothing in the recorder's working directory is imported by the child;
            # its own session: a Ctrl-C meant for the recorder does not cut a compaction short
            self._child = subprocess.Popen(
                [sys.executable, "-P", "-m", "sigtrace.events.compact", str(fd), name], pass_fds=(fd,),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/",
                start_new_session=True)
        except OSError as exc:
            self._keep(name, f"cannot start the compaction ({exc.strerror})")
            return
        self._child_name, self._started = name, self._clock()

    def _collect(self) -> None:
        child, name, self._child = self._child, self._child_name, None
        out, _ = child.communicate()
        if child.returncode == EXIT_NO_PYARROW:
            self._warn("closed segments stay JSONL: pyarrow is not installed (it compacts them to columnar files)")
            with self._lock:
                self._unavailable = True
                for waiting in [name, *self._queue]:
                    self._keep_locked(waiting, "pyarrow is not installed")
                self._queue.clear()
            return
        try:
            result = json.loads(out.decode().strip().splitlines()[-1]) if child.returncode == 0 else None
        except (ValueError, IndexError, UnicodeDecodeError):
            result = None
        if not isinstance(result, dict):
            # (its stderr, which may quote the segment, is not kept: tenant text stays out of meta.json)
            how = f"killed by signal {-child.returncode}" if child.returncode < 0 else f"exit status {child.returncode}"
            self._keep(name, f"the compaction failed ({how})")
            return
        if result.get("kept"):
            self._keep(name, str(result["kept"]))
            return
        with self._lock:
            self.stats.segments += 1
            for key in ("events", "json_bytes", "columnar_bytes"):
                setattr(self.stats, key, getattr(self.stats, key) + int(result.get(key) or 0))

    def _keep(self, name: str, why: str) -> None:
        with self._lock:
            self._keep_locked(name, why)

    def _keep_locked(self, name: str, why: str) -> None:
        self.stats.kept_jsonl += 1
        if why not in self.stats.kept_why and len(self.stats.kept_why) >= 8:
            why = "other reasons"
        self.stats.kept_why[why] = self.stats.kept_why.get(why, 0) + 1

"""The writer's side of compaction: closed segments become columnar (sigtrace.events.columnar).

The writer calls closed() when it rotates (its hot path: only a queue append) and tick() from its
timer thread, which runs one child process at a time (sigtrace.events.compact) and collects what it
did for meta.json. A child, not a thread: pyarrow's memory and CPU stay out of the recorder, the
child runs at low priority, and a crash or the OOM killer takes only the child (the segment then
stays JSONL, which every reader reads).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .columnar import is_columnar
from .segments import META_FILE, is_our_meta, read_json_at, list_segments, open_dir, run_dirs

EXIT_NO_PYARROW = 3
MAX_PENDING = 16            # closed segments waiting; past that the oldest waiting one stays JSONL
MAX_EARLIER = 256           # earlier runs' JSONL segments taken at start; the rest are for `sigtrace compact`
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


@dataclass(frozen=True)
class _Waiting:
    name: str
    generation: int = 0          # the writer's directory when it was closed (it may be re-created since)
    run: Path | None = None      # an earlier run's directory; None: the writer's own


def earlier_segments(root: Path, current: Path) -> list[tuple[Path, str]]:
    """The closed JSONL segments of the runs under an agent's root other than `current`: what an
    earlier agent left waiting when it stopped (or recorded with --no-compact). A run's last segment
    only when its meta.json has an end (its recorder stopped; `record --append` writes only there).
    Only the recorder's own runs: directories whose meta.json is a recorder's."""
    out: list[tuple[Path, str]] = []
    for run in run_dirs(root):
        if run == current or run.is_symlink():
            continue
        try:
            fd = open_dir(Path(os.path.realpath(run)), create=False)
        except OSError:
            continue
        try:
            meta = read_json_at(fd, META_FILE)
        finally:
            os.close(fd)
        if not is_our_meta(meta):
            continue
        segments = list_segments(run)
        finished = isinstance(meta.get("end"), (int, float))
        for seq, path in segments:
            if not is_columnar(path) and (finished or seq != segments[-1][0]):
                out.append((run, path.name))
    return out


class Compactor:
    """Compacts the segments a writer closes, one child process at a time (see the module docstring).

    closed() is called from the writer's hot path (rotation) and only queues; tick() runs from its
    timer thread: it collects a finished child and starts the next; meta() from any thread. The
    queue and the counts are under one lock, never held while a child is waited for. dir_fd() gives
    the directory's descriptor of the moment (the writer re-opens a directory that was removed and
    re-created).
    """

    def __init__(self, dir_fd: Callable[[], int], warn: Callable[[str], None],
                 clock: Callable[[], float] | None = None, generation: Callable[[], int] = lambda: 0) -> None:
        self._dir_fd, self._warn, self._clock = dir_fd, warn, clock or time.monotonic
        self._generation = generation
        self._queue: deque[_Waiting] = deque()
        self._earlier: deque[_Waiting] = deque()     # earlier runs': only when the writer's own wait for none
        self._child: subprocess.Popen | None = None
        self._child_item = _Waiting("")
        self._started = 0.0
        self._unavailable = False
        self._lock = threading.Lock()
        self.stats = CompactionStats()
        self.earlier_stats = CompactionStats()

    def closed(self, name: str) -> None:
        """The writer closed segment `name` for good: compact it when its turn comes."""
        item = _Waiting(name, self._generation())
        with self._lock:
            if self._unavailable:
                self._keep_locked(item, "pyarrow is not installed")
                return
            if len(self._queue) >= MAX_PENDING:
                self._keep_locked(self._queue.popleft(), "too many segments waiting")
            self._queue.append(item)

    def earlier(self, segments: list[tuple[Path, str]]) -> None:
        """Closed JSONL segments of earlier runs (earlier_segments): compacted when the writer's own
        queue is empty, counted apart (meta.json `output.compaction.earlier_runs`)."""
        with self._lock:
            for run, name in segments:
                item = _Waiting(name, run=run)
                if self._unavailable:
                    self._keep_locked(item, "pyarrow is not installed")
                elif len(self._earlier) >= MAX_EARLIER:
                    self._keep_locked(item, "too many segments waiting (`sigtrace compact` does the rest)")
                else:
                    self._earlier.append(item)

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
                if self._unavailable or not (self._queue or self._earlier):
                    return
                item = (self._queue or self._earlier).popleft()
            self._start(item)

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
            own_child = self._child is not None and self._child_item.run is None
            self.stats.pending = len(self._queue) + own_child
            out = self.stats.as_dict()       # (asdict copies kept_why)
            if self._earlier or self.earlier_stats != CompactionStats() or (self._child is not None and not own_child):
                self.earlier_stats.pending = len(self._earlier) + (self._child is not None and not own_child)
                out["earlier_runs"] = self.earlier_stats.as_dict()
            return out

    def _start(self, item: _Waiting) -> None:
        if item.run is None:
            if item.generation != self._generation():
                # its name in the removed directory; the re-created one never held it
                self._keep(item, "its directory was removed while recording")
                return
            fd, own = self._dir_fd(), False
        else:
            try:
                fd, own = open_dir(Path(os.path.realpath(item.run)), create=False), True
            except OSError as exc:
                self._keep(item, f"cannot open its directory ({exc.strerror})")
                return
        try:
            # -P and cwd /: nothing in the recorder's working directory is imported by the child;
            # its own session: a Ctrl-C meant for the recorder does not cut a compaction short
            self._child = subprocess.Popen(
                [sys.executable, "-P", "-m", "sigtrace.events.compact", str(fd), item.name], pass_fds=(fd,),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/",
                start_new_session=True)
        except OSError as exc:
            self._keep(item, f"cannot start the compaction ({exc.strerror})")
            return
        finally:
            if own:
                os.close(fd)          # the child holds its own copy
        self._child_item, self._started = item, self._clock()

    def _collect(self) -> None:
        child, item, self._child = self._child, self._child_item, None
        out, _ = child.communicate()
        if child.returncode == EXIT_NO_PYARROW:
            self._warn("closed segments stay JSONL: pyarrow is not installed (it compacts them to columnar files)")
            with self._lock:
                self._unavailable = True
                for waiting in [item, *self._queue, *self._earlier]:
                    self._keep_locked(waiting, "pyarrow is not installed")
                self._queue.clear()
                self._earlier.clear()
            return
        try:
            result = json.loads(out.decode().strip().splitlines()[-1]) if child.returncode == 0 else None
        except (ValueError, IndexError, UnicodeDecodeError):
            result = None
        if not isinstance(result, dict):
            # (its stderr, which may quote the segment, is not kept: tenant text stays out of meta.json)
            how = f"killed by signal {-child.returncode}" if child.returncode < 0 else f"exit status {child.returncode}"
            self._keep(item, f"the compaction failed ({how})")
            return
        if result.get("kept"):
            self._keep(item, str(result["kept"]))
            return
        with self._lock:
            stats = self._stats_of(item)
            stats.segments += 1
            for key in ("events", "json_bytes", "columnar_bytes"):
                setattr(stats, key, getattr(stats, key) + int(result.get(key) or 0))

    def _stats_of(self, item: _Waiting) -> CompactionStats:
        return self.stats if item.run is None else self.earlier_stats

    def _keep(self, item: _Waiting, why: str) -> None:
        with self._lock:
            self._keep_locked(item, why)

    def _keep_locked(self, item: _Waiting, why: str) -> None:
        stats = self._stats_of(item)
        stats.kept_jsonl += 1
        if why not in stats.kept_why and len(stats.kept_why) >= 8:
            why = "other reasons"
        stats.kept_why[why] = stats.kept_why.get(why, 0) + 1

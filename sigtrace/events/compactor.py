"""The writer's side of compaction: closed segments become columnar (sigtrace.events.columnar).

The writer calls closed() when it rotates (its hot path: only a queue append) and tick() from its
timer thread, which runs one child process at a time (sigtrace.events.compact) and collects what it
did for meta.json. A child, not a thread: pyarrow's memory and CPU stay out of the recorder, the
child runs at low priority, and a crash or the OOM killer takes only the child (the segment then
stays JSONL, which every reader reads).

An agent's new run also compacts what the runs before it under its root left as JSONL (a restart
before their turn came): earlier_runs() names the root, and the first tick looks there (the timer
thread, never the start path), newest runs first, at most MAX_EARLIER segments, each run opened
under the root without following a link and checked to be the directory it listed. Never a run's
last segment (`record --append` continues it), never a run recorded with --no-compact. They are
compacted when the writer's own segments wait for none, and counted apart.
"""
from __future__ import annotations

import errno
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
from .segments import DIR_FLAGS, META_FILE, is_our_meta, list_segments, open_dir, read_json_at

EXIT_NO_PYARROW = 3
MAX_PENDING = 16            # closed segments waiting; past that the oldest waiting one stays JSONL
MAX_EARLIER = 256           # earlier runs' JSONL segments taken at a start; the rest: `sigtrace compact`
REMOVED = "removed before its turn (the disk cap)"
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
    generation: int = 0                  # the writer's directory when it was closed (re-created since?)
    run: str | None = None               # an earlier run's directory name under the root; None: the writer's own
    ident: tuple[int, int] | None = None    # that directory's (st_dev, st_ino) when it was listed


def earlier_segments(root_fd: int, current: str, limit: int = MAX_EARLIER) -> tuple[list[_Waiting], int]:
    """The closed JSONL segments that the runs under an agent's root (open as root_fd) other than
    `current` left: newest runs first, at most limit (and how many more there are). Only the
    recorder's own runs (a recorder's meta.json) that were recorded with compaction on, never a
    run's last segment, never through a link. Raises OSError when the root cannot be listed."""
    with os.scandir(root_fd) as it:
        names = [e.name for e in it if e.name != current and e.is_dir(follow_symlinks=False)]
    out: list[_Waiting] = []
    more = 0
    for name in sorted(names, reverse=True):          # agent runs are named <node>-<UTC time>
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=root_fd)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            meta = read_json_at(fd, META_FILE)
            output = meta.get("output") if isinstance(meta.get("output"), dict) else {}
            if not is_our_meta(meta) or not isinstance(output.get("compaction"), dict):
                continue                 # another program's directory, or a run with --no-compact
            segments = list_segments(fd)
        except OSError:
            continue
        finally:
            os.close(fd)
        for seq, path in segments[:-1]:
            if is_columnar(path):
                continue
            if len(out) >= limit:
                more += 1
            else:
                out.append(_Waiting(path.name, run=name, ident=(st.st_dev, st.st_ino)))
    return out, more


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
        self._root: Path | None = None               # the agent's root holding the earlier runs
        self._root_current = ""                      # this run's name under it
        self._look_earlier = False                   # at the next tick
        self._child: subprocess.Popen | None = None
        self._running: _Waiting | None = None        # what the child compacts (under the lock, for meta())
        self._started = 0.0
        self._unavailable = False
        self._lock = threading.Lock()
        self.stats = CompactionStats()
        self.earlier_stats = CompactionStats()
        self.earlier_left = 0                        # earlier runs' segments past MAX_EARLIER: `sigtrace compact`

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

    def earlier_runs(self, root: Path, current: str) -> None:
        """Also compact what the runs under root (an agent's, resolved) other than `current` left as
        JSONL: looked for at the next tick (see the module docstring)."""
        self._root, self._root_current, self._look_earlier = root, current, True

    def _find_earlier(self) -> None:
        self._look_earlier = False
        try:
            root_fd = open_dir(self._root, create=False)
            try:
                found, more = earlier_segments(root_fd, self._root_current)
            finally:
                os.close(root_fd)
        except OSError as exc:
            self._warn(f"the earlier runs under {self._root} are not compacted: cannot list them "
                       f"({exc.strerror or exc}); `sigtrace compact` does it")
            return
        with self._lock:
            self.earlier_left = more
            for item in found:
                if self._unavailable:
                    self._keep_locked(item, "pyarrow is not installed")
                else:
                    self._earlier.append(item)

    def tick(self) -> None:
        """Collect a finished child; start the next one when none runs. One caller at a time (the
        writer's timer thread, or close())."""
        if self._look_earlier:
            self._find_earlier()
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
                item = self._running = (self._queue or self._earlier).popleft()
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
            running = self._running
            self.stats.pending = len(self._queue) + (running is not None and running.run is None)
            out = self.stats.as_dict()       # (asdict copies kept_why)
            earlier_running = running is not None and running.run is not None
            if self._earlier or earlier_running or self.earlier_left or self.earlier_stats != CompactionStats():
                self.earlier_stats.pending = len(self._earlier) + earlier_running
                out["earlier_runs"] = {**self.earlier_stats.as_dict(), "left": self.earlier_left}
            return out

    def _start(self, item: _Waiting) -> None:
        """Start the child for item (self._running); on failure item is counted and nothing runs."""
        if item.run is None:
            if item.generation != self._generation():
                # its name in the removed directory; the re-created one never held it
                self._done(item, "its directory was removed while recording")
                return
            fd, own = self._dir_fd(), False
        else:
            try:
                fd, own = self._earlier_dir(item), True
            except FileNotFoundError:
                self._done(item, REMOVED)
                return
            except OSError as exc:
                self._done(item, f"cannot open its directory ({exc.strerror or exc})")
                return
        try:
            # -P and cwd /: nothing in the recorder's working directory is imported by the child;
            # its own session: a Ctrl-C meant for the recorder does not cut a compaction short
            self._child = subprocess.Popen(
                [sys.executable, "-P", "-m", "sigtrace.events.compact", str(fd), item.name], pass_fds=(fd,),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/",
                start_new_session=True)
        except OSError as exc:
            self._done(item, f"cannot start the compaction ({exc.strerror})")
            return
        finally:
            if own:
                os.close(fd)          # the child holds its own copy
        self._started = self._clock()

    def _earlier_dir(self, item: _Waiting) -> int:
        """An earlier run's directory, opened under the root without following a link, and only if
        it is still the directory that was listed (OSError otherwise)."""
        root_fd = open_dir(self._root, create=False)
        try:
            fd = os.open(item.run, DIR_FLAGS, dir_fd=root_fd)
        finally:
            os.close(root_fd)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != item.ident:
            os.close(fd)
            raise OSError(errno.ESTALE, "it was replaced since it was listed")
        return fd

    def _collect(self) -> None:
        child, item, self._child = self._child, self._running, None
        out, _ = child.communicate()
        if child.returncode == EXIT_NO_PYARROW:
            self._warn("closed segments stay JSONL: pyarrow is not installed (it compacts them to columnar files)")
            with self._lock:
                self._unavailable = True
                for waiting in [item, *self._queue, *self._earlier]:
                    self._keep_locked(waiting, "pyarrow is not installed")
                self._queue.clear()
                self._earlier.clear()
                self._running = None
            return
        try:
            result = json.loads(out.decode().strip().splitlines()[-1]) if child.returncode == 0 else None
        except (ValueError, IndexError, UnicodeDecodeError):
            result = None
        if not isinstance(result, dict):
            # (its stderr, which may quote the segment, is not kept: tenant text stays out of meta.json)
            how = f"killed by signal {-child.returncode}" if child.returncode < 0 else f"exit status {child.returncode}"
            self._done(item, f"the compaction failed ({how})")
            return
        if result.get("kept"):
            self._done(item, str(result["kept"]))
            return
        with self._lock:
            stats = self._stats_of(item)
            stats.segments += 1
            for key in ("events", "json_bytes", "columnar_bytes"):
                setattr(stats, key, getattr(stats, key) + int(result.get(key) or 0))
            self._running = None

    def _stats_of(self, item: _Waiting) -> CompactionStats:
        return self.stats if item.run is None else self.earlier_stats

    def _done(self, item: _Waiting, why: str) -> None:
        """item (the one running, or that was to run) stays JSONL, for this reason."""
        with self._lock:
            self._keep_locked(item, why)
            self._running = None

    def _keep_locked(self, item: _Waiting, why: str) -> None:
        stats = self._stats_of(item)
        stats.kept_jsonl += 1
        if why not in stats.kept_why and len(stats.kept_why) >= 8:
            why = "other reasons"
        stats.kept_why[why] = stats.kept_why.get(why, 0) + 1

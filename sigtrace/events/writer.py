"""Write a recording: DIR/events.jsonl (segments, see sigtrace.events.segments) and DIR/meta.json.

Durability: an event is safe from the writer's death once it is in the kernel's page cache (a
write(2) done), not in our buffer. A recorder in a `kubectl debug --target` container is
SIGKILLed by the kernel together with the PID 1 it watches, the very moment it records, so:
- the rare events that decide verdicts (signals, execs, exits, lifecycle facts) are written out
  as soon as they are encoded, together with whatever is buffered before them;
- the bulk (TCP events, up to tens of thousands a second) is written at the end of each backend
  batch (RecordSession calls flush() after every poll), so a batch costs one write(2), not one per
  event; a timer thread flushes every second in case a backend never returns.
The cost is measured in `make bench` (capacity) and docs/benchmarks.md.

Bounded and fault-tolerant, for an agent left running for weeks:
- segments: the next file is started when the current one reaches segment_bytes or segment_age_s;
  every segment ends with a complete line (except after a SIGKILL);
- a DiskBudget (optional) prunes old segments and runs from the timer thread, off the hot path;
- a failed write (ENOSPC, EDQUOT, EIO, a read-only remount...) never stops the recording and
  never leaves half a line before a good one: the partial line is truncated away (or, if even
  that fails, the next write starts with a newline, so readers skip exactly one bad line); what
  could not be written is counted as lost (lost(), meta.json `output`), the problem is reported
  once, and writing is retried every second until it works again;
- an output directory removed (or replaced) while recording is noticed within a second and
  re-created safely (sigtrace.events.segments.open_dir), and the events that went into the removed
  file are counted as lost.
"""
from __future__ import annotations

import errno
import os
import secrets
import socket
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import orjson

from ..errors import OutputError, UsageProblem
from . import schema
from .columnar import is_columnar
from .compactor import Compactor
from .segments import (FIRST_SEGMENT, META_FILE, SEGMENT_AGE_S, SEGMENT_BYTES, DiskBudget, OutputDir,
                       SegmentBusy, list_segments, segment_name)

EVENTS_FILE = FIRST_SEGMENT
FLUSH_INTERVAL_S = 1.0
# Kinds written out at once (see the module docstring); every other kind waits for the batch's end.
DURABLE_AT_ONCE = frozenset({schema.SIGNAL_GENERATE, schema.SIGNAL_DELIVER, schema.PROCESS_EXEC,
                             schema.PROCESS_EXIT, schema.POD_LIFECYCLE})
# A batch bigger than this is written out before the batch ends (the old 64 KiB stdio buffer did
# the same, more often): memory stays bounded under a flood.
AUTO_FLUSH_BYTES = 1 << 20
# While writes fail, events wait at most this long and this much for the next attempt; beyond,
# they are counted as lost at once.
RETRY_S = 1.0
FAILED_BUFFER_BYTES = 4 << 20
CHECK_S = 1.0                   # how often the directory and the segment are checked for removal
MAX_EPISODES = 20               # write-failure episodes kept in meta.json (the counts cover all)
DISK_FULL = "disk_full"
WRITE_FAILED = "write_failed"
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


# What sigtrace itself leaves in a recording directory besides the event segments
SIGTRACE_FILES = frozenset({META_FILE, "record.log", "lab.json", "reports", "status.json"})


def existing_output(path: str | os.PathLike, error: type[Exception]) -> os.stat_result | None:
    """lstat of a path sigtrace is about to write: None when nothing is there yet; a symbolic link
    (planted, or meant for its target) raises error: sigtrace never writes through links."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise OutputError(f"cannot use {path}: {exc.strerror}; choose another output") from None
    if stat.S_ISLNK(st.st_mode):
        raise error(f"{path} is a symbolic link: give the real path (sigtrace never writes through links)")
    return st


FILE_MODE = 0o640


def atomic_file(out: Path, write: Callable[[Path], Any]) -> None:
    """write(tmp_path) into a new private file beside out (mkstemp: O_EXCL, so nothing planted is
    followed), mode 0640, then rename it over out: a reader sees the old or the new file, never half,
    and a planted link at out is replaced, not written through."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_dir(out: Path, *, append: bool, root: bool) -> None:
    """Refuse a directory someone else could have planted (a link, another user's) and one that holds
    something else: a recording is added to only on request, a stranger's files never.
    root: an agent's output root, which holds run directories rather than a recording."""
    st = existing_output(out, OutputError)
    if st is None:
        return                           # to be made: mkdir says what is wrong with the path
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{out} exists and is not a directory; choose a new --output")
    if st.st_uid != os.geteuid():
        raise OutputError(f"{out} belongs to uid {st.st_uid}, not to this user: files planted there would be "
                          f"written through; choose a directory of your own")
    if root:
        return
    try:
        names = set(os.listdir(out))
    except OSError as exc:
        raise OutputError(f"cannot list output dir {out}: {exc.strerror}; choose another --output") from None
    from .segments import segment_seq
    has_events = any(segment_seq(n) is not None for n in names)
    if has_events and not append:
        raise UsageProblem(f"{out} already holds a recording; pass --append to add to it, or choose a new --output")
    foreign = sorted(n for n in names if n not in SIGTRACE_FILES and segment_seq(n) is None
                     and not n.startswith(".sigtrace-"))
    if foreign and not has_events:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UsageProblem(f"{out} is not empty and holds no sigtrace recording ({shown}); choose an empty or "
                           f"new --output")


def prepare_output_dir(path: str | os.PathLike, *, append: bool = True, root: bool = False) -> Path:
    """Create DIR (mode 0750) if needed, refuse one that is not ours (check_output_dir), and prove it
    is writable before any probe is loaded."""
    out = Path(path)
    check_output_dir(out, append=append, root=root)
    try:
        out.mkdir(mode=0o750, parents=True, exist_ok=True)
        # a fresh name, O_EXCL and O_NOFOLLOW: a file or symlink planted in a shared directory
        # under a known name is never opened (let alone truncated) through
        probe = f".sigtrace-write-test-{os.getpid()}-{secrets.token_hex(4)}"
        dir_fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=dir_fd))
            os.unlink(probe, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise OutputError(f"cannot write to output dir {out}: {exc.strerror}; choose a writable --output") from exc
    return out


def _stderr_warning(message: str) -> None:
    print(f"sigtrace: warning: {message}", file=sys.stderr, flush=True)


def _cause(exc: OSError) -> str:
    return DISK_FULL if exc.errno in _DISK_FULL_ERRNOS else WRITE_FAILED


class EventWriter:
    """Appends events as JSON lines (UTF-8) to rotating segments, durable as the module docstring says.

    Only non-null fields are written: readers fill the rest from the schema. out_dir is a path, or
    an OutputDir the caller keeps (then write_meta() works after close()). clock is the wall clock
    of segment ages (tests inject one); warn gets each problem once, as one line. compact: each
    closed segment is compacted to a columnar file by a child process (sigtrace.events.compactor).
    """

    def __init__(self, out_dir: str | os.PathLike | OutputDir, flush_interval: float = FLUSH_INTERVAL_S,
                 at_once: frozenset[str] = DURABLE_AT_ONCE, *, segment_bytes: int = SEGMENT_BYTES,
                 segment_age_s: float = SEGMENT_AGE_S, budget: DiskBudget | None = None,
                 clock: Callable[[], float] = time.time, warn: Callable[[str], None] | None = None,
                 compact: bool = False):
        if isinstance(out_dir, OutputDir):
            self._dir, self._own_dir = out_dir, False
        else:
            try:
                self._dir, self._own_dir = OutputDir(out_dir), True
            except OSError as exc:
                raise OutputError(f"cannot write to output dir {out_dir}: {exc.strerror}; "
                                  f"choose a writable --output") from exc
        self._budget = budget if budget is not None and budget.limited else None
        self.segment_bytes = self._budget.segment_bytes(segment_bytes) if self._budget else segment_bytes
        self.segment_age_s = segment_age_s
        self._clock = clock
        self._warn = warn or _stderr_warning
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()          # the timer thread's early tick (disk cap reached)
        # one maintenance at a time (the timer thread, close(), a test's tick); never the hot path's lock
        self._maint_lock = threading.Lock()
        self._at_once = at_once
        # one growing bytearray: each line is copied in and freed at once (a list of the lines kept
        # 500 objects alive per batch and cost ~1 µs more per event in the allocator)
        self._buf = bytearray()
        self._unflushed = 0
        self._fd: int | None = None
        self._seq = 1
        self._seg_size = 0
        self._seg_opened = clock()
        self._segments_opened = 0
        self._newline_next = False       # a partial line could not be truncated: end it first
        self._failed: str | None = None  # cause while writes fail
        self._retry_at = 0.0
        self._announced: set[str] = set()
        self._episodes: list[dict[str, Any]] = []
        self._lost = {DISK_FULL: 0, WRITE_FAILED: 0}
        self._written_since_check = 0
        self.check_every_s = CHECK_S
        self._last_check = time.monotonic()
        self._closed = False
        # closed segments become columnar (sigtrace.events.compactor), by a child of the timer thread
        self._compactor = (Compactor(lambda: self._dir.fd, self._warn, generation=lambda: self._dir.recreated)
                           if compact else None)
        self.count = 0
        self.flushes = 0                      # write(2) batches, for the bench
        with self._lock:
            self._open_first_locked()
            if self._compactor is not None:
                # appending to a recording: its closed JSONL segments (a recorder stopped before their
                # turn, or one run with --no-compact) are compacted too
                for seq, path in list_segments(self._dir.path):
                    if seq < self._seq and not is_columnar(path):
                        self._compactor.closed(path.name)
        self._flusher = threading.Thread(target=self._flush_loop, args=(flush_interval,), daemon=True,
                                         name="event-writer")
        self._flusher.start()

    def compact_earlier(self, root: str | os.PathLike) -> None:
        """Also compact the closed JSONL segments that earlier runs under root left (an agent's
        restart: what its predecessor had not reached); looked for by the timer thread
        (sigtrace.events.compactor)."""
        if self._compactor is not None:
            self._compactor.earlier_runs(Path(os.path.realpath(root)), self._dir.path.name)

    # -- the hot path
    def write(self, event: dict[str, Any]) -> None:
        # the recorder's hot path: orjson encodes several times faster than json.dumps
        if None in event.values():
            event = {k: v for k, v in event.items() if v is not None}
        line = orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            if self._closed:
                raise ValueError("write to a closed EventWriter")
            self.count += 1
            if self._failed is not None and len(self._buf) >= FAILED_BUFFER_BYTES:
                self._lose_locked(1, self._failed)
                return
            self._buf += line
            self._unflushed += 1
            if event.get("kind") in self._at_once or len(self._buf) >= AUTO_FLUSH_BYTES:
                self._flush_locked()

    def flush(self) -> None:
        """Hand every buffered event to the kernel (one write(2)); nothing to do when none is pending."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._unflushed or self._closed:
            return
        if self._failed is not None and time.monotonic() < self._retry_at:
            return                                   # the timer retries; the events wait (bounded)
        if self._fd is None and not self._open_next_locked():
            self._drop_buffer_locked()
            return
        lines = self._unflushed
        data = self._buf
        if self._newline_next:
            data[0:0] = b"\n"
        written = 0
        try:
            with memoryview(data) as view:
                while written < len(data):
                    written += os.write(self._fd, view[written:])
        except OSError as exc:
            self._write_failed_locked(exc, data, written, lines)
            data.clear()
            self._unflushed = 0
            return
        data.clear()
        self._unflushed = 0
        self._newline_next = False
        self._seg_size += written
        self._written_since_check += lines
        self.flushes += 1
        if self._failed is not None:
            self._resumed_locked()
        if self._seg_size >= self.segment_bytes:
            self._rotate_locked()
        if self._budget is not None and self._budget.over(self._seg_size):
            self._wake.set()                   # prune now, not at the next tick: the cap holds under a flood

    def _write_failed_locked(self, exc: OSError, data: bytearray, written: int, lines: int) -> None:
        """Keep the whole lines that reached the file, cut the partial one, count the rest as lost."""
        end = data.rfind(b"\n", 0, written) + 1        # bytes of whole lines (incl. a leading newline)
        prefix = 1 if self._newline_next else 0
        if end:
            self._newline_next = False
        if written > end:
            try:
                os.ftruncate(self._fd, self._seg_size + end)
            except OSError:
                self._newline_next = True           # the reader then skips exactly one bad line
        self._seg_size += end
        kept = data.count(b"\n", 0, end) - (prefix if end else 0)
        self._written_since_check += kept
        self._fail_locked(_cause(exc), exc, self._seg_path_name())
        self._lose_locked(lines - kept, _cause(exc))

    def _drop_buffer_locked(self) -> None:
        self._lose_locked(self._unflushed, self._failed or WRITE_FAILED)
        self._buf.clear()
        self._unflushed = 0

    # -- segments
    def _open_first_locked(self) -> None:
        """Continue the directory's last segment when it ends with a whole line (as a recorder
        appending to events.jsonl always did), else start the next one."""
        existing = list_segments(self._dir.path)
        self._seq = existing[-1][0] if existing else 0
        # (a columnar segment is closed for good: the next one is started)
        if existing and not is_columnar(existing[-1][1]) and _ends_with_newline(existing[-1][1]):
            try:
                self._fd = self._dir.open_segment(existing[-1][1].name, append=True)
                self._seg_size = os.fstat(self._fd).st_size
                return
            except OSError:
                pass
        # (a killed recorder's cut-off last line stays the last line of its segment)
        if not self._open_next_locked():
            episode = self._episodes[-1]
            raise OutputError(f"cannot create {self._dir.path / episode['file']}: {episode['error']}; "
                              f"choose a writable --output")

    def _open_next_locked(self) -> bool:
        """Open segment seq+1 (O_EXCL: a name already taken is skipped). False when it failed."""
        seq = self._seq
        for _ in range(100):
            seq += 1
            name = segment_name(seq)
            try:
                self._fd = self._dir.open_segment(name, append=False)
            except (FileExistsError, SegmentBusy):        # taken, or held by another process: the next name
                continue
            except OSError as exc:
                self._fd = None
                self._fail_locked(_cause(exc), exc, name)
                return False
            self._seq = seq
            self._seg_size = 0
            self._seg_opened = self._clock()
            self._segments_opened += 1
            return True
        self._fail_locked(WRITE_FAILED, OSError(errno.EEXIST, "100 segment names in a row are taken"),
                          segment_name(seq))
        return False

    def _rotate_locked(self) -> None:
        # No fsync here: it would stall the recorder (lock held) for the whole segment's writeback;
        # the page cache already survives our death, and close() syncs the last segment.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            if self._compactor is not None and self._seg_size > 0:
                self._compactor.closed(segment_name(self._seq))
        if self._budget is not None:
            self._budget.rotated()
            self._wake.set()
        self._open_next_locked()

    def _seg_path_name(self) -> str:
        return segment_name(self._seq)

    @property
    def path(self) -> Path:
        """The segment being written."""
        return self._dir.path / segment_name(self._seq)

    # -- failures
    def _fail_locked(self, cause: str, exc: OSError, what: str) -> None:
        now = self._clock()
        if self._failed is None:
            self._failed = cause
            self._episodes.append({"cause": cause, "error": exc.strerror or str(exc), "file": what,
                                   "from": now, "to": None, "lost": 0})
            del self._episodes[:-MAX_EPISODES]
        self._retry_at = time.monotonic() + RETRY_S
        self._announce_locked(cause, exc, what)

    def _announce_locked(self, cause: str, exc: OSError, what: str) -> None:
        if cause in self._announced:
            return
        self._announced.add(cause)
        where = self._dir.path / what
        if not what:
            self._warn(f"{self._dir.path} was removed while recording and cannot be re-created safely "
                       f"({exc.strerror or exc}): events are counted as lost until the path is clear "
                       f"(retried every {RETRY_S:g} s; the recording goes on); remove what is there now")
        elif cause == DISK_FULL:
            self._warn(f"{where}: {exc.strerror}: events are counted as lost until there is space again "
                       f"(retried every {RETRY_S:g} s; the recording goes on); free space on that filesystem "
                       f"or set a lower --max-disk")
        else:
            self._warn(f"cannot write {where} ({exc.strerror or exc}): events are counted as lost until it "
                       f"works again (retried every {RETRY_S:g} s; the recording goes on)")

    def _lose_locked(self, n: int, cause: str) -> None:
        if n <= 0:
            return
        self._lost[cause] = self._lost.get(cause, 0) + n
        if self._episodes and self._episodes[-1]["to"] is None:
            self._episodes[-1]["lost"] += n

    def _resumed_locked(self) -> None:
        self._failed = None
        self._announced.clear()
        if self._episodes and self._episodes[-1]["to"] is None:
            self._episodes[-1]["to"] = self._clock()

    def _check_output_locked(self) -> None:
        """Notice a removed (or replaced) directory or segment; re-create and go on."""
        now = time.monotonic()
        if now - self._last_check < self.check_every_s:
            return
        self._last_check = now
        gone = self._dir.gone()
        unlinked = False
        if not gone and self._fd is not None:
            try:
                unlinked = os.fstat(self._fd).st_nlink == 0
            except OSError:
                unlinked = True
        at_risk, self._written_since_check = self._written_since_check, 0
        if not gone and not unlinked:
            return
        # what went into the removed file since the last check (at most CHECK_S ago) is gone with it
        what = "the output directory" if gone else segment_name(self._seq)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if gone:
            try:
                self._dir.reopen()
            except OSError as exc:
                # cannot re-create it (yet, or safely): events are lost until it can, retried each tick
                self._fail_locked(WRITE_FAILED, exc, "")
                self._lose_locked(at_risk, WRITE_FAILED)
                return
        if self._failed is None:
            # noticed and repaired at once: one episode, one line
            stamp = self._clock()
            self._episodes.append({"cause": WRITE_FAILED, "error": f"{what} was removed while recording",
                                   "file": segment_name(self._seq), "from": stamp, "to": stamp, "lost": at_risk})
            del self._episodes[:-MAX_EPISODES]
            self._lost[WRITE_FAILED] += at_risk
            self._warn(f"{self._dir.path}: {what} was removed while recording; "
                       f"{'re-created it, ' if gone else ''}going on in a new segment; up to {at_risk} events "
                       f"written in the second before are lost with it")
        else:
            self._lose_locked(at_risk, WRITE_FAILED)     # already reported: the open episode counts them
        if self._budget is not None:
            self._budget.rotated()
        self._open_next_locked()

    # -- the timer thread
    def maintain(self) -> None:
        """One tick of the timer thread: check the output, rotate an old segment, flush, keep the
        disk budget. Public so that tests can tick without waiting."""
        with self._maint_lock:
            self._maintain()

    def _maintain(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._check_output_locked()
            self._retry_at = 0.0                  # the tick is the retry clock of failed writes
            if self._fd is None and self._failed is not None and not self._unflushed:
                self._open_next_locked()          # nothing to write, but see whether it works again
            self._flush_locked()
            if (self._seg_size > 0 and self._fd is not None
                    and self._clock() - self._seg_opened >= self.segment_age_s):
                self._rotate_locked()
            seq, size = self._seq, self._seg_size
        if self._budget is not None:
            # pruning (unlinks, rmtree) runs here, without the lock: the hot path never waits for it
            if self._budget.check(seq, size):
                with self._lock:
                    if self._seq == seq and not self._closed:
                        self._rotate_locked()
        if self._compactor is not None:
            self._compactor.tick()

    def _flush_loop(self, interval: float) -> None:
        failed_before = False
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.maintain()
            except Exception as exc:   # noqa: BLE001 - a bug here must never stop the recording
                if not failed_before:
                    failed_before = True
                    self._warn(f"output maintenance failed ({type(exc).__name__}: {exc}); events are still "
                               f"written, rotation and the disk cap may not be")

    # -- results
    def lost(self) -> dict[str, int]:
        """Events not written, by cause (disk_full, write_failed); always both keys."""
        with self._lock:
            return dict(self._lost)

    def meta(self) -> dict[str, Any]:
        """meta.json blocks: `output` (segments, write failures), `disk` and `pruned` with a budget."""
        with self._lock:
            out: dict[str, Any] = {"output": {
                "segment": segment_name(self._seq), "segments_started": self._segments_opened,
                "segment_bytes": self.segment_bytes, "segment_age_s": self.segment_age_s,
                "lost": dict(self._lost), "failing": self._failed,
                "problems": [dict(e) for e in self._episodes],
                "recreated": self._dir.recreated,
            }}
            if self._compactor is not None:
                out["output"]["compaction"] = self._compactor.meta()
        if self._budget is not None:
            out["disk"] = self._budget.meta()
            own = self._budget.own_meta()
            if own:
                out["pruned"] = own
        return out

    def write_meta(self, meta: dict[str, Any]) -> bool:
        """Write meta.json atomically next to the segments; a failure is reported once (with the
        events' own) and leaves the previous meta.json in place. Returns whether it was written."""
        with self._lock:         # the timer thread may reopen (close) the directory fd meanwhile
            try:
                self._dir.write_json(META_FILE, meta)
                return True
            except OSError as exc:
                self._announce_locked(_cause(exc), exc, META_FILE)
                return False

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._flusher.is_alive() and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=10)
        with self._lock:
            if self._closed:
                return
            self._retry_at = 0.0                       # one last attempt, now
            self._flush_locked()
            if self._unflushed:
                self._drop_buffer_locked()
            self._closed = True
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError:
                    pass                   # the data is in the page cache; a failed sync loses nothing more
                os.close(self._fd)
                self._fd = None
            seq, size = self._seq, self._seg_size
        if self._compactor is not None:
            with self._maint_lock:
                self._compactor.close()
        if self._budget is not None:
            try:
                with self._maint_lock:
                    self._budget.check(seq, size)  # the recording ends within the cap
            except Exception as exc:   # noqa: BLE001 - as in the timer thread: never lose the close
                self._warn(f"disk cap check at the end failed ({type(exc).__name__}: {exc})")
        if self._own_dir:
            self._dir.close()

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    """Whether a regular file ends with a whole line (or is empty); never waits on a FIFO put there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        return stat.S_ISREG(st.st_mode) and (st.st_size == 0 or os.pread(fd, 1, st.st_size - 1) == b"\n")
    except OSError:
        return False
    finally:
        os.close(fd)


def write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    """Write DIR/meta.json atomically (rename), so a reader never sees half a file."""
    d = OutputDir(out_dir)
    try:
        d.write_json(META_FILE, meta)
    finally:
        d.close()


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

"""A recording on disk: its segment files, its directory held open, and the disk budget.

One recording (a run of `sigtrace record`, one start of `sigtrace agent`) is a directory:

    events.jsonl          segment 1: the only one of a short recording (and of every recording
                          made before segments existed)
    events-000002.jsonl   segment 2, 3, ...: the writer starts the next one when the current one
                          reaches the segment size or age; only the highest number is appended to
    events-000002.arrow   a closed segment compacted to a columnar file (sigtrace.events.columnar):
                          the same events; its JSONL is removed once it is whole
    meta.json, reports/

The segment being written is locked (flock) by its writer, and a segment being compacted by its
compaction (claim_segment): a `record --append` never continues a segment that `sigtrace compact`
is turning into its columnar file, nor the other way round.

A closed segment's events never change: a reader (or `kubectl sigtrace collect`'s tar) listing
the directory while the recorder runs sees closed segments that keep their events (a JSONL may
turn into its columnar file meanwhile: readers look for it, sigtrace.events.columnar.current_segment);
new ones appear above, pruning removes below. The agent's output root holds one such directory per start
(OUTPUT/<node>-<UTC time>/); DiskBudget keeps all of them together under --max-disk and removes
what is older than --max-age: oldest closed segment first, across runs, never the one being written.

Everything here that creates or removes files works relative to directory descriptors opened
without following symlinks, so a path swapped for a symlink (the output may live in a shared
directory such as /tmp) cannot redirect a write or a removal.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .columnar import columnar_name, first_ts, is_columnar

FIRST_SEGMENT = "events.jsonl"
META_FILE = "meta.json"
REPORTS_DIR = "reports"
SEGMENT_BYTES = 64 << 20
SEGMENT_AGE_S = 3600.0
# With a disk cap, a segment is at most this fraction of it: pruning removes whole segments, so the
# cap holds with the current segment in it and at least 7/8 of the cap stays in use.
SEGMENT_SHARE_OF_CAP = 8
MIN_SEGMENT_BYTES = 64 << 10
RESCAN_S = 30.0                 # reports/ and other runs change without the writer knowing: look again
_SEGMENT_RE = re.compile(r"events(?:-(\d{6,}))?\.(?:jsonl|arrow)")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# ---- names -----------------------------------------------------------------------------------------
def segment_name(seq: int) -> str:
    """File name of segment `seq` (1-based): events.jsonl, then events-000002.jsonl, ..."""
    return FIRST_SEGMENT if seq == 1 else f"events-{seq:06d}.jsonl"


def segment_seq(name: str) -> int | None:
    """The segment number of a file name (JSONL, or columnar once compacted: events-000002.arrow),
    None when it is not a segment."""
    m = _SEGMENT_RE.fullmatch(name)
    if m is None:
        return None
    return int(m.group(1)) if m.group(1) else 1


def list_segments(directory: str | os.PathLike, ignored: list[str] | None = None) -> list[tuple[int, Path]]:
    """The segment files of one recording, in order: (number, path). A columnar segment beside the
    JSONL of the same number (a compaction cut short between its link and its unlink, or a file put
    there) is left out: the JSONL is the recorder's own; its name goes to `ignored`."""
    out = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                seq = segment_seq(entry.name)
                if seq is not None and entry.is_file():
                    out.append((seq, Path(entry.path)))
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = {p.name for _, p in out}
    twins = sorted(p.name for _, p in out if is_columnar(p) and p.with_suffix(".jsonl").name in names)
    if ignored is not None:
        ignored += twins
    out = [(seq, p) for seq, p in out if p.name not in twins]
    return sorted(out, key=lambda t: (t[0], t[1].name != FIRST_SEGMENT))


def run_dirs(directory: str | os.PathLike) -> list[Path]:
    """The recordings a directory holds: itself when it has segments, else its subdirectories that
    have some (an agent's output root, or one node's directory from `kubectl sigtrace collect`)."""
    d = Path(directory)
    if list_segments(d):
        return [d]
    try:
        children = sorted(p for p in d.iterdir() if p.is_dir())
    except OSError:
        return []
    return [c for c in children if list_segments(c)]


def run_dirs_under(root: str | os.PathLike) -> list[Path]:
    """Every recording directory at any depth below root (root included), sorted."""
    return sorted({p.parent for p in Path(root).rglob("events*")
                   if segment_seq(p.name) is not None and p.is_file()})


# ---- the output directory, held open --------------------------------------------------------------
class PlantedPath(OSError):
    """A path component that is a symlink or a directory we did not create where we must create one."""


class SegmentBusy(OSError):
    """A segment another process holds (claim_segment): a compaction turning it into its columnar file."""


# errors that mean the filesystem has no locks: the segment is used unlocked, as before locks were
# taken. Any other error (NFSv4's EBADF for a lock the descriptor's mode does not allow) is "held".
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
NEW_SEGMENT_TRIES = 50          # 1 ms apart: a compaction that opened a new, empty segment lets go at once


def claim_segment(fd: int, dir_fd: int, name: str, *, writing: bool) -> bool:
    """Lock the segment `name` of dir_fd, open on fd, while fd is open: exclusive for its writer
    (writing), shared for a compaction (its descriptor is read-only, which NFS refuses an exclusive
    lock on); a writer and a compaction exclude each other. False when another process holds it,
    or when fd is no longer the file the name names (compacted, or pruned, meanwhile)."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if writing else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in NO_LOCKS:
            return False                      # held (EWOULDBLOCK), or a lock this filesystem refuses
    try:
        named = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)


def open_dir(path: Path, *, create: bool, own_last: bool = False) -> int:
    """Open the absolute, symlink-free `path` one component at a time without following symlinks.

    Missing components are created (0o750) when `create`, and then accepted only as real
    directories owned by us: if someone else raced us to the name (a shared /tmp), we refuse it
    instead of writing into their directory. own_last: the last component must be ours even if it
    exists (re-opening our own directory after it was removed)."""
    fd = os.open("/", DIR_FLAGS)
    last = len(path.parts) - 1
    try:
        for i, name in enumerate(path.parts[1:], 1):
            missing = False
            try:
                nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                missing = True
                try:
                    os.mkdir(name, 0o750, dir_fd=fd)
                except FileExistsError:
                    pass
                try:
                    nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise _planted(path, name, exc) from None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _planted(path, name, exc) from None
                raise
            os.close(fd)
            fd = nfd
            if (missing or (own_last and i == last)) and os.fstat(fd).st_uid != os.geteuid():
                raise PlantedPath(errno.EPERM, f"{name} was re-created by another user (uid "
                                               f"{os.fstat(fd).st_uid}); not writing into it", str(path))
        return fd
    except BaseException:
        os.close(fd)
        raise


def _planted(path: Path, name: str, exc: OSError) -> PlantedPath:
    return PlantedPath(exc.errno or errno.ELOOP, f"{name} is a symlink or not a directory; not writing through it",
                       str(path))


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class OutputDir:
    """A recording's directory held open by descriptor: files are created relative to it, so a path
    swapped for a symlink later cannot redirect them; gone() notices it was removed or replaced and
    reopen() re-creates it safely (open_dir)."""

    def __init__(self, path: str | os.PathLike):
        # symlinks the operator put in the path are resolved once, here; later, none is followed
        self.path = Path(os.path.realpath(path))
        self.fd = open_dir(self.path, create=True)
        self._ident = _ident(os.fstat(self.fd))
        self.recreated = 0

    def gone(self) -> bool:
        """The directory at our path is no longer the one we hold (removed, renamed, replaced)."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return True
        return _ident(st) != self._ident or not stat.S_ISDIR(st.st_mode)

    def reopen(self) -> None:
        """Open (re-creating if needed) the directory at our path; raises OSError / PlantedPath."""
        fd = open_dir(self.path, create=True, own_last=True)
        old, self.fd = self.fd, fd
        self._ident = _ident(os.fstat(fd))
        self.recreated += 1
        os.close(old)

    def open_segment(self, name: str, *, append: bool) -> int:
        """An O_APPEND descriptor, locked while it is open (claim_segment): the existing file
        (append=True; SegmentBusy when a compaction holds it or has replaced it) or a new one
        (O_EXCL: never a file or symlink someone else put there)."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        if not append:
            flags |= os.O_CREAT | os.O_EXCL
        fd = os.open(name, flags, 0o640, dir_fd=self.fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise PlantedPath(errno.EINVAL, f"{name} is not a regular file", str(self.path / name))
        # a new file is ours: a compaction that opened it meanwhile finds it empty and lets go
        for _ in range(1 if append else NEW_SEGMENT_TRIES):
            try:
                if claim_segment(fd, self.fd, name, writing=True):
                    return fd
            except OSError:
                break
            if not append:
                time.sleep(0.001)
        if not append:
            try:
                os.unlink(name, dir_fd=self.fd)      # the empty file this made: not left as a segment
            except OSError:
                pass
        os.close(fd)
        raise SegmentBusy(errno.EBUSY, f"{name} is held by another process (a compaction)", str(self.path / name))

    def write_json(self, name: str, obj: Any) -> None:
        write_json_at(self.fd, name, obj)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_json_at(dir_fd: int, name: str, obj: Any) -> None:
    """Write name atomically in the directory dir_fd (temp file + rename): a reader never sees half
    a file, and a full disk leaves the previous version in place. Raises OSError."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    tmp = f"{name}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o640, dir_fd=dir_fd)
    except FileExistsError:       # left by a killed writer (or planted): unlink never follows a link
        os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, flags, 0o640, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    os.close(fd)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def first_event_ts(dir_fd: int, name: str) -> float | None:
    """ts of a segment's first event (a JSONL's first line; a columnar file's header, read without
    pyarrow), None when unreadable."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if is_columnar(name):
            return first_ts(fd)
        head = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    try:
        ts = json.loads(head.split(b"\n", 1)[0]).get("ts")
    except (ValueError, AttributeError, RecursionError):
        return None
    return float(ts) if isinstance(ts, (int, float)) else None


# ---- the disk budget ------------------------------------------------------------------------------
@dataclass
class _Segment:
    seq: int
    name: str
    size: int
    mtime: float


@dataclass
class _Run:
    name: str                       # directory name under the root ("" when the root is the run)
    segments: list[_Segment]        # removable ones, in order
    kept_bytes: int = 0             # files never removed one by one: meta.json, the current segment
    reports: list[_Segment] = field(default_factory=list)   # reports/<pod>.json, oldest first
    newest: float = 0.0             # newest mtime of anything in it
    current: bool = False           # the run being recorded (never removed as a whole)
    alive: bool = False             # another recorder still writes it: its newest segment is protected
    ours: bool = False              # its meta.json is a recorder's: the whole directory may be removed

    def bytes(self) -> int:
        return self.kept_bytes + sum(s.size for s in self.segments) + sum(r.size for r in self.reports)


@dataclass
class PruneTotals:
    segments: int = 0
    runs: int = 0
    reports: int = 0
    bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"segments": self.segments, "runs": self.runs, "reports": self.reports, "bytes": self.bytes}


@dataclass
class DiskBudget:
    """Keeps the recordings under `root` within max_bytes (apparent file sizes: segments, meta.json,
    reports/, and the root's own files) and removes closed segments older than max_age_s (by their
    last write) and whole runs that are empty or older.

    `run` is the directory being recorded now (root itself for `sigtrace record`, a subdirectory
    for the agent). check() is cheap (integers) and runs every tick; the tree is scanned at start,
    after a rotation, when over the cap, and every RESCAN_S."""
    root: Path
    run: Path
    max_bytes: int | None = None
    max_age_s: float | None = None
    clock: Callable[[], float] = time.time
    rescan_s: float = RESCAN_S
    warn: Callable[[str], None] | None = None
    pruned: PruneTotals = field(default_factory=PruneTotals)
    own_pruned: PruneTotals = field(default_factory=PruneTotals)
    own_pruned_until: float | None = None
    oldest_kept_ts: float | None = None
    used_bytes: int = 0
    runs: int = 0
    errors: int = 0
    last_error: str | None = None

    def __post_init__(self) -> None:
        self.root = Path(os.path.realpath(self.root))
        self.run = Path(os.path.realpath(self.run))
        self._single = self.root == self.run
        self._other_bytes = 0           # all counted bytes except the current segment, at the last scan
        self._oldest_mtime: float | None = None
        self._scanned_at = float("-inf")
        self._dirty = True
        self._stuck = False             # the last prune could not get under the cap: wait for a change
        self._meta_cache: dict[str, tuple[tuple[int, int], dict]] = {}

    @property
    def limited(self) -> bool:
        return self.max_bytes is not None or self.max_age_s is not None

    def segment_bytes(self, wanted: int) -> int:
        """The segment size to use under this cap (see SEGMENT_SHARE_OF_CAP)."""
        if self.max_bytes is None:
            return wanted
        return max(MIN_SEGMENT_BYTES, min(wanted, self.max_bytes // SEGMENT_SHARE_OF_CAP))

    def rotated(self) -> None:
        """The writer closed a segment: look at the tree again at the next check."""
        self._dirty = True
        self._stuck = False

    def over(self, current_bytes: int) -> bool:
        """Cheap (no system call): would a check now prune? The writer asks after each batch."""
        return (self.max_bytes is not None and not self._stuck
                and self._other_bytes + current_bytes > self.max_bytes)

    def check(self, current_seq: int, current_bytes: int) -> bool:
        """Called every tick with the segment being written. Prunes when needed; returns True when
        the cap can only be kept by closing the current segment too (the writer then rotates)."""
        due = self._dirty or time.monotonic() - self._scanned_at >= self.rescan_s
        if not due and self.over(current_bytes):
            due = True
        if (not due and self.max_age_s is not None and self._oldest_mtime is not None
                and self._oldest_mtime < self.clock() - self.max_age_s):
            due = True
        self.used_bytes = self._other_bytes + current_bytes
        return self.enforce(current_seq, current_bytes) if due else False

    def enforce(self, current_seq: int, current_bytes: int) -> bool:
        """Scan, remove what the caps say, and return whether the current segment must be closed."""
        self._dirty = False
        self._scanned_at = time.monotonic()
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            self._error(f"cannot open {self.root}: {exc.strerror}")
            return False
        try:
            runs, root_bytes = self._scan(root_fd, current_seq, current_bytes)
            removed_any = self._prune(root_fd, runs, root_bytes)
            total = root_bytes + sum(r.bytes() for r in runs)
            self._other_bytes = total - current_bytes
            self.used_bytes = total
            self.runs = len(runs)
            fronts = [(r.segments[0].mtime, r) for r in runs if r.segments]
            self._oldest_mtime = min(m for m, _ in fronts) if fronts else None
            if removed_any or self.oldest_kept_ts is None:
                self.oldest_kept_ts = self._oldest_kept(root_fd, runs, current_seq)
            over = self.max_bytes is not None and total > self.max_bytes
            self._stuck = over
            return over and current_bytes > 0 and not any(r.segments or r.reports for r in runs)
        finally:
            os.close(root_fd)

    # -- scanning
    def _scan(self, root_fd: int, current_seq: int, current_bytes: int) -> tuple[list[_Run], int]:
        if self._single:
            run = self._scan_run(root_fd, None, "", current=True, current_seq=current_seq,
                                 current_bytes=current_bytes)
            return ([run] if run else []), 0
        runs, root_bytes = [], 0
        with os.scandir(root_fd) as it:
            entries = list(it)
        names = {e.name for e in entries}
        self._meta_cache = {k: v for k, v in self._meta_cache.items() if k in names}   # runs come and go
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False):
                    root_bytes += entry.stat(follow_symlinks=False).st_size   # e.g. a status file
                elif entry.is_dir(follow_symlinks=False):
                    current = (self.root / entry.name) == self.run
                    run = self._scan_run(root_fd, entry.name, entry.name, current=current,
                                         current_seq=current_seq, current_bytes=current_bytes)
                    if run is not None:
                        runs.append(run)
            except OSError:
                continue              # removed meanwhile (another process): nothing to count
        return runs, root_bytes

    def _scan_run(self, root_fd: int, dirname: str | None, name: str, *, current: bool,
                  current_seq: int, current_bytes: int) -> _Run | None:
        fd = root_fd if dirname is None else os.open(dirname, DIR_FLAGS, dir_fd=root_fd)
        try:
            segs, kept, newest, is_run, meta_key, reports = [], 0, 0.0, current, None, []
            with os.scandir(fd) as it:
                entries = list(it)
            for e in entries:
                try:
                    if e.is_dir(follow_symlinks=False):
                        if e.name == REPORTS_DIR:
                            for f in _files(fd, e.name):
                                newest = max(newest, f.mtime)
                                if f.name.endswith(".tmp"):
                                    kept += f.size         # being written (temp file + rename)
                                else:
                                    reports.append(f)
                        continue
                    if not e.is_file(follow_symlinks=False):
                        continue
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                newest = max(newest, st.st_mtime)
                seq = segment_seq(e.name)
                if seq is not None:
                    is_run = True
                    if current and seq >= current_seq:
                        kept += current_bytes if seq == current_seq else st.st_size
                    else:
                        segs.append(_Segment(seq, e.name, st.st_size, st.st_mtime))
                    continue
                if e.name == META_FILE:
                    meta_key = (st.st_mtime_ns, st.st_size)
                kept += st.st_size
            meta = self._meta(fd, name, meta_key) if meta_key is not None else {}
            ours = is_our_meta(meta)
            if not (is_run or ours):
                return None           # not a recording: not ours to count or remove
            segs.sort(key=lambda s: s.seq)
            run = _Run(name, segs, kept, reports, newest, current=current, ours=ours)
            if not current:
                run.alive = _looks_alive(meta, self.clock())
                if run.alive and segs:
                    last = segs.pop()              # its writer may still append to it
                    run.kept_bytes += last.size
                if run.alive:
                    run.kept_bytes += sum(r.size for r in run.reports)
                    run.reports = []
            return run
        finally:
            if fd != root_fd:
                os.close(fd)

    def _meta(self, run_fd: int, name: str, key: tuple[int, int]) -> dict:
        cached = self._meta_cache.get(name)
        if cached and cached[0] == key:
            return cached[1]
        meta = read_json_at(run_fd, META_FILE)
        self._meta_cache[name] = (key, meta)
        return meta

    # -- pruning
    def _prune(self, root_fd: int, runs: list[_Run], root_bytes: int) -> bool:
        """Remove by age, then by size (oldest closed segment first, across runs), then runs left
        empty or old as a whole. Returns whether anything was removed."""
        removed: dict[str, list[_Segment]] = {}
        now = self.clock()
        cutoff = now - self.max_age_s if self.max_age_s is not None else None

        def total() -> int:
            return root_bytes + sum(r.bytes() for r in runs)

        def remove_segment(run: _Run) -> None:
            seg = run.segments.pop(0)
            if self._unlink(root_fd, run.name, seg.name):
                removed.setdefault(run.name, []).append(seg)
                self.pruned.segments += 1
                self.pruned.bytes += seg.size
            else:
                run.kept_bytes += seg.size        # could not remove it: it stays, and counts

        def remove_report(run: _Run) -> None:
            rep = run.reports.pop(0)
            if self._unlink(root_fd, run.name, f"{REPORTS_DIR}/{rep.name}"):
                self.pruned.reports += 1
                self.pruned.bytes += rep.size
            else:
                run.kept_bytes += rep.size

        if cutoff is not None:
            for run in runs:
                while run.segments and run.segments[0].mtime < cutoff:
                    remove_segment(run)
                while run.reports and run.reports[0].mtime < cutoff:
                    remove_report(run)        # a run recording for weeks: its old pods' reports
        if self.max_bytes is not None:
            while total() > self.max_bytes:
                fronts = [r for r in runs if r.segments]
                if fronts:
                    # the oldest closed segment across all runs; a run's own segments go in order
                    remove_segment(min(fronts, key=lambda r: (r.segments[0].mtime, r.name, r.segments[0].seq)))
                    continue
                # no events left to remove but the current segment: the oldest reports (a few KB each) go
                # before the cap would have to close and drop the segment being written
                fronts = [r for r in runs if r.reports]
                if not fronts:
                    break
                remove_report(min(fronts, key=lambda r: (r.reports[0].mtime, r.name)))
        removed_runs = 0
        if not self._single:
            for run in list(runs):
                if run.current or run.alive or not run.ours:
                    continue
                old = cutoff is not None and run.newest < cutoff
                if (run.segments and not old) or not self._rmtree(root_fd, run.name):
                    continue
                # a finished run with no events left (its meta.json and reports/ alone), or all old
                self.pruned.runs += 1
                self.pruned.segments += len(run.segments)
                self.pruned.bytes += run.bytes()
                removed.pop(run.name, None)
                runs.remove(run)
                removed_runs += 1
        for name, segs in removed.items():
            n, b, until = len(segs), sum(s.size for s in segs), max(s.mtime for s in segs)
            if (self.root / name if name else self.root) == self.run:
                self.own_pruned.segments += n
                self.own_pruned.bytes += b
                self.own_pruned_until = max(self.own_pruned_until or until, until)
            else:
                self._note_pruned(root_fd, name, n, b, until)
        return bool(removed) or removed_runs > 0

    def _unlink(self, root_fd: int, run: str, name: str) -> bool:
        """Remove run/name (name may be reports/<file>), every directory opened without following links."""
        fds = []
        try:
            fd = root_fd
            *dirs, base = [p for p in (run, *name.split("/")) if p]
            for d in dirs:
                fd = os.open(d, DIR_FLAGS, dir_fd=fd)
                fds.append(fd)
            try:
                os.unlink(base, dir_fd=fd)
            except FileNotFoundError:
                if is_columnar(base) or segment_seq(base) is None:
                    raise
                # compacted since the scan: the same segment under its columnar name
                os.unlink(columnar_name(base), dir_fd=fd)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            self._error(f"cannot remove {self.root / run / name}: {exc.strerror}")
            return False
        finally:
            for fd in fds:
                os.close(fd)

    def _rmtree(self, root_fd: int, name: str) -> bool:
        errors: list[str] = []
        # fd-based and symlink-safe on Linux (shutil.rmtree.avoids_symlink_attacks)
        shutil.rmtree(name, dir_fd=root_fd, onerror=lambda f, p, e: errors.append(f"{p}: {e[1]}"))
        if errors:
            self._error(f"cannot remove {self.root / name}: {errors[0]}")
        return not errors

    def _note_pruned(self, root_fd: int, name: str, n: int, nbytes: int, until: float) -> None:
        """Say in a finished run's own meta.json what was removed from it (its reader notes it)."""
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=root_fd)
        except OSError:
            return
        try:
            meta = read_json_at(fd, META_FILE)
            if not meta:
                return
            p = meta.get("pruned") if isinstance(meta.get("pruned"), dict) else {}
            meta["pruned"] = {"segments": int(p.get("segments") or 0) + n, "bytes": int(p.get("bytes") or 0) + nbytes,
                              "until": max(float(p.get("until") or 0), until), "by": self.run.name}
            write_json_at(fd, META_FILE, meta)
        except OSError as exc:
            self._error(f"cannot note the pruning in {self.root / name / META_FILE}: {exc.strerror}")
        finally:
            os.close(fd)

    def _oldest_kept(self, root_fd: int, runs: list[_Run], current_seq: int) -> float | None:
        fronts = [r for r in runs if r.segments]
        if fronts:
            run = min(fronts, key=lambda r: (r.segments[0].mtime, r.name))
            seg = run.segments[0].name
        elif any(r.current for r in runs):
            run, seg = next(r for r in runs if r.current), segment_name(current_seq)
        else:
            return None
        if not run.name:
            return first_event_ts(root_fd, seg)
        try:
            fd = os.open(run.name, DIR_FLAGS, dir_fd=root_fd)
        except OSError:
            return None
        try:
            return first_event_ts(fd, seg)
        finally:
            os.close(fd)

    def _error(self, message: str) -> None:
        self.errors += 1
        if self.last_error != message and self.warn is not None:
            self.warn(f"disk cap: {message}; will retry")
        self.last_error = message

    def meta(self) -> dict[str, Any]:
        """meta.json's `disk` block."""
        out: dict[str, Any] = {
            "root": str(self.root), "max_bytes": self.max_bytes, "max_age_s": self.max_age_s,
            "used_bytes": self.used_bytes, "runs": self.runs,
            "pruned": {**self.pruned.as_dict(), "oldest_kept_ts": self.oldest_kept_ts},
        }
        if self.errors:
            out["errors"] = {"count": self.errors, "last": self.last_error}
        return out

    def own_meta(self) -> dict[str, Any] | None:
        """meta.json's `pruned` block: what was removed from the run being recorded (None: nothing)."""
        if not self.own_pruned.segments:
            return None
        return {**self.own_pruned.as_dict(), "until": self.own_pruned_until}


def _files(parent_fd: int, name: str) -> list[_Segment]:
    """The regular files directly in parent/name (reports/), oldest first."""
    out = []
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    try:
        with os.scandir(fd) as it:
            for e in it:
                try:
                    if e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        out.append(_Segment(0, e.name, st.st_size, st.st_mtime))
                except OSError:
                    continue
    finally:
        os.close(fd)
    return sorted(out, key=lambda f: (f.mtime, f.name))


MAX_META_BYTES = 4 << 20          # a recorder's meta.json is a few KB; a bigger one is not ours


def read_small_at(dir_fd: int, name: str, limit: int = MAX_META_BYTES, follow: bool = False) -> bytes | None:
    """The bytes of a regular file of the directory dir_fd, None when it is not one: not a regular
    file (a FIFO planted there is never waited on), a link (unless follow: then what it leads to,
    if that is a regular file), bigger than limit, or unreadable."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, 1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None if size > limit else b"".join(chunks)


def read_small_file(path: Path, limit: int = MAX_META_BYTES) -> bytes | None:
    """read_small_at of a path, a link to a regular file followed (meta.json, an export's sidecar:
    recordings kept in git-annex or DVC are links); None when it is not a regular file of at most
    limit bytes, or cannot be read."""
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return read_small_at(dir_fd, path.name, limit, follow=True)
    finally:
        os.close(dir_fd)


def read_json_at(dir_fd: int, name: str) -> dict:
    """A JSON object file of the directory dir_fd (read_small_at), {} when it is not one."""
    data = read_small_at(dir_fd, name)
    if data is None:
        return {}
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):          # RecursionError: "[[[[..." nested past the stack
        return {}
    return obj if isinstance(obj, dict) else {}


def is_our_meta(meta: dict) -> bool:
    """A recorder's meta.json (sigtrace.events.writer.base_meta), not some other program's file."""
    return all(k in meta for k in ("schema_version", "backend", "start", "node"))


def _looks_alive(meta: dict, now: float) -> bool:
    """Another recorder still writing this run: no end time and a recent sign of life."""
    if not meta or meta.get("end") is not None:
        return False
    alive, every = meta.get("alive_at"), meta.get("alive_every_s")
    if not isinstance(alive, (int, float)):
        return False
    every = float(every) if isinstance(every, (int, float)) else 5.0
    return alive + 3 * every >= now


# ---- sizes and durations on the command line ------------------------------------------------------
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "ki": 1 << 10, "kib": 1 << 10, "mi": 1 << 20, "mib": 1 << 20,
               "gi": 1 << 30, "gib": 1 << 30, "ti": 1 << 40, "tib": 1 << 40}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_NUMBER = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
UNLIMITED = ("none", "unlimited", "off")


def _parse_amount(text: str, units: dict[str, float], what: str, examples: str) -> float | None:
    """A positive number with one of units, or none/unlimited (None). Raises ValueError."""
    if text.strip().lower() in UNLIMITED:
        return None
    m = _NUMBER.fullmatch(text)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in units:
        raise ValueError(f"{text!r} is not a {what} (e.g. {examples}, or none)")
    value = float(m.group(1)) * units[unit]
    if value <= 0:
        raise ValueError(f"{text!r}: must be more than 0 (or none for no limit)")
    return value


def parse_size(text: str) -> int | None:
    """'1GiB', '512Mi', '64MiB', '2G' (Kubernetes' convention: Gi = 2^30, G = 10^9), a plain number
    of bytes, or none/unlimited (None). Raises ValueError."""
    value = _parse_amount(text, _SIZE_UNITS, "size", "1GiB, 512MiB, 2G")
    if value is None:
        return None
    if int(value) <= 0:
        raise ValueError(f"{text!r}: must be more than 0 (or none for no limit)")
    return int(value)


def parse_duration(text: str) -> float | None:
    """'7d', '12h', '30m', '90s', '2w', a plain number of seconds, or none/unlimited (None)."""
    return _parse_amount(text, _DURATION_UNITS, "duration", "7d, 12h, 30m")

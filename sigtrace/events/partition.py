"""A recording split by pod, for reports in bounded memory.

Pods are independent once their events are together: a pod's report reads its own events and the
signals sent to it (target_pod_uid), nothing of another pod's. So a big recording is read in chunks
of its files (pyarrow's multithreaded JSON reader on each), each chunk's rows are spilled to one of
a few temporary Arrow files by a hash of their pod (a signal to another pod's process to both), and
each of those parts is then read back alone: the peak is one chunk while reading and one part while
reporting, whatever the recording's size. What needs every event (the kinds present, the last
event, every pod's lifecycle rows) is gathered while reading, a few values per chunk.

Rows keep the labels the whole recording's frame gives them (their place in time order, as
read_recording numbers them), so the evidence a report cites is the same event either way. Events
of no pod (host processes) are in no part: no pod's report reads them.

What the tolerant reader skips (a line that is not JSON, a value out of range, a damaged columnar
file) is skipped here too, chunk by chunk, counted and noted in its words (CleanChunks' tolerant
mode): a recording copied from elsewhere with a bad line is read in bounded memory all the same.
"""
from __future__ import annotations

import itertools
import os
import tempfile
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from . import schema as S
from .columnar import READ_FLAGS, arrow_schema, is_columnar, read_tables, recorded_bytes
from .fast_reader import table_frame
from .jsonl_tables import (CHUNK_BYTES, complete_part, json_chunks, json_tables, one_event_per_line, parse_options,
                           table_is_clean)
from .reader import checked_lines, iter_columnar_rows, open_counted, problem_notes
from .source import Source, lost_note, unfinished_note
from .validate import table_is_valid
from .writer import _stderr_warning

# a part holds about this much of the recording's JSON (~200k events): what one report pass holds
PART_BYTES = 64 << 20
MAX_PARTS = 256
CHUNK_ROWS = 100_000            # routed by pod at once (~30 MB of JSON): joined from smaller batches
TOLERANT_ROWS = 20_000          # events checked one by one, held as dicts, before they become a table
ROW_POSITION = "__row"           # the column carrying a row's position in the files, through the spill


class NotClean(Exception):
    """A part holds a value the tolerant reader would skip: read the recording whole instead."""


class SpillFailed(Exception):
    """The temporary part files could not be written (disk full, too many open files)."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(os.strerror(exc.errno) if exc.errno else str(exc))


@contextmanager
def _spilling() -> Iterator[None]:
    # an OSError here is the spill's, not the recording's (which the tolerant reader reports)
    try:
        yield
    except OSError as exc:
        raise SpillFailed(exc) from exc


def _close_quietly(writers: dict[int, Any]) -> None:
    """After a failure: the parts are thrown away, so a close that fails as well changes nothing."""
    while writers:
        try:
            writers.popitem()[1].close()
        except OSError:
            pass


def spill_where() -> str:
    """Where spill files go: $SIGTRACE_TMPDIR, else the system's temporary directory."""
    return os.environ.get("SIGTRACE_TMPDIR") or tempfile.gettempdir()


def spill_dir(prefix: str) -> tempfile.TemporaryDirectory:
    """A new private (mode 0700, unpredictable name) directory for spill files, under spill_where().
    OSError when there is none to be had."""
    return tempfile.TemporaryDirectory(prefix=prefix, dir=os.environ.get("SIGTRACE_TMPDIR"))


def _spill_warning(why: SpillFailed) -> None:
    """The report stays right (and complete: no note in it), but takes the recording's size in memory."""
    _stderr_warning(f"could not spill parts to {spill_where()} ({why}); reading the recording whole (more memory); "
                    "set SIGTRACE_TMPDIR to a roomier place")


@dataclass
class Summary:
    """What the per-pod work needs of the whole recording."""
    events: int
    kinds: frozenset[str]
    last_ts: float
    lifecycle: pd.DataFrame         # every pod_lifecycle row, labelled like the parts' rows


@dataclass
class PodParts:
    """A recording as parts that each hold every event of their pods (pods: uid -> part)."""
    meta: dict[str, Any]
    incomplete: list[str]
    source: str
    summary: Summary
    n_parts: int
    _dir: tempfile.TemporaryDirectory
    _rank: np.ndarray | None = None     # row label by position in the files, when they are out of time order
    _memory: list = field(default_factory=list)

    def units(self) -> list[int]:
        """The parts there are, each read on its own by frame() (in this process or a worker's)."""
        return [i for i in range(self.n_parts) if (Path(self._dir.name) / f"{i}.arrow").exists()]

    def frame(self, i: int) -> tuple[pd.DataFrame, frozenset[str]]:
        """Part i as (events frame in time order, labelled by row; the uids of the pods it holds
        whole), its spill file removed. Raises NotClean when the part has a value the tolerant
        reader would skip."""
        import pyarrow as pa
        path = Path(self._dir.name) / f"{i}.arrow"
        with pa.memory_map(str(path)) as src:
            table = pa.ipc.open_stream(src).read_all()
        path.unlink()
        uids = _uids(table, i, self.n_parts)
        return labelled_frame(table, self._rank, f"part {i}"), uids

    def close(self) -> None:
        self._dir.cleanup()


class FrameParts:
    """A recording already in memory (an export's node, a tolerant read) as parts by pod, for
    reports whose peak is one part's correlation rather than the whole frame's."""

    def __init__(self, events: pd.DataFrame, meta: dict[str, Any], incomplete: list[str], n_parts: int) -> None:
        self.meta, self.incomplete, self.n_parts = meta, incomplete, n_parts
        self._events = events
        kinds = {str(k) for k in pd.unique(events["kind"].astype(object).dropna())}
        self.summary = Summary(len(events), frozenset(kinds), float(events["ts"].max()),
                               events[events["kind"] == S.POD_LIFECYCLE])
        self._own = frame_part_codes(events["pod_uid"], n_parts)
        self._tgt = frame_part_codes(events["target_pod_uid"], n_parts)

    def units(self) -> list[int]:
        """The parts that hold rows."""
        present = np.unique(np.concatenate([self._own, self._tgt]))
        return [int(i) for i in present if i >= 0]

    def frame(self, i: int) -> tuple[pd.DataFrame, frozenset[str]]:
        """Part i's rows (a signal across parts is in both), the uids of the pods it holds whole."""
        part = self._events[(self._own == i) | (self._tgt == i)]
        uids = {str(u) for col in ("pod_uid", "target_pod_uid") for u in pd.unique(part[col].dropna()) if u}
        return part, frozenset(u for u in uids if part_of(u, self.n_parts) == i)

    def close(self) -> None:
        self._events = None


def labelled_frame(table, rank: np.ndarray | None, what: str) -> pd.DataFrame:
    """Rows carrying their position in the files (ROW_POSITION) as the events frame, labelled by row (the
    whole recording's time order: rank, when the files are out of order) and sorted by it; the
    table is consumed. NotClean when a value is one the tolerant reader would skip."""
    seq = table.column(ROW_POSITION).to_numpy()
    table = table.drop_columns([ROW_POSITION])
    rows = seq if rank is None else rank[seq]
    if rank is not None and len(rows) and not (rows[1:] >= rows[:-1]).all():
        order = np.argsort(rows, kind="stable")
        table, rows = table.take(order), rows[order]
    df = table_frame(table, pd.Index(rows))
    del table
    if df is None:
        raise NotClean(what)
    return df


def frame_part_codes(col: pd.Series, n_parts: int) -> np.ndarray:
    codes, uniq = pd.factorize(col.astype(object) if not isinstance(col.dtype, pd.CategoricalDtype) else col)
    lookup = np.array([part_of(str(u), n_parts) if isinstance(u, str) and u else -1 for u in uniq] + [-1],
                      dtype=np.int64)
    return lookup[codes]           # a missing uid (code -1): the -1 at the end


def part_of(uid: str, n: int) -> int:
    return zlib.crc32(uid.encode()) % n


def _uids(table, i: int, n: int) -> frozenset[str]:
    return frozenset(v for v in table_uids(table) if part_of(v, n) == i)


def table_uids(table) -> set[str]:
    """The pods of an Arrow table of events: every pod_uid and target_pod_uid (correlate.build.pod_uids')."""
    import pyarrow.compute as pc
    return {v for name in ("pod_uid", "target_pod_uid") for v in pc.unique(table.column(name)).to_pylist() if v}


class CleanChunks:
    """A recording's events as pyarrow tables of at least min_rows each (but the last), in file
    order: iterating gives (table, position of its first row). Small pieces (a columnar segment's
    batches, a segment's last JSON chunk) are joined without copying, so that what routes them by
    pod (split_recording) runs once per ~100k events, not once per batch.

    Strict (the default): what the tolerant reader would not read as it is raises: NotClean
    (table_is_clean), jsonl_tables.NotOneEventPerLine and columnar.Unreadable (ValueErrors both),
    pyarrow.ArrowInvalid; a truncated last line of a JSONL file is left out, and said by notes().

    tolerant: nothing raises for the events themselves: a chunk (32 MB of a JSONL file) or a
    columnar segment's rest that pyarrow does not read clean (a line that is not JSON, an unknown
    field, a value out of range, a damaged file) is read by the tolerant reader's own checks
    (reader.checked_lines, reader.iter_columnar_rows), TOLERANT_ROWS events per table; the rows it
    skips are counted as it counts them, and notes() says so in its words and order. So a recording
    copied from elsewhere with one bad line is still read in bounded memory, into the same events."""

    def __init__(self, src: Source, min_rows: int = CHUNK_ROWS, *, tolerant: bool = False) -> None:
        self.src, self.min_rows, self.tolerant = src, min_rows, tolerant
        self.cut_lines: list[str] = []
        self.rows = 0
        self.problems: Counter = Counter()
        self.examples: dict[str, str] = {}
        self.removed: list[str] = []

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        held: list[Any] = []
        n = 0
        for table in self._tables():
            held.append(table)
            n += table.num_rows
            if n >= self.min_rows:
                yield self._joined(held, n)
                held, n = [], 0
        if held:
            yield self._joined(held, n)

    def _joined(self, tables: list[Any], n: int) -> tuple[Any, int]:
        import pyarrow as pa
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        at = self.rows
        self.rows += n
        return table, at

    def _tables(self) -> Iterator[Any]:
        for label, path in self.src.current_files():
            if self.tolerant:
                try:
                    tables = self._columnar(label, path) if is_columnar(path) else self._jsonl(label, path)
                    yield from (t for t in tables if t.num_rows)
                except FileNotFoundError:
                    # removed between listing and reading: the disk cap of a recorder that is running
                    self.removed.append(f"{label or path.name} was removed while being read (disk cap?)")
                continue
            for table in (read_tables(path) if is_columnar(path) else json_tables(label, path, self.cut_lines)):
                if not table.num_rows:
                    continue
                if not table_is_clean(table):
                    raise NotClean(str(path))
                yield table

    def _jsonl(self, label: str, path: Path) -> Iterator[Any]:
        fh = open_counted(path, self.problems, label)         # counted as the tolerant reader counts it
        if fh is None:
            return
        with fh:
            yield from self._jsonl_file(label, fh)

    def _jsonl_file(self, label: str, fh) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.json as pajson
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return
        complete, cut_line = complete_part(fh, size)
        fh.seek(0)
        options, first = parse_options(), 1
        for chunk, lines, blank in json_chunks(fh, complete, CHUNK_BYTES):
            try:
                table = pajson.read_json(chunk, parse_options=options)
            except pa.ArrowInvalid:
                table = None
            if table is not None and one_event_per_line(table, lines, blank) and table_is_clean(table) and \
                    table_is_valid(table):
                yield table
            else:
                chunk.seek(0)
                data = chunk.read()
                yield from self._checked(checked_lines(_lines_of(data), first, self.problems, self.examples, label))
            first += lines
        if cut_line is not None:
            key = "truncated last line"
            self.problems[key] += 1
            self.examples.setdefault(key, f"{label} line {cut_line}" if label else f"line {cut_line}")

    def _columnar(self, label: str, path: Path) -> Iterator[Any]:
        import pyarrow as pa
        try:
            fd = os.open(path, READ_FLAGS)
        except FileNotFoundError:
            raise
        except OSError:
            fd = None                # a link, no permission: the tolerant reader says what it could not
        try:
            done = 0
            try:
                for table in (read_tables(fd) if fd is not None else ()):
                    if not (table_is_clean(table) and table_is_valid(table)):
                        break
                    done += table.num_rows
                    yield table
                else:
                    if fd is not None:
                        return
            except (ValueError, OSError, pa.ArrowInvalid):   # columnar.Unreadable: the tolerant reader counts it
                pass
            # the rest of the file as the tolerant reader reads it (its first `done` rows were clean),
            # from the same open file: one removed meanwhile is not half read and half missing
            if fd is not None:
                try:
                    os.lseek(fd, 0, os.SEEK_SET)
                except OSError:
                    pass             # a FIFO put there: the tolerant reader says it is not a regular file
            rows = iter_columnar_rows(path, self.problems, self.examples, label, fd=fd)
            yield from self._checked(itertools.islice(rows, done, None))
        finally:
            if fd is not None:
                os.close(fd)

    def _checked(self, events: Iterator[dict]) -> Iterator[Any]:
        import pyarrow as pa
        schema = arrow_schema()
        batch: list[dict] = []
        for event in events:
            batch.append(event)
            if len(batch) >= TOLERANT_ROWS:
                yield pa.Table.from_pylist(batch, schema=schema)
                batch = []
        if batch:
            yield pa.Table.from_pylist(batch, schema=schema)

    def notes(self) -> list[str]:
        """What the reading left out, as the tolerant reader's Recording.incomplete says it."""
        if self.tolerant:
            return self.removed + problem_notes(self.problems, self.examples)
        if not self.cut_lines:
            return []
        return [f"skipped {len(self.cut_lines)} truncated last line (first at {self.cut_lines[0]})"]


def _lines_of(data: bytes) -> list[bytes]:
    """data's lines, each with its newline (but a last one without), split at newlines only."""
    parts = data.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _recorded_bytes(path: Path) -> int:
    """The JSON a segment holds or held (columnar.recorded_bytes), 0 for one that cannot be read
    (a link, no permission: the tolerant chunks count it) or is gone."""
    try:
        return recorded_bytes(path)
    except OSError:
        return 0


def chunks_readable(src: Source) -> bool:
    """Whether CleanChunks can read src: pyarrow and its JSON reader installed, meta.json an object."""
    from importlib.util import find_spec
    try:
        found = find_spec("pyarrow") is not None and find_spec("pyarrow.json") is not None
    except ImportError:
        found = False
    return found and isinstance(src.meta, dict)


def split_recording(src: Source, part_bytes: int = PART_BYTES,
                    progress: Callable[[str, int, int | None], None] | None = None) -> PodParts | None:
    """The recording as parts by pod, or None when it is small enough to read whole (one part:
    read_recording's frame is the same thing, without the spill), pyarrow is missing or the files
    cannot be read. progress(what, done, total): told as events are read."""
    if not chunks_readable(src):
        return None
    import pyarrow as pa
    import pyarrow.compute as pc
    meta = src.meta
    sizes = [_recorded_bytes(p) for _, p in src.current_files()]
    # one open spill file per part: a cap keeps a huge root under the open-files limit (parts grow instead)
    n_parts = min(sum(sizes) // part_bytes + 1, MAX_PARTS)
    if n_parts < 2:
        return None
    incomplete = list(src.notes)
    try:
        with _spilling():
            tmp = spill_dir("sigtrace-parts-")
    except SpillFailed as exc:
        _spill_warning(exc)
        return None
    writers: dict[int, Any] = {}
    tables = CleanChunks(src, tolerant=True)       # what the tolerant reader skips is skipped here too
    whole = WholeFacts()
    try:
        for table, base in tables:
            n = table.num_rows
            seq = whole.add(table, base)
            table = table.append_column(ROW_POSITION, seq)
            routes, unrouted = pod_routes(table, n_parts)
            # rows of no pod are checked here as a whole read checks them (range, vocabulary):
            # a bad one sends the recording to the tolerant reader, which lists what it skips
            if pc.any(unrouted).as_py() and table_frame(table.filter(unrouted).drop_columns([ROW_POSITION])) is None:
                raise NotClean(str(src.directory))
            for part, piece in routes:
                w = writers.get(part)
                with _spilling():
                    if w is None:
                        w = writers[part] = pa.ipc.new_stream(str(Path(tmp.name) / f"{part}.arrow"), table.schema)
                    w.write_table(piece)
            if progress:
                progress("reading events", base + n, None)
        with _spilling():
            while writers:                  # a part's last bytes go out as it is closed
                writers.popitem()[1].close()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError, NotClean):
        _close_quietly(writers)
        tmp.cleanup()
        return None
    except SpillFailed as exc:
        _close_quietly(writers)             # first: removing the files needs descriptors (EMFILE)
        tmp.cleanup()
        _spill_warning(exc)
        return None
    finally:
        _close_quietly(writers)
    done = whole.finish(meta, incomplete, tables)
    if done is None:
        tmp.cleanup()
        return None
    summary, rank = done
    return PodParts(meta, incomplete, str(src.directory), summary, n_parts, tmp, rank)


class WholeFacts:
    """What every pod's report needs of the whole recording (Summary), gathered chunk by chunk as
    CleanChunks gives them: a few values per chunk, the lifecycle rows, every row's time (8 bytes
    an event, to label rows in time order when the files are not)."""

    def __init__(self) -> None:
        self.ts_parts: list[np.ndarray] = []
        self.kinds: set[str] = set()
        self.lifecycle: list[Any] = []
        self.last: tuple[float, int, Any] | None = None       # (ts, position, one-row table)
        self.schema = None

    def add(self, table, base: int):
        """Take in a chunk whose first row is at position base; returns its rows' positions (ROW_POSITION)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        n = table.num_rows
        seq = pa.array(np.arange(base, base + n, dtype=np.int64))
        ts = table.column("ts").to_numpy()
        self.ts_parts.append(ts)
        self.kinds |= set(pc.unique(table.column("kind")).to_pylist())
        top = ts.max()
        at = n - 1 - int(np.argmax(ts[::-1] == top))      # the last row at the latest time
        if self.last is None or top >= self.last[0]:
            self.last = (float(top), base + at, table.slice(at, 1))
        lc = pc.equal(table.column("kind"), S.POD_LIFECYCLE)
        if pc.any(lc).as_py():
            self.lifecycle.append(table.filter(lc).append_column(ROW_POSITION, seq.filter(lc)))
        self.schema = table.schema.append(pa.field(ROW_POSITION, pa.int64()))
        return seq

    def finish(self, meta: dict[str, Any], incomplete: list[str],
               tables: CleanChunks) -> tuple[Summary, np.ndarray | None] | None:
        """(the Summary, each position's rank in time order or None when the files are in order);
        None when nothing was read or a lifecycle or last row is not clean. incomplete gets what
        the reading left out (a cut last line), lost events and a recorder that did not stop."""
        import pyarrow as pa
        if not tables.rows or self.last is None:
            return None
        incomplete += tables.notes()
        if lost_note(meta):
            incomplete.append(lost_note(meta))
        ts_all = np.concatenate(self.ts_parts)
        self.ts_parts.clear()
        rank = None
        if not (ts_all[1:] >= ts_all[:-1]).all():
            # the inverse of the sorting permutation, by sorting it: runs of rows in order make that
            # ~20x faster than scattering positions (rank[order] = arange: a random write per row)
            rank = np.argsort(np.argsort(ts_all, kind="stable"), kind="stable")
        last_ts = float(ts_all.max())
        del ts_all
        at = self.last[1] if rank is None else int(rank[self.last[1]])
        last_frame = table_frame(self.last[2], pd.Index([at]))
        lc_table = pa.concat_tables(self.lifecycle) if self.lifecycle else self.schema.empty_table()
        try:
            lc_frame = labelled_frame(lc_table, rank, "pod_lifecycle rows")
        except NotClean:
            return None
        if last_frame is None:
            return None
        if unfinished_note(meta, last_frame):
            incomplete.append(unfinished_note(meta, last_frame))
        return Summary(tables.rows, frozenset(self.kinds), last_ts, lc_frame), rank


def pod_routes(table, n_parts: int) -> tuple[list[tuple[int, Any]], Any]:
    """[(part, rows of the chunk for that part, in chunk order)]: by pod_uid, and by target_pod_uid
    for a signal sent to another pod's process (the target's report cites it too); and the mask of
    rows no part gets. One take of the chunk sorted by part, then a zero-copy slice per part: a
    filter per part scanned and copied the whole chunk once for each of up to MAX_PARTS parts."""
    import pyarrow as pa
    own = _part_codes(table.column("pod_uid"), n_parts)
    tgt = _part_codes(table.column("target_pod_uid"), n_parts)
    rows = np.arange(len(own), dtype=np.int64)
    mine, also = own >= 0, (tgt >= 0) & (tgt != own)
    part = np.concatenate([own[mine], tgt[also]])
    idx = np.concatenate([rows[mine], rows[also]])
    order = np.lexsort((idx, part))                 # by part, each part's rows in chunk order
    part, idx = part[order], idx[order]
    sorted_rows = table.take(pa.array(idx))
    starts = np.flatnonzero(np.r_[True, part[1:] != part[:-1]]) if len(part) else np.array([], dtype=np.int64)
    ends = np.r_[starts[1:], len(part)]
    pieces = [(int(part[a]), sorted_rows.slice(int(a), int(b - a))) for a, b in zip(starts, ends)]
    return pieces, pa.array((own < 0) & (tgt < 0))


def _part_codes(col, n_parts: int) -> np.ndarray:
    """Each row's part by the uid in col, -1 for none."""
    enc = col.combine_chunks().dictionary_encode() if col.num_chunks != 1 else col.chunk(0).dictionary_encode()
    lookup = np.array([part_of(u, n_parts) if u else -1 for u in enc.dictionary.to_pylist()] + [-1], dtype=np.int64)
    import pyarrow.compute as pc
    return lookup[pc.fill_null(enc.indices, -1).to_numpy()]     # a missing uid: the -1 at the end

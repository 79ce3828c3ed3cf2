"""The export's events in bounded memory: each run read in chunks, spilled, and merged in ts order.

A first pass reads each run once, in chunks (partition.CleanChunks, tolerant: a chunk pyarrow does
not read as it is goes through the tolerant reader's checks, which skip and note what they skip),
each chunk checked as a whole read checks it and written to a temporary Arrow file, so that the
peak is one chunk whatever the recording's size. What needs the whole run is gathered on
the way, a few values per chunk: its pod_lifecycle rows (the name fill), the values of each
categorical column (the output's dictionaries), whether its ts are in order, its last event.

The second pass gives the rows in the order the whole-frame export (frame.export_frame) has them:
a run in ts order is read back as it is; one out of order is put in order through its ts array
(8 bytes an event) and a second spill by rank; several runs are merged chunk by chunk (stably: on
equal ts, the earlier run first, as a stable sort of their concatenation puts them).

A run is read whole by the tolerant reader when pyarrow is missing or its spill is refused by the
disk (full, a missing SIGTRACE_TMPDIR), which one warning line on stderr says, as report says it.
"""
from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from ..events.fast_reader import table_frame
from ..events.partition import CleanChunks, NotClean, SpillFailed, _close_quietly, _spill_warning, _spilling
from ..events.reader import read_recording
from ..events.schema import DTYPES, POD_LIFECYCLE
from ..events.source import Recording, Source, lost_note, plan_recording, unfinished_note
from .columns import NODE, POD_META_COLUMNS

CHUNK_ROWS = 1 << 17            # rows per chunk of the second pass (~40 MB as a frame)
MAX_BUCKETS = 256               # spill files open at once when putting a run in order
MIN_READ = 4096                 # rows a run is read back in at least (and the spill's batch size)
CATEGORICAL = [c for c, d in DTYPES.items() if d == "category"]
KEYS = ("pod_uid", "container_id")     # what the name fill looks names up by
TEXT = (*POD_META_COLUMNS, *KEYS)       # text in a run's frame whose values the export needs
RUN = "__run"                           # merged's column: the row's run (its index in the runs given)


class NotStreamable(Exception):
    """A run whose columns the tolerant reader could not type: the whole-frame export handles it."""


@dataclass
class Run:
    """One run after the first pass: what the export needs of it whole, and its events as chunks."""
    rec: Recording                  # meta, notes and source; events holds one row only
    events: int
    first_ts: float
    lifecycle: pd.DataFrame         # its pod_lifecycle rows, in its ts order
    values: dict[str, set] = field(default_factory=dict)    # distinct values: CATEGORICAL and TEXT
    chunks: Callable[[int], Iterator[pd.DataFrame]] = lambda rows: iter(())   # in frames of about rows


# ---- first pass ----------------------------------------------------------------------------------
class _Gather:
    """What a run's chunks tell about the whole run, collected as they pass."""

    def __init__(self) -> None:
        self.n = 0
        self.ts: list[np.ndarray] = []
        self.lifecycle: list[pd.DataFrame] = []
        self.lc_pos: list[np.ndarray] = []
        self.values: dict[str, set] = defaultdict(set)
        self.last: tuple[float, int, pd.DataFrame] | None = None     # (ts, position, one-row frame)

    def add(self, df: pd.DataFrame) -> None:
        ts = df["ts"].to_numpy(dtype=float)
        self.ts.append(ts)
        lc = (df["kind"] == POD_LIFECYCLE).to_numpy(dtype=bool, na_value=False)
        if lc.any():
            self.lifecycle.append(df[lc])
            self.lc_pos.append(self.n + np.flatnonzero(lc))
        for col in CATEGORICAL:
            self.values[col] |= {v for v in df[col].cat.categories if isinstance(v, str)}
        for col in TEXT:
            self.values[col] |= {v for v in pd.unique(df[col].dropna()) if isinstance(v, str)}
        top = ts.max()
        at = len(ts) - 1 - int(np.argmax(ts[::-1] == top))      # the last row at the latest time
        if self.last is None or top >= self.last[0]:
            # a copy: a slice is a view that would keep the whole chunk alive for the rest of the export
            self.last = (float(top), self.n + at, df.iloc[at:at + 1].copy())
        self.n += len(df)

    def all_ts(self) -> np.ndarray:
        return np.concatenate(self.ts) if self.ts else np.empty(0)

    def lifecycle_in_order(self, template: pd.DataFrame) -> pd.DataFrame:
        """The run's pod_lifecycle rows in its (stable) ts order."""
        if not self.lifecycle:
            return template.iloc[:0]
        lc = pd.concat(self.lifecycle, ignore_index=True)
        pos = np.concatenate(self.lc_pos)
        return lc.iloc[np.lexsort((pos, lc["ts"].to_numpy(dtype=float)))].reset_index(drop=True)


def read_runs(runs: list[Path], tmp: Path, chunk_rows: int = CHUNK_ROWS,
              progress: Callable[[str, int, int | None], None] | None = None) -> list[Run]:
    """First pass over every run. Raises NotStreamable for a run the whole-frame export must read."""
    out: list[Run] = []
    events = 0
    for i, run in enumerate(runs):
        out.append(read_run(run, tmp / f"run-{i}", chunk_rows))
        events += out[-1].events
        if progress:
            progress("recordings read", len(out), len(runs))
            progress("events read", events, None)
    return out


def read_run(run: Path, spill: Path, chunk_rows: int = CHUNK_ROWS) -> Run:
    """A run's first pass: spilled in chunks to spill.*, or read whole (see the module docstring)."""
    src = plan_recording(run)           # a DataError here is what read_recording would raise
    got = _spill_clean(src, spill, chunk_rows)
    if got is not None:
        return got
    rec = read_recording(run, fast=False)
    df = rec.events
    if any(str(df[c].dtype) != d for c, d in DTYPES.items()):
        raise NotStreamable(str(run))
    gather = _Gather()
    gather.add(df)

    def chunks(rows: int) -> Iterator[pd.DataFrame]:
        for start in range(0, len(df), rows):
            yield df.iloc[start:start + rows]
    return Run(Recording(df.iloc[:1], rec.meta, rec.incomplete, rec.source), len(df), float(df["ts"].iloc[0]),
               gather.lifecycle_in_order(df), dict(gather.values), chunks)


def _spill_clean(src: Source, spill: Path, chunk_rows: int) -> Run | None:
    """The Run read_recording would read, its events spilled to spill.arrow: what the tolerant reader
    skips is skipped and noted chunk by chunk (CleanChunks, tolerant); None when pyarrow is missing,
    the files cannot be read or the spill failed (said on stderr)."""
    try:
        import pyarrow as pa
        import pyarrow.json  # noqa: F401  (CleanChunks reads with it)
    except ImportError:
        return None
    if not isinstance(src.meta, dict):
        return None
    gather, tables = _Gather(), CleanChunks(src, tolerant=True)
    path = spill.with_suffix(".arrow")
    writer = None
    try:
        for table, _ in tables:
            with _spilling():
                if writer is None:
                    writer = pa.ipc.new_stream(str(path), table.schema)
                # small batches: the merge reads a run back in a share of a chunk (merged)
                writer.write_table(table, max_chunksize=min(chunk_rows, MIN_READ))
            df = table_frame(table)         # checks range and vocabulary as a whole read does
            if df is None:
                return None
            gather.add(df)
            del df, table
        with _spilling():
            writer, last = None, writer
            if last is not None:
                last.close()                    # its last bytes go out as it is closed
    except SpillFailed as exc:
        return _given_up(spill, exc)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError, NotClean):
        return None
    finally:
        _close_quietly({0: writer} if writer is not None else {})
    if not gather.n:
        return None
    try:
        return _clean_run(src, gather, path, spill, tables.notes(), chunk_rows)
    except SpillFailed as exc:
        return _given_up(spill, exc)


def _given_up(spill: Path, why: SpillFailed) -> None:
    """The disk refused the run's spill: its files go (they hold room the next run needs), and the
    run is read whole (None: the tolerant reader's), which stderr says once."""
    for path in spill.parent.glob(f"{spill.name}.*"):
        path.unlink(missing_ok=True)
    _spill_warning(why)
    return None


def _clean_run(src: Source, gather: _Gather, path: Path, spill: Path, read_notes: list[str],
               chunk_rows: int) -> Run:
    meta, incomplete = src.meta, list(src.notes) + read_notes
    if lost_note(meta):
        incomplete.append(lost_note(meta))
    ts = gather.all_ts()
    last = gather.last[2]                   # its last event in ts order: the whole frame's last row
    if unfinished_note(meta, last):
        incomplete.append(unfinished_note(meta, last))
    if (ts[1:] >= ts[:-1]).all():
        def chunks(rows: int) -> Iterator[pd.DataFrame]:
            return _read_back(path, rows)
    else:
        # the inverse permutation by sorting it: runs in order make that ~20x faster than a scatter
        rank = np.argsort(np.argsort(ts, kind="stable"), kind="stable")
        with _spilling():
            buckets = _spill_by_rank(path, rank, spill, max(chunk_rows, math.ceil(len(ts) / MAX_BUCKETS)))

        def chunks(rows: int) -> Iterator[pd.DataFrame]:
            return _read_buckets(buckets, rows)
    rec = Recording(last, meta, incomplete, str(src.directory))
    return Run(rec, gather.n, float(ts.min()), gather.lifecycle_in_order(last), dict(gather.values), chunks)


def _frame(table) -> pd.DataFrame:
    df = table_frame(table)
    if df is None:          # checked in the first pass: the spill file changed under us
        raise OSError("a temporary spill file changed while being read back")
    return df


def _batches(path: Path) -> Iterator[Any]:
    """The record batches of a spill file, one at a time (read, not mapped: mapped pages count in RSS)."""
    import pyarrow as pa
    with pa.OSFile(str(path)) as fh:
        yield from pa.ipc.open_stream(fh)


def _read_back(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """A run spilled in ts order, as frames of about chunk_rows rows."""
    import pyarrow as pa
    acc, n = [], 0
    for batch in _batches(path):
        acc.append(batch)
        n += batch.num_rows
        if n >= chunk_rows:
            yield _frame(pa.Table.from_batches(acc))
            acc, n = [], 0
    if acc:
        yield _frame(pa.Table.from_batches(acc))


_RANK = "__rank"


def _spill_by_rank(path: Path, rank: np.ndarray, spill: Path, bucket_rows: int) -> list[Path]:
    """A run spilled out of order, spilled again by its rows' places in ts order: bucket k holds the
    ranks k*bucket_rows.. (k+1)*bucket_rows-1, so each can be put in order alone.
    Disk: while the buckets are written the first spill is still there (it is one stream file, read
    to its end and removed only then), so such a run needs twice its spill's size for a moment."""
    import pyarrow as pa
    writers: dict[int, Any] = {}
    paths: dict[int, Path] = {}
    pos = 0
    try:
        for batch in _batches(path):
            r = rank[pos:pos + batch.num_rows]
            pos += batch.num_rows
            table = pa.Table.from_batches([batch]).append_column(_RANK, pa.array(r))
            bucket = r // bucket_rows
            for k in np.unique(bucket):
                if k not in writers:
                    paths[k] = spill.with_suffix(f".rank-{k}.arrow")
                    writers[k] = pa.ipc.new_stream(str(paths[k]), table.schema)
                writers[k].write_table(table.filter(pa.array(bucket == k)))
        while writers:
            writers.popitem()[1].close()
    finally:
        _close_quietly(writers)             # after a failure: the files go anyway (_given_up)
    path.unlink()
    return [paths[k] for k in sorted(paths)]


def _read_buckets(buckets: list[Path], chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    for bucket in buckets:
        table = pa.Table.from_batches(list(_batches(bucket)))
        order = np.argsort(table.column(_RANK).to_numpy(), kind="stable")
        table = table.drop_columns([_RANK]).take(pa.array(order))
        for start in range(0, table.num_rows, chunk_rows):
            yield _frame(table.slice(start, chunk_rows))


# ---- second pass: the runs merged in ts order ------------------------------------------------------
def merged(runs: list[tuple[Run, str]], chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Every run's events (with their node, and their run's index in runs as RUN) in the order of a
    stable sort by ts of the runs one after the other, as chunks. A run is read only once the merge
    reaches its first event, in a share of chunk_rows: the merge holds about one chunk of them all."""
    rows = share(chunk_rows, len(runs))
    yield from merge_sorted([_with_node(run.chunks(rows), node, i) for i, (run, node) in enumerate(runs)],
                            [run.first_ts for run, _ in runs])


def share(chunk_rows: int, streams: int) -> int:
    """Rows to read of each of streams merged at once: about chunk_rows in all, MIN_READ at least
    (fixed work per read), never more than chunk_rows."""
    return min(chunk_rows, max(MIN_READ, chunk_rows // max(streams, 1)))


def merge_sorted(streams: list[Iterator[pd.DataFrame]], bound: list[float]) -> Iterator[pd.DataFrame]:
    """Chunks of several streams, each in ts order, as one stream in the order of a stable sort by ts
    of the streams one after the other. bound: per stream, no row of it is earlier (-inf: unknown).
    Chunks of the streams must have the same dtypes (categories included) to stay categorical."""
    if len(streams) == 1:
        yield from streams[0]
        return
    bound = list(bound)
    bufs: list[deque] = [deque() for _ in streams]
    live = set(range(len(streams)))
    while live:
        i = min(live, key=lambda j: (bound[j], j))
        out = _take_before(bufs, bound[i])
        if out is not None:
            yield out
        nxt = next(streams[i], None)
        if nxt is None:
            live.discard(i)
        elif len(nxt):
            bufs[i].append(nxt)
            bound[i] = float(nxt["ts"].iloc[-1])
    out = _take_before(bufs, math.inf)
    if out is not None:
        yield out


def _with_node(chunks: Iterator[pd.DataFrame], node: str, run: int) -> Iterator[pd.DataFrame]:
    for df in chunks:
        df = df.copy(deep=False)
        df[NODE] = node
        df[RUN] = run
        yield df


def _take_before(bufs: list[deque], cut: float) -> pd.DataFrame | None:
    """The buffered rows with ts < cut (all: cut inf), taken out of the buffers, in stable ts order."""
    taken = []
    for buf in bufs:
        while buf:
            df = buf[0]
            ts = df["ts"].to_numpy(dtype=float)
            n = len(ts) if cut == math.inf else int(np.searchsorted(ts, cut, side="left"))
            if n == len(ts):
                taken.append(buf.popleft())
                continue
            if n:
                taken.append(df.iloc[:n])
                buf[0] = df.iloc[n:]
            break
    if not taken:
        return None
    df = pd.concat(taken, ignore_index=True) if len(taken) > 1 else taken[0].reset_index(drop=True)
    ts = df["ts"].to_numpy(dtype=float)
    if not (ts[1:] >= ts[:-1]).all():
        df = df.iloc[np.argsort(ts, kind="stable")].reset_index(drop=True)
    return df


"""The export as a Hive-partitioned Parquet dataset: DIR/node=<node>/date=<YYYY-MM-DD>/part-<run>.parquet.

DuckDB (`read_parquet('DIR/**/*.parquet', hive_partitioning = true)`), Spark, Trino and
pyarrow.dataset read it as is. Hive layout means the partition columns live in the path only: a
`node` column inside the files as well would make Spark refuse the dataset (duplicate column).
The date is the UTC day of each event's ts.

Node names come from the recorded meta.json (tenant data): each one becomes a directory name
through pyarrow's own Hive formatting, which URL-encodes the value (`../x` -> `node=..%2Fx`), so
no name can climb out of DIR or into another node's directory, and readers decode it back.

One part per recorder run and day, named by the run's start (meta.json `start`, the moment that
run of the recorder began: part-20251129T070610.000000Z.parquet). Exporting a run again (an
agent's recording that is still growing, or a run across midnight) replaces that run's part of
each day, so every event is in the dataset once and plain DuckDB or Spark count it once:

- the new part holds the rows of the old one as well as the new export's (a multiset union on
  the recorded fields): events the recorder pruned since the last export stay in the dataset;
- rows already in another part of the same node and day (a part written by an older sigtrace,
  named by a digest of its data, or an export that read several runs of the node together) are
  left out, so overlapping exports never count an event twice;
- the part is written to a new hidden file in the same directory (O_EXCL, never following a
  link), fsynced and renamed over the old one: a reader sees the old or the new part, never both
  or half of one; writers of one node and day take turns (flock on the directory).

Each part embeds the export's meta with its own run's node meta only (an export of several runs of
a node writes a part per run, each with that run's lost events and notes); analyze merges those per
run (the latest export of a run wins) and adds up the runs.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import math
import os
import pickle
import secrets
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from ..errors import OutputError, UsageProblem
from ..events.partition import spill_dir, spill_where
from ..events.segments import DIR_FLAGS
from ..events.writer import FILE_MODE, existing_output
from .columns import NODE, POD_META_COLUMNS
from .frame import add_meta
from .stream import CHUNK_ROWS, merge_sorted
from .write import ParquetSink

DATE = "date"
DIR_MODE = 0o750
NAME_MAX = 255          # bytes of one directory name on Linux filesystems
SECONDS_PER_DAY = 86400
EXPORTED_AT = "exported_at"      # in each part's node meta: which export of a run is the latest


@dataclass
class DatasetWrite:
    written: list[str] = field(default_factory=list)    # parts added or replaced, relative to DIR
    skipped: list[str] = field(default_factory=list)    # parts that already held these events


def is_dataset_target(path: str) -> bool:
    """--parquet DIR writes a dataset: an existing directory, or a path ending in '/'."""
    return path.endswith("/") or (os.path.isdir(path) and not os.path.islink(path))


def partitioning():
    """The dataset's Hive partitioning (node and date as strings): the writer and analyze share it."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    return ds.partitioning(pa.schema([(NODE, pa.string()), (DATE, pa.string())]), flavor="hive")


def run_key(node_meta: dict[str, Any]) -> str:
    """What identifies a recorder run: its start time (to the microsecond), else its source dirs."""
    start = node_meta.get("start")
    if isinstance(start, (int, float)) and not isinstance(start, bool) and math.isfinite(start):
        try:
            return datetime.fromtimestamp(start, timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        except (OverflowError, ValueError, OSError):
            pass
    sources = json.dumps(node_meta.get("sources"), sort_keys=True, default=str)
    return "nostart-" + hashlib.sha256(sources.encode()).hexdigest()[:16]


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def latest_runs(metas: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One meta per run (run_key) out of the metas parts embed: the latest export of each run (a
    run's lost events only grow), in start order."""
    runs: dict[str, dict] = {}
    for m in metas:
        old = runs.get(key := run_key(m))
        if old is None or _recency(m) > _recency(old):
            runs[key] = m
    return [runs[k] for k in sorted(runs)]


def _recency(meta: dict[str, Any]) -> tuple[float, int]:
    """Which of two exports of a run is the later one (embedded metas are data from elsewhere: a
    value of the wrong type counts as none); an older sigtrace's parts have no export time."""
    at, lost = meta.get(EXPORTED_AT), meta.get("lost_events")
    at = float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at) else 0.0
    return at, lost if _is_count(lost) else -1


def merge_runs(metas: list[dict[str, Any]]) -> dict[str, Any]:
    """One node meta for several runs: the first run's, with the lost events added up and the
    notes of all runs (embedded metas are data from elsewhere: a note list that is not a list is
    left out)."""
    first, *more = metas
    meta = dict(first)
    for m in more:
        meta["lost_events"] = sum(v for v in (meta.get("lost_events"), m.get("lost_events")) if _is_count(v))
        meta["incomplete"] = [*_notes(meta.get("incomplete")), *_notes(m.get("incomplete"))]
    meta.pop(EXPORTED_AT, None)
    return meta


def _notes(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _utc_days(ts: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Per row the index of its UTC day, and the days as YYYY-MM-DD: one strftime per distinct day,
    not per event (ts is finite and in range: the readers skip rows where it is not)."""
    codes, days = pd.factorize(np.floor(ts.to_numpy(dtype=float) / SECONDS_PER_DAY).astype(np.int64))
    names = pd.to_datetime(days * SECONDS_PER_DAY, unit="s", utc=True).strftime("%Y-%m-%d")
    return codes, list(names)


def _own_categories(df: pd.DataFrame) -> pd.DataFrame:
    """Only the categories the part's rows use: a part must not carry other nodes' pod names."""
    return df.assign(**{c: df[c].cat.remove_unused_categories() for c in df.columns
                        if isinstance(df[c].dtype, pd.CategoricalDtype)})


def _check_root(root: Path) -> None:
    st = existing_output(root, UsageProblem)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise UsageProblem(f"{root} exists and is not a directory: give a directory for the dataset")


def _subdir(parent: Path, name: str) -> Path:
    """parent/name as a real directory of ours: made 0750 when missing; a link (planted to send the
    parts elsewhere) or a file there is refused."""
    if len(name.encode()) > NAME_MAX:
        raise UsageProblem(f"partition directory {name[:60]}... is {len(name.encode())} bytes, longer than a "
                           "directory name can be (a very long node name?); export it with --parquet FILE")
    path = parent / name
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    st = existing_output(path, OutputError)
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{path} is not a directory; the dataset under {parent} was changed by someone else")
    return path


# ---- rows as a multiset ------------------------------------------------------------------------------
def _like(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """old's columns in new's dtypes (a part read back from Parquet comes with Arrow's types), so that
    equal values hash equal; a column new lacks is dropped, one old lacks is null."""
    out = {}
    for col in new.columns:
        dtype = new[col].dtype
        if col not in old.columns:
            out[col] = pd.Series(pd.NA, index=old.index, dtype=dtype)
            continue
        try:
            out[col] = old[col].astype("category" if isinstance(dtype, pd.CategoricalDtype) else dtype)
        except (TypeError, ValueError):
            out[col] = old[col].astype("string")      # an older part's text where new has numbers
    return pd.DataFrame(out, index=old.index)


def _row_keys(df: pd.DataFrame) -> np.ndarray:
    """A hash per row of what the recorder wrote: not the pod names the export fills in, which a
    later export of the same events may fill differently (a pod's names recorded after its first event)."""
    cols = [c for c in df.columns if c not in POD_META_COLUMNS]
    return pd.util.hash_pandas_object(df[cols], index=False).to_numpy()


def _full_keys(df: pd.DataFrame) -> np.ndarray:
    """A hash per row of every column, pod names included (a later export may fill more)."""
    return pd.util.hash_pandas_object(df, index=False).to_numpy()


def _occurrence(keys: np.ndarray) -> np.ndarray:
    """Per row, how many rows before it have the same key (0 for the first)."""
    if not len(keys):
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    at = np.arange(len(keys))
    starts = np.maximum.accumulate(np.where(np.r_[True, ranked[1:] != ranked[:-1]], at, 0))
    out = np.empty(len(keys), dtype=np.int64)
    out[order] = at - starts
    return out


def _counts_at(keys: np.ndarray, of: np.ndarray) -> np.ndarray:
    """Per key in keys, how often it occurs in of."""
    of = np.sort(of)
    return np.searchsorted(of, keys, side="right") - np.searchsorted(of, keys, side="left")


def _beyond(keys: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Mask of the rows of keys that other does not already hold (as a multiset: a key twice in keys
    and once in other keeps its second row)."""
    if not len(other):
        return np.ones(len(keys), dtype=bool)
    return _occurrence(keys) >= _counts_at(keys, other)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """frames (same columns and dtypes) as one, categoricals kept categorical: pd.concat makes text
    of categoricals whose categories differ, which Arrow writes as another type than the other parts'."""
    out = {}
    for col in frames[0].columns:
        parts = [f[col] for f in frames]
        if isinstance(parts[-1].dtype, pd.CategoricalDtype):
            # the new rows' categories are text (export_frame); an older part's may be typed otherwise
            text = parts[-1].cat.categories.dtype
            cats = pd.Index(pd.unique(np.concatenate([p.cat.categories.astype(text).to_numpy() for p in parts])))
            parts = [p.cat.rename_categories(p.cat.categories.astype(text)) for p in parts]
            dtype = pd.CategoricalDtype(cats.astype(text))
            out[col] = pd.concat([p.astype(dtype) for p in parts], ignore_index=True)
        else:
            out[col] = pd.concat(parts, ignore_index=True)
    return pd.DataFrame(out)


Chunks = Callable[[], Iterator[pd.DataFrame]]


@dataclass
class _Rows:
    """Rows read again and again in chunks, in ts order, and each row's key (_row_keys): 8 bytes a row
    is what the part's merge holds of them."""
    chunks: Chunks
    keys: np.ndarray


def _hashes(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=np.uint64)


def _scanned(chunks: Chunks) -> _Rows:
    """chunks with their keys. Rows out of ts order (a part sigtrace did not write) are put in order
    in memory: sorting equal keys stably keeps which of them count as first, second..."""
    keys, last, in_order = [], -math.inf, True
    for df in chunks():
        keys.append(_row_keys(df))
        ts = df["ts"].to_numpy(dtype=float)
        in_order = in_order and bool((np.diff(ts, prepend=last) >= 0).all())
        last = ts[-1] if len(ts) else last
    if in_order:
        return _Rows(chunks, _hashes(keys))
    whole = _joined(list(chunks()))
    order = np.argsort(whole["ts"].to_numpy(dtype=float), kind="stable")
    whole = whole.iloc[order].reset_index(drop=True)
    return _Rows(lambda: iter([whole]), _hashes(keys)[order])


def _joined(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """frames as one: plainly when their dtypes (categories included) agree, else through _concat."""
    if len(frames) == 1:
        return frames[0]
    if all(f.dtypes.equals(frames[0].dtypes) for f in frames):
        return pd.concat(frames, ignore_index=True)
    return _concat(frames)


def _masked(rows: _Rows, mask: np.ndarray) -> Iterator[pd.DataFrame]:
    """rows' chunks with only the rows mask keeps."""
    pos = 0
    for df in rows.chunks():
        keep = mask[pos:pos + len(df)]
        pos += len(df)
        if keep.any():
            yield df if keep.all() else df[keep]


@dataclass
class _Merge:
    """The run's part as masks over the rows that make it: the old part's rows the new export no longer
    has (pruned from the recording since) and the new rows, less rows another part of the node and
    day holds; in ts order, the old part's first on equal ts."""
    own: _Rows | None
    new: _Rows
    own_mask: np.ndarray
    new_mask: np.ndarray

    @classmethod
    def of(cls, new: _Rows, own: _Rows | None, others: np.ndarray) -> "_Merge":
        own_mask = _beyond(own.keys, new.keys) if own is not None else np.zeros(0, dtype=bool)
        new_mask = np.ones(len(new.keys), dtype=bool)
        if len(others):
            kept = np.flatnonzero(own_mask)
            keep = _beyond(np.concatenate([own.keys[kept], new.keys]) if own is not None else new.keys, others)
            own_mask[kept] = keep[:len(kept)]
            new_mask = keep[len(kept):]
        return cls(own, new, own_mask, new_mask)

    @property
    def rows(self) -> int:
        return int(self.own_mask.sum() + self.new_mask.sum())

    def sources(self) -> list[tuple[_Rows, np.ndarray]]:
        """(rows, mask) of the part's rows, the old part's first: on equal ts they come first."""
        new = (self.new, self.new_mask)
        return [new] if self.own is None else [(self.own, self.own_mask), new]

    def same_as_own(self) -> bool:
        """Whether the part would hold the rows the old one holds, pod names included."""
        if self.own is None or self.rows != len(self.own.keys):
            return False
        own = _hashes([_full_keys(df) for df in self.own.chunks()])
        merged = _hashes([own[self.own_mask], *(_full_keys(df) for df in _masked(self.new, self.new_mask))])
        return bool((np.sort(merged) == np.sort(own)).all())

    def chunks(self, like: pd.DataFrame) -> Iterator[pd.DataFrame]:
        """The part's rows in chunks of like's dtypes, categoricals with the categories its rows use
        (a part must not carry other nodes' pod names), which every chunk carries: one Parquet type."""
        cats = self._categories(like)
        yield _recategorised(like, cats)           # the schema, even when no row is left
        streams = [(_recategorised(df, cats) for df in _masked(rows, mask)) for rows, mask in self.sources()]
        yield from merge_sorted(streams, [-math.inf] * len(streams))

    def _categories(self, like: pd.DataFrame) -> dict[str, pd.Index]:
        used: dict[str, set] = {c: set() for c in like.columns if isinstance(like[c].dtype, pd.CategoricalDtype)}
        for rows, mask in self.sources():
            for df in _masked(rows, mask):
                for col, values in used.items():
                    s = _text_categories(df[col], like[col].cat.categories.dtype)
                    codes = s.cat.codes.to_numpy()
                    values.update(s.cat.categories[np.unique(codes[codes >= 0])])
        return {c: pd.Index(sorted(v), dtype=like[c].cat.categories.dtype) for c, v in used.items()}


def _text_categories(s: pd.Series, text: Any) -> pd.Series:
    """s's categories typed text (the new rows' are text; an older part's may be typed otherwise)."""
    return s if s.cat.categories.dtype == text else s.cat.rename_categories(s.cat.categories.astype(text))


def _recategorised(df: pd.DataFrame, cats: dict[str, pd.Index]) -> pd.DataFrame:
    """df with cats as its categorical columns' categories."""
    out = df.copy(deep=False)
    for col, categories in cats.items():
        out[col] = _text_categories(df[col], categories.dtype).cat.set_categories(categories)
    return out.reset_index(drop=True)


# ---- parts on disk, relative to their directory's descriptor -----------------------------------------
class _Part:
    """A part of this directory, opened once (never through a link, never a FIFO or device) and read
    in chunks."""

    def __init__(self, dir_fd: int, directory: Path, name: str) -> None:
        import pyarrow.parquet as pq
        self.path = directory / name
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        self.fh = os.fdopen(fd, "rb")
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OutputError(f"{self.path} is not a regular file; the dataset was changed by someone else")
            with self._readable():
                self.pf = pq.ParquetFile(self.fh)
        except BaseException:
            self.fh.close()
            raise

    @contextmanager
    def _readable(self) -> Iterator[None]:
        import pyarrow as pa
        try:
            yield
        except (pa.ArrowException, ValueError) as exc:
            why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise OutputError(f"{self.path}: not a readable Parquet part ({why}); move it out of the "
                              "dataset to add this run's part beside it") from None

    def nodes(self) -> dict:
        """The node metas the part embeds."""
        raw = (self.pf.schema_arrow.metadata or {}).get(b"sigtrace")
        try:
            nodes = json.loads(raw).get("nodes") if raw else None
        except (ValueError, AttributeError, RecursionError):
            nodes = None
        return nodes if isinstance(nodes, dict) else {}

    def frames(self, like: pd.DataFrame, chunk_rows: int) -> Iterator[pd.DataFrame]:
        """The part's rows as chunks of like's columns and dtypes (_like)."""
        import pyarrow as pa
        types = {pa.int64(): pd.Int64Dtype(), pa.string(): pd.StringDtype(), pa.large_string(): pd.StringDtype()}
        names = self.pf.schema_arrow.names
        with self._readable():
            for batch in self.pf.iter_batches(batch_size=chunk_rows, columns=[c for c in like.columns if c in names]):
                yield _like(pa.Table.from_batches([batch]).to_pandas(types_mapper=types.get), like)

    def close(self) -> None:
        self.fh.close()


def _replace_part(write: Callable[[BinaryIO], None], dir_fd: int, name: str) -> None:
    """dir/name written by write: a new hidden file (O_EXCL, no link followed), fsynced, renamed over name."""
    tmp = f".part-{secrets.token_hex(8)}.tmp"            # hidden from readers (and _part_files)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                 dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)                                  # the rename itself survives a crash
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise


def _part_names(dir_fd: int) -> list[str]:
    return sorted(n for n in os.listdir(dir_fd) if n.endswith(".parquet") and not n.startswith((".", "_")))


def _write_run_part(new: Chunks, directory: Path, meta: dict, node: str, run: dict,
                    chunk_rows: int = CHUNK_ROWS) -> tuple[str, bool]:
    """This run's part of one node and day, replaced by the union with what it held: (its file name,
    whether it was written rather than already holding these rows). new: the rows (at least one), in
    chunks in ts order; run: the run's node meta, the part's only. The peak is a few chunks and 8 bytes
    a row of every part of the node and day."""
    # as it reads back from the part (JSON), to tell whether the run's meta changed since
    node_meta = json.loads(json.dumps(run, sort_keys=True, default=str))
    name = f"part-{run_key(node_meta)}.parquet"
    dir_fd = os.open(directory, DIR_FLAGS)
    opened: list[_Part] = []
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)               # another export of this node and day waits
        like = _template(new)
        keyed = like[[c for c in like.columns if c not in POD_META_COLUMNS]]
        for n in _part_names(dir_fd):
            opened.append(_Part(dir_fd, directory, n))
        own = next((p for p in opened if p.path.name == name), None)
        others = _hashes([_row_keys(df) for p in opened if p is not own for df in p.frames(keyed, chunk_rows)])
        merge = _Merge.of(_scanned(new), _scanned(lambda: own.frames(like, chunk_rows)) if own else None, others)
        own_metas = [{k: v for k, v in m.items() if k != EXPORTED_AT} for m in own.nodes().values()] if own else []
        if (own_metas == [node_meta] and merge.same_as_own()) or (own is None and not merge.rows):
            return name, False                            # nothing new, or every row in another part already
        stamped = dict(node_meta, **{EXPORTED_AT: time.time()})
        part_meta = json.dumps(dict(meta, nodes={node: stamped}), sort_keys=True, default=str).encode()
        _replace_part(lambda fh: _write_chunks(merge.chunks(like), ParquetSink(fh, part_meta)), dir_fd, name)
        return name, True
    finally:
        for part in opened:
            part.close()
        os.close(dir_fd)                                  # releases the lock


def _template(chunks: Chunks) -> pd.DataFrame:
    """No rows, the columns and dtypes of chunks' rows."""
    first = chunks()
    try:
        return next(first).iloc[:0]
    finally:
        first.close()


def _write_chunks(chunks: Iterator[pd.DataFrame], sink: ParquetSink) -> None:
    for df in chunks:
        sink.write(df)
    sink.close()


def write_dataset(df: pd.DataFrame, meta: dict, root: str | os.PathLike, chunk_rows: int = CHUNK_ROWS,
                  runs: np.ndarray | None = None, run_metas: list[dict] | None = None) -> DatasetWrite:
    """Add df (the export frame: COLUMNS, sorted by ts) to the dataset at root: per run and UTC day,
    the run's part, replaced (see the module doc). meta is the export's sidecar dict; each part
    carries it with its own run's meta only. runs: per row, its run's index in run_metas (each run's
    meta, frame.run_meta); without them, each node's rows are one run (its sidecar meta)."""
    with DatasetSink(root, meta, chunk_rows, run_metas) as sink:
        sink.write(df, runs)
    return sink.result


def _no_room(exc: OSError) -> OutputError:
    """The disk refusing the rows gathered by node and day (full, a missing SIGTRACE_TMPDIR) is one
    line: the rows already given cannot be read again in memory instead."""
    return OutputError(f"export cannot write its temporary files in {spill_where()} ({exc.strerror or exc}); "
                       "set SIGTRACE_TMPDIR to a directory with room (about the export's size)")


class DatasetSink:
    """The export's rows, given in chunks in ts order, gathered by run and UTC day in temporary
    files; each (node, run, day) is then written as write_dataset writes it, chunk_rows rows at a
    time: the peak is a few chunks and 8 bytes a row of the node's day, not the export.
    run_metas: each run's meta (frame.run_meta), which write's runs index; runs of one node with one
    run_key (one recorder run read twice) share a part. None: each node is one run."""

    def __init__(self, root: str | os.PathLike, meta: dict, chunk_rows: int = CHUNK_ROWS,
                 run_metas: list[dict] | None = None) -> None:
        self.root, self.meta, self.chunk_rows = Path(root), meta, chunk_rows
        self._runs: dict[tuple[str, str], dict] = {}      # (node, run_key): the part's node meta
        self._run_of: list[tuple[str, str]] = []          # per run index: its (node, run_key)
        for m in run_metas or []:
            key = (m["node"], run_key(m))
            add_meta(self._runs, key, m)
            self._run_of.append(key)
        _check_root(self.root)
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot make {self.root}: {exc.strerror}; choose a writable directory") from None
        self.result = DatasetWrite()
        try:
            self._tmp = spill_dir("sigtrace-dataset-")
        except OSError as exc:
            raise _no_room(exc) from None
        self._groups: dict[tuple[str, str, str], Path] = {}     # (node, run_key, day): its rows

    def __enter__(self) -> "DatasetSink":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._write_parts()
        finally:
            self._tmp.cleanup()

    def write(self, df: pd.DataFrame, runs: np.ndarray | None = None) -> None:
        """Rows of the export (COLUMNS, categoricals with the whole export's categories), in ts order;
        runs: per row, its run's index in run_metas (None: each node's rows are one run)."""
        day_codes, days = _utc_days(df["ts"])
        if runs is None:
            nodes = df[NODE].astype("category")
            owners = [(str(n), "") for n in nodes.cat.categories]
            codes = nodes.cat.codes.to_numpy(dtype=np.int64)
        else:
            codes, owners = np.asarray(runs, dtype=np.int64), self._run_of
        group = codes * len(days) + day_codes
        columns = [c for c in df.columns if c != NODE]
        for key, rows in pd.Series(group).groupby(group, sort=True).indices.items():
            (node, run), day = owners[key // len(days)], days[key % len(days)]
            path = self._groups.setdefault((node, run, day), Path(self._tmp.name) / f"{len(self._groups)}.pickle")
            # pickled: the rows come back with the very dtypes (and categories) they had
            try:
                with open(path, "ab") as fh:
                    pickle.dump(df.iloc[rows][columns], fh, protocol=pickle.HIGHEST_PROTOCOL)
            except OSError as exc:
                raise _no_room(exc) from None

    def _write_parts(self) -> None:
        import pyarrow.dataset as ds
        part = partitioning()
        try:
            for (node, run, day), path in sorted(self._groups.items()):
                rel, _ = part.format((ds.field(NODE) == node) & (ds.field(DATE) == day))
                directory = self.root
                for name in rel.split("/"):
                    directory = _subdir(directory, name)
                chunks = functools.partial(_unpickled, path, self.chunk_rows)
                name, added = _write_run_part(chunks, directory, self.meta, node, self._meta_of(node, run),
                                              self.chunk_rows)
                path.unlink()
                (self.result.written if added else self.result.skipped).append(f"{rel}/{name}")
        except OSError as exc:
            raise OutputError(f"cannot write the dataset under {self.root}: {exc.strerror}; choose a writable "
                              "directory") from None

    def _meta_of(self, node: str, run: str) -> dict:
        """The node meta a part of the run embeds: the run's own, or the node's (no runs given)."""
        if run:
            return self._runs[(node, run)]
        return self.meta.get("nodes", {}).get(node, {"node": node})


def _unpickled(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """A node-day's rows back from its temporary file, in chunks of about chunk_rows (what the export
    gave, a node's share of each of its chunks, put together)."""
    acc: list[pd.DataFrame] = []
    n = 0
    with open(path, "rb") as fh:
        while True:
            try:
                df = pickle.load(fh)
            except EOFError:
                break
            acc.append(df)
            n += len(df)
            if n >= chunk_rows:
                yield _joined(acc)
                acc, n = [], 0
    if acc:
        yield _joined(acc)

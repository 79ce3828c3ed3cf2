"""Read sigtrace exports (CSV or Parquet) fast, with explicit dtypes, and validate them.

Fast path: pyarrow's multi-threaded CSV reader with the schema's column types, reading
only the known columns; categoricals arrive as Arrow dictionaries (no per-row strings).
Fallback without pyarrow: pandas' C reader with dtype= and usecols=.

Every problem that makes a file unusable is a DataError with one line (exit 2).
"""
from __future__ import annotations

import csv
import functools
import io
import json
import operator
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from ..errors import DataError
from ..events.schema import FIELD_NAMES, KINDS, SCHEMA_VERSION
from ..export.columns import (COLUMNS, EXPORT_DTYPES, NODE, REQUIRED_COLUMNS, SCHEMA_VERSION_COLUMN,
                              sidecar_path)
from ..events.segments import read_small_file
from ..events.validate import clean_meta, frame_problems
from ..export import cells
from ..export.dataset import DATE, SECONDS_PER_DAY, latest_runs, merge_runs, partitioning
from ..export.write import have_pyarrow

SNIFF_BYTES = 1 << 16
SIDECAR_BYTES = 64 << 20        # a sidecar holds a few KB a node


@dataclass
class Export:
    events: pd.DataFrame                      # COLUMNS, EXPORT_DTYPES, all files, sorted by ts
    metas: dict[str, dict[str, Any]]          # node -> meta (from the sidecar / Parquet metadata)
    incomplete: list[str] = field(default_factory=list)   # file-level notes (apply to every node)


def _sniff(path: Path) -> tuple[str, list[str] | None]:
    """("parquet", None), ("dataset", None) or ("csv", header columns); DataError when it is neither."""
    if not path.exists():
        raise DataError(f"{path}: no such file; pass a file written by 'sigtrace export --csv FILE'")
    if path.is_dir():
        return "dataset", None               # what is in it is checked when it is read (_part_files)
    try:
        # non-blocking: a FIFO (a glob that caught one, a process substitution) is refused, not waited on
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise DataError(f"{path}: not a regular file (a pipe, FIFO or device); write the export to a "
                                "file and pass that")
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from exc
    if head.startswith(b"PAR1"):
        return "parquet", None
    if not head.strip():
        raise DataError(f"{path}: empty file, not a sigtrace export; export again with 'sigtrace export DIR --csv FILE'")
    first = head.split(b"\n", 1)[0]
    try:
        # a NUL in the header line means binary; inside later quoted values it is just data
        if b"\x00" in first:
            raise UnicodeDecodeError("utf-8", first, 0, 1, "NUL byte")
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a CSV file (binary or not UTF-8); pass a file written by "
                        "'sigtrace export --csv FILE'") from None
    if text.lstrip().startswith(("{", "[")):
        raise DataError(f"{path}: looks like JSON (events.jsonl?), not a CSV export; "
                        "run 'sigtrace export DIR --csv FILE' first")
    try:
        header = next(csv.reader(io.StringIO(text)))
    except (csv.Error, StopIteration):
        header = []
    if "ts" not in header or "kind" not in header:
        raise DataError(f"{path}: not a sigtrace CSV export (its first line has no ts and kind columns); "
                        "pass a file written by 'sigtrace export --csv FILE'")
    return "csv", header


def _check_columns(path: Path, columns: Sequence[str], notes: list[str]) -> list[str]:
    """The known columns present; DataError when a required one is missing."""
    present = set(columns)
    twice = sorted(c for c, n in Counter(columns).items() if n > 1 and c in EXPORT_DTYPES)
    if twice:
        raise DataError(f"{path}: column(s) {', '.join(twice)} more than once; was it written by 'sigtrace export'? "
                        "export it again")
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    if missing:
        raise DataError(f"{path}: missing required column(s) {', '.join(missing)}; "
                        "was it written by 'sigtrace export'? export it again")
    absent = [c for c in FIELD_NAMES if c not in present]
    if absent:
        notes.append(f"{path}: no column(s) {', '.join(absent)}: treated as unknown (null)")
    unknown = [c for c in columns if c not in EXPORT_DTYPES]
    if unknown:
        notes.append(f"{path}: ignored {len(unknown)} unknown column(s): {', '.join(unknown[:8])}")
    return [c for c in COLUMNS if c in present]


def _arrow_types() -> dict:
    import pyarrow as pa
    by_dtype = {"float64": pa.float64(), "Int64": pa.int64(), "int64": pa.int64(), "string": pa.string(),
                "category": pa.dictionary(pa.int32(), pa.string())}
    return {name: by_dtype[dtype] for name, dtype in EXPORT_DTYPES.items()}


def _pandas_types_mapper():
    import pyarrow as pa
    mapping = {pa.int64(): pd.Int64Dtype(), pa.string(): pd.StringDtype(), pa.large_string(): pd.StringDtype()}
    return mapping.get


def _one_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def _csv_convert(usecols: list[str]):
    import pyarrow.csv as pacsv
    types = _arrow_types()
    return pacsv.ConvertOptions(include_columns=usecols, column_types={c: types[c] for c in usecols},
                                null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False)


def _csv_frames(path: Path, usecols: list[str]) -> Iterator[pd.DataFrame]:
    """A CSV export as frames: whole when it is small (the fast parallel splitter first), else
    block by block with the parser that allows newlines inside quoted values (bounded memory)."""
    if not have_pyarrow():
        yield _read_csv_pandas(path, usecols)
        return
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    if size <= CSV_WHOLE_BYTES:
        yield _read_csv_arrow(path, usecols)
        return
    import pyarrow as pa
    import pyarrow.csv as pacsv
    try:
        reader = pacsv.open_csv(str(path), read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                                convert_options=_csv_convert(usecols))
        for batch in reader:
            yield pa.Table.from_batches([batch]).to_pandas(types_mapper=_pandas_types_mapper())
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable sigtrace CSV export ({_one_line(exc)})") from None


def _read_csv_arrow(path: Path, usecols: list[str]) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    convert = _csv_convert(usecols)
    last: Exception | None = None
    # Values with newlines inside quotes (a comm can hold one) defeat the fast parallel
    # splitter: try it first, then the slower parser that allows them.
    for newlines in (False, True):
        try:
            table = pacsv.read_csv(str(path), parse_options=pacsv.ParseOptions(newlines_in_values=newlines),
                                   convert_options=convert)
            break
        except pa.ArrowInvalid as exc:
            last = exc
    else:
        raise DataError(f"{path}: not a readable sigtrace CSV export ({_one_line(last)})") from None
    return table.to_pandas(types_mapper=_pandas_types_mapper())


def _read_csv_pandas(path: Path, usecols: list[str]) -> pd.DataFrame:
    dtypes = {c: EXPORT_DTYPES[c] for c in usecols}
    try:
        return pd.read_csv(path, usecols=usecols, dtype=dtypes, keep_default_na=False, na_values=[""],
                           encoding="utf-8")
    except (ValueError, TypeError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable sigtrace CSV export ({_one_line(exc)})") from None


def _typed_table(table):
    """The export's columns cast in Arrow (vectorised, multi-threaded) to the schema's types, so that
    pandas gets EXPORT_DTYPES directly."""
    import pyarrow as pa
    types = _arrow_types()
    for i, (name, col) in enumerate(zip(table.column_names, table.columns)):
        if col.type != types[name] and col.null_count == len(col):
            # all null, written as another type (earlier exports wrote an empty category as float)
            table = table.set_column(i, name, pa.nulls(len(col), types[name]))
    return table.cast(pa.schema([pa.field(c, types[c]) for c in table.column_names]))


def _read_parquet(path: Path, notes: list[str], batch_rows: int) -> tuple[Iterator[pd.DataFrame], dict | None]:
    """The file's rows in batches of about batch_rows (row groups are read one at a time), and the
    meta it embeds."""
    if not have_pyarrow():
        raise DataError(f"{path}: is Parquet, which needs pyarrow; pip install pyarrow or export with --csv")
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(str(path))
        usecols = _check_columns(path, pf.schema_arrow.names, notes)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet export ({_one_line(exc)})") from None
    raw = (pf.schema_arrow.metadata or {}).get(b"sigtrace")
    try:
        meta = json.loads(raw) if raw else None      # the file may come from anywhere: _load_sidecar checks it
    except (ValueError, RecursionError):
        meta = None
    return _frames(path, "Parquet export", pf.iter_batches(batch_size=batch_rows, columns=usecols)), meta


def _frames(path: Path, what: str, batches: Iterable[Any]) -> Iterator[pd.DataFrame]:
    """Arrow record batches as frames of EXPORT_DTYPES; DataError (one line) when reading fails."""
    import pyarrow as pa
    try:
        for batch in batches:
            table = _used_dictionaries(_typed_table(pa.Table.from_batches([batch])))
            yield table.to_pandas(types_mapper=_pandas_types_mapper())
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as exc:
        raise DataError(f"{path}: not a readable {what} ({_one_line(exc)})") from None


def _used_dictionaries(table):
    """A dictionary column bigger than its batch rebuilt from the values its rows use: a Parquet file
    from elsewhere may carry millions of unused entries, and every one would become a pandas category."""
    for i, col in enumerate(table.columns):
        if hasattr(col.type, "value_type") and hasattr(col.type, "index_type") and \
                any(len(chunk.dictionary) > len(chunk) for chunk in col.chunks):
            table = table.set_column(i, table.field(i), col.cast(col.type.value_type).dictionary_encode())
    return table


def _part_files(root: Path, notes: list[str]) -> list[str]:
    """The dataset's parts: node=*/date=*/*.parquet, without hidden files (a part being written),
    nor a part or partition directory that is a link (it may lead out of the dataset: said)."""
    found = [p for p in root.glob("*=*/*=*/*.parquet") if not p.name.startswith((".", "_"))]
    files = sorted(str(p) for p in found if not _through_a_link(root, p))
    if found and not files:
        raise DataError(f"{root}: every part ({len(found)}) is reached through a link, which analyze does not "
                        "follow out of a dataset; copy the parts into it")
    if len(files) < len(found):
        notes.append(f"{root}: {len(found) - len(files)} part(s) reached through a link skipped (not followed "
                     "out of the dataset)")
    if not files:
        raise DataError(f"{root}: is a directory, not an export dataset (no node=*/date=*/*.parquet parts); "
                        f"analyze reads exports: sigtrace export {root} --csv FILE (or --parquet DATASET/) first")
    return files


def _through_a_link(root: Path, path: Path) -> bool:
    cur = root
    for part in path.relative_to(root).parts:
        cur = cur / part
        if cur.is_symlink():
            return True
    return False


def _merged_metas(fragments, notes: list[str]) -> dict[str, Any]:
    """node -> meta, from the meta each part embeds: a run's parts (several days, several exports
    of it, an older sigtrace's parts beside its own) count as that run once, with its latest export's
    meta; several runs of one node add up their lost events."""
    import pyarrow.dataset as ds
    by_node: dict[str, list[dict]] = {}
    for frag in fragments:
        raw = (frag.physical_schema.metadata or {}).get(b"sigtrace")
        try:
            nodes = json.loads(raw).get("nodes") if raw else None
        except (ValueError, AttributeError, RecursionError):
            nodes = None
        if not isinstance(nodes, dict):
            notes.append(f"{frag.path}: no sigtrace meta in the part: backend and lost events unknown")
            continue
        # only its own node's meta (its partition): a part put under node=a cannot speak for node b
        own = ds.get_partition_keys(frag.partition_expression).get(NODE)
        m = nodes.get(own) if own is not None else None
        if isinstance(m, dict):
            by_node.setdefault(str(own), []).append(m)
        if any(str(n) != own for n in nodes):
            notes.append(f"{frag.path}: its meta speaks for nodes other than its own ({own}): ignored")
    return {node: merge_runs(latest_runs(metas)) for node, metas in by_node.items()}


def _selection(nodes: Sequence[str], since: date | None, until: date | None):
    """The partition filter of --node/--since/--until (None: everything)."""
    import pyarrow.dataset as ds
    parts = []
    if nodes:
        parts.append(ds.field(NODE).isin(list(nodes)))
    if since is not None:
        parts.append(ds.field(DATE) >= since.isoformat())
    if until is not None:
        parts.append(ds.field(DATE) <= until.isoformat())
    return functools.reduce(operator.and_, parts) if parts else None


def _read_dataset(root: Path, notes: list[str], nodes: Sequence[str], since: date | None,
                  until: date | None, batch_rows: int) -> tuple[Iterator[pd.DataFrame], dict[str, Any]]:
    """A dataset DIR of `export --parquet DIR/`, read lazily: only the parts of the selected nodes
    and days (partition pruning), only the known columns."""
    if not have_pyarrow():
        raise DataError(f"{root}: a Parquet dataset needs pyarrow; pip install pyarrow")
    import pyarrow as pa
    import pyarrow.dataset as ds
    try:
        found = ds.dataset(_part_files(root, notes), format="parquet", partitioning=partitioning(),
                           partition_base_dir=str(root))
        fragments = list(found.get_fragments(filter=_selection(nodes, since, until)))
        if not fragments:
            raise DataError(f"{root}: no parts of the selected node(s)/date(s); see the node=*/date=* directories")
        # parts written by different sigtrace versions may differ in columns: read them as one schema
        schema = pa.unify_schemas([f.physical_schema.remove_metadata() for f in fragments] + [partitioning().schema])
        chosen = ds.dataset([f.path for f in fragments], schema=schema, format="parquet",
                            partitioning=partitioning(), partition_base_dir=str(root))
        usecols = _check_columns(root, [c for c in schema.names if c != DATE], notes)
        batches = chosen.to_batches(columns=usecols, batch_size=batch_rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as exc:
        raise DataError(f"{root}: not a readable Parquet dataset ({_one_line(exc)})") from None
    return _frames(root, "Parquet dataset", batches), {"nodes": _merged_metas(fragments, notes)}


def _selected_rows(df: pd.DataFrame, nodes: Sequence[str], since: date | None, until: date | None) -> pd.DataFrame:
    """--node/--since/--until on rows (files; a dataset's parts are chosen before reading)."""
    keep = np.ones(len(df), dtype=bool)
    if nodes:
        keep &= df[NODE].astype(object).isin(list(nodes)).to_numpy()
    ts = df["ts"].to_numpy(dtype=float, na_value=np.nan)
    if since is not None:
        keep &= ts >= _epoch(since)
    if until is not None:
        keep &= ts < _epoch(until) + SECONDS_PER_DAY
    return df if keep.all() else df[keep].reset_index(drop=True)


def _epoch(day: date) -> float:
    return datetime.combine(day, time(), tzinfo=timezone.utc).timestamp()


def _check_version(path: Path, df: pd.DataFrame) -> int:
    versions = pd.unique(df[SCHEMA_VERSION_COLUMN].dropna())
    if df[SCHEMA_VERSION_COLUMN].isna().any() or len(versions) == 0:
        raise DataError(f"{path}: rows without a schema_version; was it written by 'sigtrace export'?")
    if len(versions) > 1:
        raise DataError(f"{path}: mixed schemas in one file (schema_version {', '.join(map(str, sorted(versions)))}); "
                        "export each recording with one sigtrace version")
    version = int(versions[0])
    if version > SCHEMA_VERSION:
        raise DataError(f"{path}: exported with event schema {version}, newer than this sigtrace's "
                        f"({SCHEMA_VERSION}); upgrade sigtrace to analyze it")
    if version < 1:
        raise DataError(f"{path}: schema_version {version} is not valid; export it again")
    return version


def _conform(df: pd.DataFrame) -> pd.DataFrame:
    """Every COLUMN, in order, with EXPORT_DTYPES (missing optional columns become nulls)."""
    for col, dtype in EXPORT_DTYPES.items():
        if col not in df.columns:
            df[col] = pd.Series(pd.NA, index=df.index, dtype=dtype)
        elif str(df[col].dtype) != dtype:
            df[col] = df[col].astype(dtype)
    return df[list(COLUMNS)]


class Skips:
    """What _usable_rows skipped over all chunks, said once at the end (notes())."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}        # why -> rows, in the order first seen
        self.unknown_kinds: set[str] = set()
        self.usable = 0

    def add(self, why: str, n: int) -> None:
        if n:
            self.counts[why] = self.counts.get(why, 0) + n

    def notes(self) -> list[str]:
        out = []
        for why, n in self.counts.items():
            if why == "ts/kind":
                out.append(f"skipped {n} rows without ts/kind")
            elif why == "kind":
                out.append(f"skipped {n} rows of unknown kind ({', '.join(sorted(self.unknown_kinds))[:120]})")
            elif why == "node":
                out.append(f"{n} rows without a node: analysed as node 'unknown'")
            else:
                out.append(f"skipped {n} rows whose {why}")
        return out


def _usable_rows(df: pd.DataFrame, skips: Skips) -> pd.DataFrame:
    """What read_recording would skip (no ts/kind, unknown kind) is skipped here too, and counted;
    rows without a node are kept under one "unknown" node rather than lost by the grouping."""
    bad = df["ts"].isna() | df["kind"].isna()
    unknown = ~df["kind"].isin(KINDS) & ~bad
    skips.add("ts/kind", int(bad.sum()))
    if unknown.any():
        skips.add("kind", int(unknown.sum()))
        skips.unknown_kinds |= set(map(str, pd.unique(df.loc[unknown, "kind"].astype(str))))
    # values out of a field's range or vocabulary: skipped as read_recording skips them
    invalid = np.zeros(len(df), dtype=bool)
    for why, mask in frame_problems(df[~(bad | unknown)] if (bad | unknown).any() else df).items():
        full = np.zeros(len(df), dtype=bool)
        full[np.flatnonzero(~(bad | unknown).to_numpy())] = mask
        skips.add(why, int(full.sum()))
        invalid |= full
    if bad.any() or unknown.any() or invalid.any():
        df = df[~((bad | unknown).to_numpy() | invalid)].reset_index(drop=True)
        df["kind"] = df["kind"].cat.remove_unused_categories()
    if df[NODE].isna().any():
        skips.add("node", int(df[NODE].isna().sum()))
        if "unknown" not in df[NODE].cat.categories:
            df[NODE] = df[NODE].cat.add_categories("unknown")
        df[NODE] = df[NODE].fillna("unknown")
    skips.usable += len(df)
    return df


def _load_sidecar(path: Path, embedded: dict | None, notes: list[str]) -> dict[str, Any]:
    """The export's meta: the sidecar FILE.meta.json, else what the Parquet file embeds."""
    side = Path(sidecar_path(str(path)))
    meta = embedded
    if side.exists() or side.is_symlink():
        try:
            # as meta.json is read: never waiting on a FIFO, a regular file, at most SIDECAR_BYTES
            data = read_small_file(side, SIDECAR_BYTES)
            if data is None:
                raise ValueError("not a regular file, a link, too big or unreadable")
            meta = json.loads(data)
        except (ValueError, RecursionError):
            notes.append(f"{side}: unreadable: backend and lost-event counts unknown")
    return meta if isinstance(meta, dict) else {}


# rows per batch read from a Parquet file or dataset (what one chunk of analyze holds at once)
BATCH_ROWS = 1 << 18
CSV_WHOLE_BYTES = 128 << 20      # a bigger CSV export is read block by block
CSV_BLOCK_BYTES = 32 << 20


class ExportReader:
    """The exports' rows in chunks (chunks()), each checked, selected and conformed as
    read_exports reads them; metas and notes fill in as the files are read. The files' rows come
    in file order; a Parquet file or dataset is read a batch at a time, a CSV file a block at a
    time (whole when small)."""

    def __init__(self, paths: Sequence[str], nodes: Sequence[str] = (), since: date | None = None,
                 until: date | None = None, progress: Callable[[str, int, int | None], None] | None = None,
                 batch_rows: int | None = None) -> None:
        self.paths, self.nodes, self.since, self.until = list(paths), nodes, since, until
        self.progress, self.batch_rows = progress, batch_rows or BATCH_ROWS
        self.metas: dict[str, dict] = {}
        self.notes: list[str] = []
        self.skips = Skips()
        self._versions: dict[int, str] = {}
        self._read = 0

    def chunks(self) -> Iterator[pd.DataFrame]:
        """Usable, selected rows in COLUMNS and EXPORT_DTYPES. DataError on unusable input; after
        the last chunk, notes holds what was skipped."""
        for i, p in enumerate(self.paths):
            yield from self._file(Path(p))
            if self.progress:
                self.progress("exports read", i + 1, len(self.paths))
        if not self._read:
            raise DataError(f"no events of the selected node(s)/date(s) in {', '.join(map(str, self.paths))}")
        self.notes += self.skips.notes()
        if not self.skips.usable:
            raise DataError("no usable events in the export(s): every row lacks ts/kind, has an unknown kind or "
                            "a value out of range")

    def _file(self, path: Path) -> Iterator[pd.DataFrame]:
        kind, header = _sniff(path)
        if kind == "dataset":
            frames, embedded = _read_dataset(path, self.notes, self.nodes, self.since, self.until, self.batch_rows)
        elif kind == "parquet":
            frames, embedded = _read_parquet(path, self.notes, self.batch_rows)
        else:
            frames, embedded = _csv_frames(path, _check_columns(path, header or [], self.notes)), None
        side: dict[str, Any] = {}
        file_metas: dict[str, dict] | None = None
        rows = 0
        for df in frames:
            if df.empty:
                continue
            rows += len(df)
            self._versions.setdefault(_check_version(path, df), str(path))
            if len(self._versions) > 1:
                (v1, f1), (v2, f2) = list(self._versions.items())[:2]
                if f1 == f2:
                    raise DataError(f"{f1}: mixed schemas in one file (schema_version {v1} and {v2}); "
                                    "export it again with one sigtrace version")
                raise DataError(f"mixed schemas: {f1} has schema_version {v1}, {f2} has {v2}; "
                                "export all recordings with one sigtrace version")
            if file_metas is None:
                side = embedded if kind == "dataset" else _load_sidecar(path, embedded, self.notes)
                file_metas = self._file_metas(path, side)
            if kind == "csv" and side.get("csv_cells", cells.NEUTRALISED) != cells.RAW:
                df = cells.restore(df)           # the values recorded, not the spreadsheet-safe form
            for node in pd.unique(df[NODE].dropna().astype(str)):
                if node in file_metas:
                    self.metas.setdefault(node, file_metas[node])
                elif node not in self.metas:
                    # the node's own note, not every node's: a fleet of nodes without meta stays linear
                    self.metas[node] = {"node": node, "incomplete": [
                        f"no meta ({sidecar_path(str(path))} missing): backend and lost events unknown"]}
            df = _selected_rows(df, self.nodes, self.since, self.until)
            self._read += len(df)
            if self.progress:
                self.progress("events read", self._read, None)
            if len(df):
                df = _usable_rows(_conform(df), self.skips)
                if len(df):
                    yield df
        if not rows:
            raise DataError(f"{path}: has no events (only a header); export a recording with events")

    def _file_metas(self, path: Path, side: dict[str, Any]) -> dict[str, dict]:
        file_metas = {}
        for node, m in (side.get("nodes") if isinstance(side.get("nodes"), dict) else {}).items():
            clean, dropped = clean_meta(m)        # a sidecar from elsewhere: same checks as meta.json
            notes = m.get("incomplete") if isinstance(m, dict) else None
            clean["incomplete"] = _notes_of(notes)
            if notes is not None and clean["incomplete"] != notes:
                dropped.append(f"its notes (incomplete) are not a list of at most {MAX_NODE_NOTES} texts of at most "
                               f"{MAX_NOTE_CHARS} characters: kept what fits")
            file_metas[str(node)] = clean
            self.notes.extend(f"{path.name}: node {node}: {n}" for n in dropped)
        return file_metas


MAX_NODE_NOTES = 100
MAX_NOTE_CHARS = 1000


def _notes_of(value: Any) -> list[str]:
    """A node meta's notes (the export's `incomplete`) as a bounded list of texts."""
    if not isinstance(value, list):
        return []
    return [v[:MAX_NOTE_CHARS] for v in value[:MAX_NODE_NOTES] if isinstance(v, str)]


def read_exports(paths: Sequence[str], nodes: Sequence[str] = (), since: date | None = None,
                 until: date | None = None, progress: Callable[[str, int, int | None], None] | None = None) -> Export:
    """Read and validate all exports (files, or dataset directories) into one frame; DataError
    (exit 2, one line) on unusable input. nodes, since, until (UTC days, inclusive): only those
    events. progress(what, done, total): told after each export read. analyze does not hold one
    frame: it streams the chunks (ExportReader) into parts by node and pod (analyze.parts)."""
    reader = ExportReader(paths, nodes, since, until, progress)
    frames = list(reader.chunks())
    if len(frames) > 1:
        # chunks' categoricals differ: concat makes them objects; _conform makes them categories again
        df = _conform(pd.concat(frames, ignore_index=True))
        del frames
        if len(reader.paths) > 1:
            df = df.sort_values("ts", kind="stable", ignore_index=True)
    else:
        df = frames[0]
    return Export(events=df, metas=reader.metas, incomplete=reader.notes)

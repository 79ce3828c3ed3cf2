"""Columnar segments: a closed JSONL segment compacted into an Arrow IPC file (zstd).

Why: parsing JSON is the floor of every read (pyarrow's multithreaded reader: ~430k events/s on
two cores, docs/benchmarks.md); an Arrow IPC file is read at millions of events a second, and it is
~10x smaller on disk, so the same --max-disk keeps ~10x more history.

When: the recorder writes JSON lines (a line is durable once write(2) returns, and a SIGKILL leaves
at most one cut-off line); once it has closed a segment and moved on to the next, the closed one is
compacted by a child process at low priority (sigtrace.events.compact): events-000002.jsonl
becomes events-000002.arrow. The segment being written is always JSONL.

What: exactly the events of the JSONL, as the fast reader's explicit schema parses them, in file
order. A segment the fast reader would not take as it is (a cut-off or unparsable line, an unknown
field, a wrongly typed value, text that is not UTF-8) stays JSONL, for the tolerant reader, which
lists what it skips. Values out of range or vocabulary are kept as they are: every reader checks
a columnar segment exactly as it checks JSON (tests/test_columnar.py), so a planted or damaged file
is no more trusted than a JSONL one.

Safety: the file is written unnamed (O_TMPFILE) in the segment's directory, held open by descriptor
(never by path), and linked under its name only when complete, so a reader never sees half a file
and a killed compaction leaves nothing behind; the JSONL is removed after that. A reader that lists
the directory in between sees both: the columnar file wins (list_segments).
"""
from __future__ import annotations

import os
import stat
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from .schema import DTYPES, FIELD_NAMES

SUFFIX = ".arrow"
JSONL_SUFFIX = ".jsonl"
COMPRESSION = "zstd"
JSON_BYTES_KEY = b"sigtrace.json_bytes"     # the JSONL's size: what a reader sizes its parts by
JSON_RATIO = 10                  # a columnar file without that key counts as this many JSON bytes per byte
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def arrow_schema():
    """The recorder's events as Arrow columns: what the JSON reader parses with, what a columnar
    segment holds (categories are plain strings here; readers encode them)."""
    import pyarrow as pa
    by_dtype = {"float64": pa.float64(), "Int64": pa.int64(), "string": pa.string(), "category": pa.string()}
    return pa.schema([pa.field(name, by_dtype[DTYPES[name]]) for name in FIELD_NAMES])


def is_columnar(path: str | os.PathLike) -> bool:
    """Whether a segment file is a columnar one (by its name, as list_segments tells them apart)."""
    return os.fspath(path).endswith(SUFFIX)


def columnar_name(jsonl_name: str) -> str:
    """events.jsonl -> events.arrow, events-000002.jsonl -> events-000002.arrow."""
    if not jsonl_name.endswith(JSONL_SUFFIX):
        raise ValueError(f"{jsonl_name} is not a JSONL segment")
    return jsonl_name[: -len(JSONL_SUFFIX)] + SUFFIX


# ---- reading ---------------------------------------------------------------------------------------
def _open(path: Path | int):
    """The IPC file reader of a columnar segment (a path, or a descriptor the caller keeps), its
    schema checked against the recorder's. Raises pyarrow.ArrowInvalid for anything else (a damaged,
    foreign or planted file) and OSError."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    fd = path if isinstance(path, int) else os.open(path, _OPEN_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise pa.ArrowInvalid("not a regular file")
        source = pa.OSFile(f"/proc/self/fd/{fd}")      # read, not mapped: pages do not stay in RSS
    finally:
        if fd is not path:
            os.close(fd)
    try:
        reader = ipc.open_file(source)
        if not reader.schema.remove_metadata().equals(arrow_schema()):
            raise pa.ArrowInvalid("its columns are not the recorder's")
    except BaseException:
        source.close()
        raise
    return source, reader


def recorded_bytes(path: Path) -> int:
    """What a reader sizes a segment by: a JSONL's size, or for a columnar segment the size of the
    JSONL it was compacted from (parts, streaming and progress are planned in JSON bytes). OSError
    when it cannot be read."""
    if not is_columnar(path):
        return path.stat().st_size
    try:
        import pyarrow as pa
    except ImportError:
        return path.stat().st_size * JSON_RATIO
    try:
        source, reader = _open(path)
    except pa.ArrowInvalid:
        return path.stat().st_size          # read as it is (the readers say what is wrong with it)
    with source:
        raw = (reader.schema.metadata or {}).get(JSON_BYTES_KEY, b"")
    try:
        return max(0, min(int(raw), 1 << 50))
    except ValueError:
        return path.stat().st_size * JSON_RATIO


def read_tables(path: Path | int) -> Iterator[Any]:
    """The columnar segment's events as tables (one record batch each, the JSON reader's schema), in
    file order. Raises pyarrow.ArrowInvalid when the file is not a whole, valid columnar segment."""
    import pyarrow as pa
    source, reader = _open(path)
    with source:
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            batch.validate(full=True)       # offsets and lengths: the file may come from anywhere
            yield pa.Table.from_batches([batch]).replace_schema_metadata(None)


def read_table(path: Path):
    """The whole columnar segment as one table (its batches side by side, no copy)."""
    import pyarrow as pa
    tables = list(read_tables(path))
    return pa.concat_tables(tables) if tables else arrow_schema().empty_table()


def iter_rows(path: Path, problems: Counter, where: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The tolerant reader's view: (row number from 1, event dict of its non-null fields). What
    cannot be read is counted in problems as a problem of `where` (its rows are not known)."""
    import pyarrow as pa
    n = 0
    try:
        for table in read_tables(path):
            for row in table.to_pylist():
                n += 1
                yield n, {k: v for k, v in row.items() if v is not None}
    except (pa.ArrowException, OSError) as exc:
        problems[f"unreadable columnar segments ({where}: {_why(exc)})"] += 1


def _why(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return str(text)[:120]


def first_ts(path: Path | int) -> float | None:
    """ts of a columnar segment's first event, None when unreadable."""
    try:
        for table in read_tables(path):
            if table.num_rows:
                ts = table.column("ts")[0].as_py()
                return float(ts) if isinstance(ts, (int, float)) else None
    except (ImportError, OSError, ValueError, NotImplementedError):   # a note's detail, never fatal
        return None
    return None

"""A vectorised read of a clean recording: pyarrow's JSON reader instead of a json.loads per line.

10 million events through json.loads and DataFrame.from_records take minutes and many GB of
dicts; pyarrow parses the file in C++ threads straight into columns. It accepts only what the
tolerant reader (sigtrace.events.reader.read_recording) would read unchanged: every line an
object of known fields, types and kinds, except a truncated last line (what a SIGKILLed
recorder leaves), which is cut off and listed exactly as the tolerant reader lists it. Anything
else (garbage, an unknown field or kind, a wrongly typed value) returns None and read_recording
falls back to its line-by-line path, which skips and lists what it cannot use.
tests/test_fast_reader.py checks that both give the same Recording.

A segmented recording (or a directory of runs) is read one segment at a time into Arrow tables
that are then concatenated without copying: the peak is the same as for one file of that size.
A columnar segment (sigtrace.events.columnar) is read as it is, and checked the same way.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import pandas as pd

from ..errors import DataError
from .columnar import arrow_schema, is_columnar, read_table
from .source import Recording, Source, lost_note, plan_recording, unfinished_note
from .schema import DTYPES
from .validate import frame_is_valid


def _complete_part(path: Path, size: int) -> tuple[int, int | None]:
    """How many bytes of the file are complete lines, and the line number of a cut-off last line."""
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 65536))
        tail = fh.read()
    if tail.endswith(b"\n"):
        return size, None
    nl = tail.rfind(b"\n")
    last = tail[nl + 1:]
    try:
        json.loads(last)
        return size, None        # a complete object without its newline: pyarrow reads it as is
    except ValueError:
        pass
    cut = size - len(last)
    with open(path, "rb") as fh:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    return cut, lines + 1


def read_clean_recording(directory: str | Path) -> Recording | None:
    """The Recording read_recording would return, or None when it needs the tolerant reader."""
    try:
        src = plan_recording(directory)
    except DataError:
        return None   # read_recording gives the right error
    return read_clean_source(src)


def parse_options():
    """pyarrow's JSON options for a clean file: the schema's fields and types, nothing else."""
    import pyarrow.json as pajson
    return pajson.ParseOptions(explicit_schema=arrow_schema(), unexpected_field_behavior="error")


def complete_source(label: str, path: Path, cut_lines: list[str]):
    """What pyarrow reads of one segment: its complete lines (a path, or a buffer without the cut-off
    last line, which is named in cut_lines), or None for an empty one. OSError when it is gone."""
    import pyarrow as pa
    size = path.stat().st_size
    if size == 0:
        return None
    complete, cut_line = _complete_part(path, size)
    if cut_line is not None:
        cut_lines.append(f"{label} line {cut_line}" if label else f"line {cut_line}")
    if complete == 0:
        return None
    return pa.BufferReader(pa.memory_map(str(path)).read_buffer(complete)) if cut_line is not None else str(path)


def json_chunks(source: Path | BinaryIO, complete: int, chunk_bytes: int) -> Iterator[tuple[Any, int]]:
    """The first `complete` bytes of a file (a path, or a binary file at its start) as buffers of
    whole lines, about chunk_bytes each, with their number of lines. Read, not memory-mapped: the
    pages of a mapped file count in the process's RSS as it is read through (3 GB for a 10M-event
    recording)."""
    import pyarrow as pa
    pos, rest = 0, b""
    with (open(source, "rb") if isinstance(source, (str, Path)) else nullcontext(source)) as fh:
        while pos < complete:
            data = rest + fh.read(min(chunk_bytes, complete - pos))
            pos += len(data) - len(rest)
            if len(data) == len(rest):
                break
            cut = len(data) if pos >= complete else data.rfind(b"\n") + 1
            if cut == 0:            # one line longer than a chunk: read on
                rest = data
                continue
            rest = data[cut:]
            yield pa.BufferReader(pa.py_buffer(memoryview(data)[:cut])), _lines(data, cut)     # no copy
            del data
        if rest:
            yield pa.BufferReader(pa.py_buffer(rest)), _lines(rest, len(rest))


def _lines(data: bytes, end: int) -> int:
    """Lines in data[:end], a last one without its newline included."""
    return data.count(b"\n", 0, end) + (end > 0 and data[end - 1:end] != b"\n")


def line_count(path: Path, complete: int) -> int:
    """Lines in the first `complete` bytes of a file."""
    n, last = 0, b"\n"
    with open(path, "rb") as fh:
        left = complete
        while left > 0:
            block = fh.read(min(1 << 24, left))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
            last = block[-1:]
    return n + (last != b"\n")


def one_event_per_line(table, lines: int) -> bool:
    """pyarrow's reader takes two objects on one line as two rows; the tolerant reader skips that
    line as unparsable, and blank lines it skips silently: only a table with a row for every line
    is read as it is (anything else goes to the tolerant reader, which says what it skipped)."""
    return table.num_rows == lines


def table_is_clean(table) -> bool:
    """No event without ts or kind, every string UTF-8 (pyarrow's JSON reader does not check it:
    a stray byte would fail far later)."""
    import pyarrow as pa
    if table.column("ts").null_count or table.column("kind").null_count:
        return False
    try:
        for name in table.column_names:
            if pa.types.is_string(table.schema.field(name).type):
                table.column(name).validate(full=True)
    except pa.ArrowInvalid:
        return False                     # the tolerant reader skips those lines and counts them
    return True


def table_frame(table, index=None) -> pd.DataFrame | None:
    """The events frame read_recording gives (schema dtypes, sorted categories) of a clean table,
    consumed; None when a value is out of range or vocabulary (the tolerant reader skips it).
    index: the frame's row labels (default 0..n-1)."""
    import pyarrow as pa
    # repeated strings become categoricals inside Arrow (dictionary encoding, no Python strings)
    for i, name in enumerate(table.column_names):
        if DTYPES[name] == "category":
            table = table.set_column(i, name, table.column(i).dictionary_encode())
    mapper = {pa.int64(): pd.Int64Dtype(), pa.string(): pd.StringDtype()}.get
    # self_destruct: each Arrow column is freed as it is converted (no second copy of the whole table)
    try:
        df = table.to_pandas(types_mapper=mapper, split_blocks=True, self_destruct=True)
    except (pa.ArrowException, UnicodeDecodeError):
        return None                     # text that is not UTF-8: the tolerant reader skips its lines
    del table
    if index is not None:
        df.index = index
    for name, dtype in DTYPES.items():
        if dtype == "category":
            if df[name].cat.categories.empty:
                # an all-null column: the very dtype read_recording's astype gives one
                # (from_records makes an absent field a float NaN column)
                df[name] = pd.Series(float("nan"), index=df.index).astype("category")
            else:
                # astype("category") in read_recording sorts the categories: same order here
                df[name] = df[name].cat.reorder_categories(sorted(df[name].cat.categories))
    if not frame_is_valid(df):
        return None                                # the tolerant reader skips and counts the bad events
    return df


def read_clean_source(src: Source) -> Recording | None:
    """read_clean_recording for a planned recording (sigtrace.events.source.plan_recording)."""
    try:
        import pyarrow as pa
        import pyarrow.json as pajson
    except ImportError:
        return None

    meta, incomplete = src.meta, list(src.notes)
    if not isinstance(meta, dict):
        return None
    options = parse_options()
    tables, cut_lines = [], []
    for label, path in src.files:
        try:
            if is_columnar(path):
                tables.append(read_table(path))
                continue
            source = complete_source(label, path, cut_lines)
            if source is not None:
                table = pajson.read_json(source, parse_options=options)
                if not one_event_per_line(table, line_count(path, _complete_part(path, path.stat().st_size)[0])):
                    return None
                tables.append(table)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError):
            return None
    if not tables:
        return None
    # zero-copy: the segments' chunks side by side; the list must not keep them alive past here
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    tables.clear()
    if cut_lines:
        incomplete.append(f"skipped {len(cut_lines)} truncated last line (first at {cut_lines[0]})")
    if lost_note(meta):
        incomplete.append(lost_note(meta))
    if table.num_rows == 0 or not table_is_clean(table):
        return None
    df = table_frame(table)
    del table
    if df is None:
        return None
    if not df["ts"].is_monotonic_increasing:      # a sorted file (the usual case) needs no copy
        df = df.sort_values("ts", kind="stable").reset_index(drop=True)
    if unfinished_note(meta, df):
        incomplete.append(unfinished_note(meta, df))
    return Recording(events=df, meta=meta, incomplete=incomplete, source=str(src.directory))

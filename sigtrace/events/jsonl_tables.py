"""JSON lines into Arrow tables, as the fast reader, the parts and the compaction parse them: whole
lines in chunks, the recorder's explicit schema, and the checks that make pyarrow's reading of a
chunk the tolerant reader's (sigtrace.events.reader). No pandas here: the compaction child
(sigtrace.events.compact) imports this and pays for pyarrow only.
"""
from __future__ import annotations

import json
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from .columnar import arrow_schema

CHUNK_BYTES = 32 << 20          # read at once: pyarrow parses a chunk's blocks on all cores


class NotOneEventPerLine(ValueError):
    """A chunk whose rows are not its lines (blank lines, two objects on one): the tolerant reader's."""


def complete_part(path: Path, size: int) -> tuple[int, int | None]:
    """How many of the file's first `size` bytes are complete lines, and the line number of a
    cut-off last line. Only those bytes are looked at: a segment being written grows meanwhile."""
    start = max(0, size - 65536)
    with open(path, "rb") as fh:
        fh.seek(start)
        tail = fh.read(size - start)
    if tail.endswith(b"\n"):
        return size, None
    nl = tail.rfind(b"\n")
    if nl < 0 and start > 0:
        return size, None        # a last line longer than the tail read: not cut here (the parse says)
    last = tail[nl + 1:]
    if not last.strip():
        return size - len(last), None        # blank: the tolerant reader skips it without a word
    try:
        json.loads(last)
        return size, None        # a complete object without its newline: pyarrow reads it as is
    except (ValueError, RecursionError):
        pass
    cut = size - len(last)
    with open(path, "rb") as fh:
        lines, left = 0, cut
        while left > 0 and (chunk := fh.read(min(1 << 20, left))):
            lines += chunk.count(b"\n")
            left -= len(chunk)
    return cut, lines + 1


def parse_options():
    """pyarrow's JSON options for a clean file: the schema's fields and types, nothing else."""
    import pyarrow.json as pajson
    return pajson.ParseOptions(explicit_schema=arrow_schema(), unexpected_field_behavior="error")


def json_chunks(source: Path | BinaryIO, complete: int, chunk_bytes: int) -> Iterator[tuple[Any, int, bool]]:
    """The first `complete` bytes of a file (a path, or a binary file at its start) as buffers of
    whole lines, about chunk_bytes each, with their number of lines and whether one of them is
    blank (JSON whitespace only: pyarrow makes no row of it, so the row count alone cannot tell it
    from a line of two events). Read, not memory-mapped: the pages of a mapped file count in the
    process's RSS as it is read through (3 GB for a 10M-event recording)."""
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
            view = memoryview(data)[:cut]
            yield pa.BufferReader(pa.py_buffer(view)), _lines(data, cut), _BLANK.search(view) is not None  # no copy
            del data, view
        if rest:
            yield pa.BufferReader(pa.py_buffer(rest)), _lines(rest, len(rest)), _BLANK.search(rest) is not None


# a line of JSON whitespace only, the chunk's first or any later one, with its newline or last
_BLANK = re.compile(rb"(?:\A|\n)(?:[ \t\r]*\n|[ \t\r]+\Z)")


def _lines(data: bytes, end: int) -> int:
    """Lines in data[:end], a last one without its newline included."""
    return data.count(b"\n", 0, end) + (end > 0 and data[end - 1:end] != b"\n")


def one_event_per_line(table, lines: int, blank: bool = False) -> bool:
    """pyarrow's reader takes two objects on one line as two rows; the tolerant reader skips that
    line as unparsable, and blank lines it skips silently: only a table with a row for every line
    is read as it is (anything else goes to the tolerant reader, which says what it skipped)."""
    return not blank and table.num_rows == lines


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


def json_tables(label: str, path: Path, cut_lines: list[str], chunk_bytes: int = CHUNK_BYTES) -> Iterator[Any]:
    """A JSONL segment as tables of about chunk_bytes of its lines each, as far as it was complete
    when this started (a segment being written grows meanwhile); a cut-off last line is left out and
    named in cut_lines. Raises pyarrow.ArrowInvalid (what the schema does not take), NotOneEventPerLine
    and OSError."""
    import pyarrow.json as pajson
    size = path.stat().st_size
    if size == 0:
        return
    complete, cut_line = complete_part(path, size)
    if cut_line is not None:
        cut_lines.append(f"{label} line {cut_line}" if label else f"line {cut_line}")
    options = parse_options()
    for chunk, lines, blank in json_chunks(path, complete, chunk_bytes):
        table = pajson.read_json(chunk, parse_options=options)
        if not one_event_per_line(table, lines, blank):
            raise NotOneEventPerLine(str(path))
        yield table

"""JSON lines into Arrow tables, as the fast reader, the parts and the compaction parse them: whole
lines in chunks, the recorder's explicit schema, and the checks that make pyarrow's reading of a
chunk the tolerant reader's (sigtrace.events.reader). No pandas here: the compaction child
(sigtrace.events.compact) imports this and pays for pyarrow only.
"""
from __future__ import annotations

import json
import os
import re
import stat
from contextlib import nullcontext
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from .columnar import Unreadable, arrow_schema

CHUNK_BYTES = 32 << 20          # read at once: pyarrow parses a chunk's blocks on all cores
# no event comes near this (its longest field, detail, is cut at 64 KiB): a longer line is read past,
# not held, whatever its length (a file from elsewhere may hold one of gigabytes); not JSON, so the
# fast path gives its chunk to the tolerant checks, which count it
MAX_LINE_BYTES = CHUNK_BYTES
LONG_LINE = b"\x00 a line longer than 32 MiB\n"
LONG_LINE_BODY = LONG_LINE.rstrip(b"\n")          # the marker of a file's unended last line


class NotOneEventPerLine(ValueError):
    """A chunk whose rows are not its lines (blank lines, two objects on one): the tolerant reader's."""


# a link is followed, as the listing follows it (recordings kept in git-annex or DVC are links); a
# FIFO or device put where the listing saw a file is refused, never waited on
JSONL_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


def open_segment(path: Path) -> BinaryIO:
    """A JSONL segment for reading: a regular file, or columnar.Unreadable (a ValueError); never
    waiting on a FIFO put where the listing saw a file; OSError."""
    fd = os.open(path, JSONL_READ_FLAGS)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Unreadable("not a regular file")
    return open(fd, "rb")


def _opened(source: Path | BinaryIO):
    """A path opened (and closed after), or a binary file the caller keeps open."""
    return open_segment(source) if isinstance(source, (str, Path)) else nullcontext(source)


def complete_part(source: Path | BinaryIO, size: int) -> tuple[int, int | None]:
    """How many of the file's first `size` bytes are complete lines, and the line number of a
    cut-off last line. Only those bytes are looked at: a segment being written grows meanwhile.
    source: a path, or a binary file (read from where this seeks)."""
    start = max(0, size - 65536)
    with _opened(source) as fh:
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
    with _opened(source) as fh:
        fh.seek(0)
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
    process's RSS as it is read through (3 GB for a 10M-event recording). A line longer than
    MAX_LINE_BYTES is read past, never held, and given as LONG_LINE (one line still: the lines'
    numbers stay the file's), which the tolerant checks count."""
    import pyarrow as pa
    # a block no bigger than the cap: only its first line (continued from the last) can pass it, and
    # that one is measured, so the lines cut are capped_lines' whatever chunk_bytes the caller asks
    chunk_bytes = min(chunk_bytes, MAX_LINE_BYTES)
    pos, rest, marks, skipping = 0, b"", b"", False
    with _opened(source) as fh:
        while pos < complete:
            block = fh.read(min(chunk_bytes, complete - pos))
            if not block:
                break
            pos += len(block)
            if skipping:                       # inside a line too long to hold
                nl = block.find(b"\n")
                if nl < 0 and pos < complete:
                    continue
                marks += LONG_LINE if nl >= 0 else LONG_LINE_BODY      # (the file's unended last line)
                block, skipping = (block[nl + 1:] if nl >= 0 else b""), False
            nl = block.find(b"\n")
            if nl < 0 and pos < complete:      # the line goes on past this block
                if len(rest) + len(block) > MAX_LINE_BYTES:
                    rest, skipping = b"", True
                else:
                    rest += block
                continue
            if len(rest) + (nl if nl >= 0 else len(block)) > MAX_LINE_BYTES:
                rest, block = b"", (LONG_LINE + block[nl + 1:] if nl >= 0 else LONG_LINE_BODY)
            data = marks + rest + block
            marks = b""
            cut = len(data) if pos >= complete else data.rfind(b"\n") + 1
            rest = data[cut:]
            view = memoryview(data)[:cut]
            yield pa.BufferReader(pa.py_buffer(view)), _lines(data, cut), _BLANK.search(view) is not None  # no copy
            del data, view
        tail = marks + (LONG_LINE_BODY if skipping else rest)
        if tail:
            yield pa.BufferReader(pa.py_buffer(tail)), _lines(tail, len(tail)), _BLANK.search(tail) is not None


def capped_lines(fh: BinaryIO) -> Iterator[bytes]:
    """A binary file's lines, each with its newline (a last one maybe without), as json_chunks
    gives them: a line longer than MAX_LINE_BYTES is read past, never held, and given as LONG_LINE."""
    while True:
        line = fh.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = fh.readline(1 << 20)
        yield LONG_LINE if line else LONG_LINE_BODY


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
    named in cut_lines. Raises pyarrow.ArrowInvalid (what the schema does not take), NotOneEventPerLine,
    columnar.Unreadable (not a regular file) and OSError."""
    import pyarrow.json as pajson
    with open_segment(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return
        complete, cut_line = complete_part(fh, size)
        if cut_line is not None:
            cut_lines.append(f"{label} line {cut_line}" if label else f"line {cut_line}")
        options = parse_options()
        fh.seek(0)
        for chunk, lines, blank in json_chunks(fh, complete, chunk_bytes):
            table = pajson.read_json(chunk, parse_options=options)
            if not one_event_per_line(table, lines, blank):
                raise NotOneEventPerLine(str(path))
            yield table

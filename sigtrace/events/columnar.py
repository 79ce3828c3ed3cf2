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
import struct
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
# A columnar file may come from anywhere (copied from another machine, planted): it is read message
# by message, each one's framing, sizes and header checked before pyarrow sees it, so that a crafted
# length cannot make a reader allocate what the file does not hold, and a zstd "bomb" (a small body
# that decompresses to gigabytes) is refused before it is decompressed.
MAGIC = b"ARROW1"
MAX_METADATA = 1 << 20           # a message header (flatbuffer); the recorder's are ~2 KB
MAX_INFLATE = 64                 # uncompressed bytes per compressed byte allowed (the recorder's: ~12)
MIN_INFLATE_ALLOWANCE = 64 << 20  # ... and any batch may inflate to this much (small batches compress well)
_SCHEMA, _DICTIONARY_BATCH, _RECORD_BATCH = 1, 2, 3        # flatbuffer MessageHeader union


class Unreadable(ValueError):
    """A columnar segment that is not a whole, valid file of the recorder's columns. Its text is
    ours (never the file's): it goes into the report's notes."""


def _open(path: Path | int):
    """A binary file of a columnar segment (a path, or a descriptor the caller keeps), and its size.
    Raises Unreadable (not a regular file) and OSError."""
    fd = path if isinstance(path, int) else os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable("not a regular file")
        return open(os.dup(fd), "rb", buffering=0), st.st_size
    finally:
        if fd is not path:
            os.close(fd)


def _messages(fh, size: int) -> Iterator[tuple[int, bytes, bytes]]:
    """The IPC messages of a file (magic, then the stream: its footer is not needed), as
    (header type, framed metadata, body), every length checked against the file's size."""
    if fh.read(8)[:6] != MAGIC:
        raise Unreadable("not an Arrow file")
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise Unreadable("cut short")
        continuation, meta_len = struct.unpack("<Ii", head)
        if continuation != 0xFFFFFFFF or meta_len < 0 or meta_len > MAX_METADATA:
            raise Unreadable("a damaged message")
        if meta_len == 0:
            return                                       # end of stream
        meta = fh.read(meta_len)
        if len(meta) < meta_len:
            raise Unreadable("cut short")
        header_type, body_len = _message_header(meta)
        if body_len < 0 or body_len > size - fh.tell():
            raise Unreadable("a message longer than the file")
        body = fh.read(body_len)
        if len(body) < body_len:
            raise Unreadable("cut short")
        yield header_type, head + meta, body


def _schema_of(messages: Iterator[tuple[int, bytes, bytes]]):
    """The file's first message: its schema, checked to be the recorder's (metadata apart)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    header_type, framed, body = next(messages, (None, b"", b""))
    if header_type != _SCHEMA:
        raise Unreadable("no schema")
    try:
        schema = ipc.read_schema(ipc.read_message(pa.py_buffer(framed + body)))
    except (pa.ArrowException, ValueError):
        raise Unreadable("a damaged schema") from None
    if not schema.remove_metadata().equals(arrow_schema()):
        raise Unreadable("its columns are not the recorder's")
    return schema


def recorded_bytes(path: Path) -> int:
    """What a reader sizes a segment by: a JSONL's size, or for a columnar segment the size of the
    JSONL it was compacted from (parts, streaming and progress are planned in JSON bytes), at most
    MAX_INFLATE times its own. OSError when it cannot be read."""
    if not is_columnar(path):
        return path.stat().st_size
    try:
        fh, size = _open(path)
    except Unreadable:
        return path.stat().st_size
    with fh:
        try:
            schema = _schema_of(_messages(fh, size))
            raw = (schema.metadata or {}).get(JSON_BYTES_KEY, b"")
            return max(0, min(int(raw), size * MAX_INFLATE))
        except (ImportError, Unreadable, ValueError):
            return size * JSON_RATIO           # the readers say what is wrong with it


def read_tables(path: Path | int) -> Iterator[Any]:
    """The columnar segment's events as tables (one record batch each, the JSON reader's schema), in
    file order. Raises Unreadable when the file is not a whole, valid columnar segment (after the
    tables before the fault), OSError when it cannot be read."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    fh, size = _open(path)
    with fh:
        messages = _messages(fh, size)
        schema = _schema_of(messages)
        for header_type, framed, body in messages:
            if header_type != _RECORD_BATCH:
                raise Unreadable("a message that is not a batch of events")
            _check_inflation(framed[8:], body)
            try:
                batch = ipc.read_record_batch(ipc.read_message(pa.py_buffer(framed + body)), schema)
                batch.validate(full=True)       # offsets and lengths: the file may come from anywhere
            except (pa.ArrowException, ValueError):
                raise Unreadable("a damaged batch of events") from None
            yield pa.Table.from_batches([batch]).replace_schema_metadata(None)


# -- the flatbuffer headers (format/Message.fbs), read with every offset checked
def _unpack(fmt: str, buf: bytes, pos: int) -> int:
    if pos < 0 or pos + struct.calcsize(fmt) > len(buf):
        raise Unreadable("a damaged message header")
    return struct.unpack_from(fmt, buf, pos)[0]


def _field(buf: bytes, table: int, i: int) -> int | None:
    """Where field i of the flatbuffer table at `table` is, None when absent."""
    vtable = table - _unpack("<i", buf, table)
    vt_size = _unpack("<H", buf, vtable)
    if 4 + 2 * i + 2 > vt_size:
        return None
    off = _unpack("<H", buf, vtable + 4 + 2 * i)
    return table + off if off else None


def _deref(buf: bytes, pos: int) -> int:
    return pos + _unpack("<I", buf, pos)


def _message_header(meta: bytes) -> tuple[int, int]:
    """(header type, body length) of a Message flatbuffer."""
    root = _deref(meta, 0)
    at_type, at_body = _field(meta, root, 1), _field(meta, root, 3)
    header_type = _unpack("<B", meta, at_type) if at_type is not None else 0
    body_len = _unpack("<q", meta, at_body) if at_body is not None else 0
    return header_type, body_len


def _check_inflation(meta: bytes, body: bytes) -> None:
    """Refuse a batch whose buffers would decompress to more than MAX_INFLATE times their size (at
    least MIN_INFLATE_ALLOWANCE): the lengths are read from the header and the buffers' prefixes,
    before anything is decompressed."""
    root = _deref(meta, 0)
    at_header = _field(meta, root, 2)
    if at_header is None:
        raise Unreadable("a batch without its header")
    batch = _deref(meta, at_header)
    at_buffers = _field(meta, batch, 2)
    if at_buffers is None:
        return
    compressed = _field(meta, batch, 3) is not None
    vec = _deref(meta, at_buffers)
    n = _unpack("<I", meta, vec)
    if n > len(meta) // 16:
        raise Unreadable("a damaged message header")
    total = 0
    for k in range(n):
        offset, length = _unpack("<q", meta, vec + 4 + 16 * k), _unpack("<q", meta, vec + 12 + 16 * k)
        if offset < 0 or length < 0 or offset + length > len(body):
            raise Unreadable("a buffer outside its message")
        if compressed and length >= 8:
            raw = _unpack("<q", body, offset)
            total += length - 8 if raw == -1 else raw
            if raw < -1:
                raise Unreadable("a damaged buffer")
        else:
            total += length
    if total > max(MIN_INFLATE_ALLOWANCE, MAX_INFLATE * len(body)):
        raise Unreadable(f"a batch that would inflate {total // max(1, len(body))}x (at most {MAX_INFLATE}x)")


def read_table(path: Path):
    """The whole columnar segment as one table (its batches side by side, no copy)."""
    import pyarrow as pa
    tables = list(read_tables(path))
    return pa.concat_tables(tables) if tables else arrow_schema().empty_table()


def iter_rows(path: Path, problems: Counter, where: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The tolerant reader's view: (row number from 1, event dict of its non-null fields). What
    cannot be read is counted in problems as a problem of `where` (its rows are not known)."""
    n = 0
    try:
        for table in read_tables(path):
            for row in table.to_pylist():
                n += 1
                yield n, {k: v for k, v in row.items() if v is not None}
    except Unreadable as exc:
        problems[f"unreadable columnar segments ({where}: {exc})"] += 1
    except OSError as exc:
        problems[f"unreadable columnar segments ({where}: {exc.strerror})"] += 1


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

"""Columnar segments: a closed JSONL segment compacted into an Arrow IPC file (zstd).

Why: parsing JSON is the floor of every read (pyarrow's multithreaded reader: ~430k events/s on
two cores, docs/benchmarks.md); an Arrow IPC file is read at millions of events a second, and it is
~9x smaller on disk, so the same --max-disk keeps ~9x more history.

When: the recorder writes JSON lines (a line is durable once write(2) returns, and a SIGKILL leaves
at most one cut-off line); once it has closed a segment and moved on to the next, the closed one is
compacted by a child process at low priority (sigtrace.events.compactor, .compact):
events-000002.jsonl becomes events-000002.arrow. The segment being written is always JSONL.

What: exactly the events of the JSONL, as the fast reader's explicit schema parses them, in file
order. A segment the fast reader would not take as it is (a cut-off or unparsable line, an unknown
field, a wrongly typed value, text that is not UTF-8) stays JSONL, for the tolerant reader, which
lists what it skips. Values out of range or vocabulary are kept as they are: every reader checks
a columnar segment exactly as it checks JSON (tests/test_columnar.py), so a planted or damaged file
is no more trusted than a JSONL one.

Safety: the file is written unnamed (O_TMPFILE) in the segment's directory, held open by descriptor
(never by path), and linked under its name only when complete, so a reader never sees half a file
and a killed compaction leaves nothing behind; the JSONL is removed after that. Both names of one
segment at once (a compaction killed between the two steps, or a file put there): the JSONL, the
recorder's own, is read and the other is named (list_segments). A JSONL compacted after a reader
listed the directory is read under its new name (current_segment).
"""
from __future__ import annotations

import math
import os
import stat
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .schema import DTYPES, FIELD_NAMES

SUFFIX = ".arrow"
JSONL_SUFFIX = ".jsonl"
COMPRESSION = "zstd"
JSON_BYTES_KEY = b"sigtrace.json_bytes"     # the JSONL's size: what a reader sizes its parts by
FIRST_TS_KEY = b"sigtrace.first_ts"         # its first event's ts: the disk cap's notes (read without pyarrow)
JSON_RATIO = 10                  # a columnar file without that key counts as this many JSON bytes per byte
# O_NONBLOCK: a FIFO put where a segment was listed is refused (not a regular file), not waited on
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


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


def current_segment(path: Path) -> Path:
    """The file a listed segment is in now: a JSONL compacted since it was listed (a report taken
    while the recorder runs) is read under its columnar name."""
    if path.suffix == JSONL_SUFFIX and not path.exists():
        twin = path.with_name(columnar_name(path.name))
        if twin.exists():
            return twin
    return path


# ---- reading ---------------------------------------------------------------------------------------
# A columnar file may come from anywhere (copied from another machine, planted): it is read message
# by message, each one's framing, sizes and header checked before pyarrow sees it, so that a crafted
# length cannot make a reader allocate what the file does not hold, and a zstd "bomb" (a small body
# that decompresses to gigabytes) is refused before it is decompressed.
MAGIC = b"ARROW1"
MAX_METADATA = 1 << 20           # a message header (flatbuffer); the recorder's are ~2 KB
MAX_INFLATE = 64                 # uncompressed bytes per compressed byte allowed (the recorder's: ~12)
MIN_INFLATE_ALLOWANCE = 64 << 20  # ... and any file may inflate to this much (small files compress well)
MIN_ROWS_ALLOWANCE = 1 << 20     # rows any file may hold; past that one per 4 bytes (the recorder's: 1 per 30)
MIN_EVENT_BYTES = 100            # the smallest event in JSON is ~150 bytes: a file is sized at least rows x this
_SCHEMA, _DICTIONARY_BATCH, _RECORD_BATCH = 1, 2, 3        # flatbuffer MessageHeader union


class Unreadable(ValueError):
    """A columnar segment that is not a whole, valid file of the recorder's columns. Its text is
    ours (never the file's): it goes into the report's notes."""


def _open(path: Path | int):
    """A binary file of a columnar segment (a path, or a descriptor the caller keeps), and its size.
    Raises Unreadable (not a regular file) and OSError."""
    fd = path if isinstance(path, int) else os.open(path, READ_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable("not a regular file")
        return open(os.dup(fd), "rb", buffering=0), st.st_size
    finally:
        if fd is not path:
            os.close(fd)


def _messages(fh, size: int, bodies: bool = True) -> Iterator[tuple[int, bytes, bytes]]:
    """The IPC messages of a file (magic, then the stream: its footer is not needed), as
    (header type, metadata, body), every length checked against the file's size. bodies=False:
    the bodies are skipped (b"" is given), the headers alone are read."""
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
        if not bodies:
            fh.seek(body_len, os.SEEK_CUR)
            yield header_type, meta, b""
            continue
        body = fh.read(body_len)
        if len(body) < body_len:
            raise Unreadable("cut short")
        yield header_type, meta, body


@dataclass
class _Header:
    """What the headers of a columnar file say, read without pyarrow (the recorder reads them)."""
    metadata: dict[bytes, bytes]
    rows: int = 0


def _headers(fh, size: int) -> _Header:
    messages = _messages(fh, size, bodies=False)
    header_type, meta, _ = next(messages, (None, b"", b""))
    if header_type != _SCHEMA:
        raise Unreadable("no schema")
    out = _Header(_schema_metadata(meta))
    for header_type, meta, _ in messages:
        if header_type != _RECORD_BATCH:
            raise Unreadable("a message that is not a batch of events")
        out.rows += _batch_rows(meta)
    return out


def _read_headers(path: Path | int) -> _Header:
    fh, size = _open(path)
    with fh:
        return _headers(fh, size)


def _schema_of(meta: bytes, body: bytes):
    """The schema message, checked to be the recorder's (metadata apart)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    try:
        schema = ipc.read_schema(ipc.read_message(pa.py_buffer(_framed(meta, body))))
    except (pa.ArrowException, ValueError, OSError):
        raise Unreadable("a damaged schema") from None
    if not schema.remove_metadata().equals(arrow_schema()):
        raise Unreadable("its columns are not the recorder's")
    return schema


def _framed(meta: bytes, body: bytes) -> bytes:
    return struct.pack("<Ii", 0xFFFFFFFF, len(meta)) + meta + body


def recorded_bytes(path: Path) -> int:
    """What a reader sizes a segment by: a JSONL's size; for a columnar segment, the size of the
    JSONL it was compacted from (parts, streaming and progress are planned in JSON bytes), never less
    than its rows at MIN_EVENT_BYTES each (the value is the file's word: a lie must not make a big
    file look small) nor more than MAX_INFLATE times the file. OSError when it cannot be read."""
    size = path.stat().st_size
    if not is_columnar(path):
        return size
    try:
        h = _read_headers(path)
    except Unreadable:
        return size * JSON_RATIO           # the readers say what is wrong with it
    try:
        claimed = int(h.metadata.get(JSON_BYTES_KEY, b""))
    except ValueError:
        claimed = size * JSON_RATIO
    return max(h.rows * MIN_EVENT_BYTES, min(claimed, size * MAX_INFLATE))


def first_ts(path: Path | int) -> float | None:
    """ts of a columnar segment's first event, as its compaction wrote it in the header (read
    without pyarrow: the recorder's disk cap asks); None when unknown."""
    try:
        ts = float(_read_headers(path).metadata.get(FIRST_TS_KEY, b""))
    except (OSError, Unreadable, ValueError):
        return None
    return ts if math.isfinite(ts) and ts >= 0 else None


def read_tables(path: Path | int) -> Iterator[Any]:
    """The columnar segment's events as tables (one record batch each, the JSON reader's schema), in
    file order. Raises Unreadable when the file is not a whole, valid columnar segment (after the
    tables before the fault), OSError when it cannot be read."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    fh, size = _open(path)
    with fh:
        messages = _messages(fh, size)
        header_type, meta, body = next(messages, (None, b"", b""))
        if header_type != _SCHEMA:
            raise Unreadable("no schema")
        schema = _schema_of(meta, body)
        # one budget for the whole file: uncompressed bytes, and rows (an all-null column takes no
        # bytes at all)
        bytes_left = max(MIN_INFLATE_ALLOWANCE, MAX_INFLATE * size)
        rows_left = max(MIN_ROWS_ALLOWANCE, size // 4)
        batches = 0
        for header_type, meta, body in messages:
            if header_type != _RECORD_BATCH:
                raise Unreadable("a message that is not a batch of events")
            rows = _batch_rows(meta)
            bytes_left -= _inflated_bytes(meta, body)
            rows_left -= rows
            if bytes_left < 0:
                raise Unreadable(f"it would inflate more than {MAX_INFLATE}x (a compression bomb?)")
            if rows_left < 0:
                raise Unreadable("more rows than its size can hold")
            try:
                batch = ipc.read_record_batch(ipc.read_message(pa.py_buffer(_framed(meta, body))), schema)
                batch.validate(full=True)       # offsets and lengths: the file may come from anywhere
            except (pa.ArrowException, ValueError, OSError):
                raise Unreadable("a damaged batch of events") from None
            if batch.num_rows != rows:
                raise Unreadable("a damaged batch of events")
            batches += 1
            yield pa.Table.from_batches([batch]).replace_schema_metadata(None)
        if not batches:
            raise Unreadable("no events in it (a compaction never writes such a file)")


# -- the flatbuffer headers (format/Message.fbs, format/Schema.fbs), read with every offset checked
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


def _vector(buf: bytes, pos: int, item: int) -> tuple[int, int]:
    """(start, count) of the flatbuffer vector referenced at pos, each item `item` bytes."""
    at = _deref(buf, pos)
    n = _unpack("<I", buf, at)
    if at + 4 + n * item > len(buf):
        raise Unreadable("a damaged message header")
    return at + 4, n


def _string(buf: bytes, pos: int) -> bytes:
    start, n = _vector(buf, pos, 1)
    return buf[start:start + n]


def _message_header(meta: bytes) -> tuple[int, int]:
    """(header type, body length) of a Message flatbuffer."""
    root = _deref(meta, 0)
    at_type, at_body = _field(meta, root, 1), _field(meta, root, 3)
    header_type = _unpack("<B", meta, at_type) if at_type is not None else 0
    body_len = _unpack("<q", meta, at_body) if at_body is not None else 0
    return header_type, body_len


def _header_table(meta: bytes) -> int:
    at = _field(meta, _deref(meta, 0), 2)
    if at is None:
        raise Unreadable("a message without its header")
    return _deref(meta, at)


def _schema_metadata(meta: bytes) -> dict[bytes, bytes]:
    """The custom metadata of a Schema message (its key/value strings; the first 64)."""
    at = _field(meta, _header_table(meta), 2)
    if at is None:
        return {}
    start, n = _vector(meta, at, 4)
    out = {}
    for k in range(min(n, 64)):
        kv = _deref(meta, start + 4 * k)
        at_key, at_value = _field(meta, kv, 0), _field(meta, kv, 1)
        if at_key is not None and at_value is not None:
            out[_string(meta, at_key)] = _string(meta, at_value)
    return out


def _batch_rows(meta: bytes) -> int:
    at = _field(meta, _header_table(meta), 0)
    rows = _unpack("<q", meta, at) if at is not None else 0
    if rows < 0:
        raise Unreadable("a damaged message header")
    return rows


def _inflated_bytes(meta: bytes, body: bytes) -> int:
    """What a batch's buffers take once decompressed, from its header and each buffer's length
    prefix, before anything is decompressed."""
    batch = _header_table(meta)
    at_buffers = _field(meta, batch, 2)
    if at_buffers is None:
        return 0
    compressed = _field(meta, batch, 3) is not None
    start, n = _vector(meta, at_buffers, 16)
    total = 0
    for k in range(n):
        offset, length = _unpack("<q", meta, start + 16 * k), _unpack("<q", meta, start + 16 * k + 8)
        if offset < 0 or length < 0 or offset + length > len(body):
            raise Unreadable("a buffer outside its message")
        if compressed and length >= 8:
            raw = _unpack("<q", body, offset)
            if raw < -1:
                raise Unreadable("a damaged buffer")
            total += length - 8 if raw == -1 else raw
        else:
            total += length
    return total


def read_table(path: Path):
    """The whole columnar segment as one table (its batches side by side, no copy)."""
    import pyarrow as pa
    tables = list(read_tables(path))
    return pa.concat_tables(tables) if tables else arrow_schema().empty_table()


ROWS_AS_DICTS = 20_000


def iter_rows(path: Path | int, problems: Counter, where: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The tolerant reader's view: (row number from 1, event dict of its non-null fields). What
    cannot be read is counted in problems as a problem of `where` (its rows are not known)."""
    n = 0
    try:
        for table in read_tables(path):
            # a batch as dicts a slice at a time: a file written elsewhere may hold one huge batch
            for at in range(0, table.num_rows, ROWS_AS_DICTS):
                for row in table.slice(at, ROWS_AS_DICTS).to_pylist():
                    n += 1
                    yield n, {k: v for k, v in row.items() if v is not None}
    except Unreadable as exc:
        problems[f"unreadable columnar segments ({where}: {exc})"] += 1
    except FileNotFoundError:
        raise                       # removed while being read: the reader says so
    except OSError as exc:
        problems[f"unreadable columnar segments ({where}: {exc.strerror or 'cannot be read'})"] += 1

"""Compaction of one closed JSONL segment into a columnar one (sigtrace.events.columnar): what the
child process started by sigtrace.events.compactor runs (`python -m sigtrace.events.compact DIR_FD
NAME`), at low priority, so that neither the recorder's CPU nor its memory pays for pyarrow.
"""
from __future__ import annotations

import errno
import importlib.util
import json
import os
import stat
import sys
from dataclasses import asdict, dataclass

from .columnar import COMPRESSION, JSON_BYTES_KEY, arrow_schema, columnar_name
from .compactor import EXIT_NO_PYARROW
from .fast_reader import json_chunks, parse_options, table_is_clean

# JSON parsed at once, one record batch each (~14k events): the child's peak is the interpreter and
# pyarrow (~100 MB) plus ~25x this (the parser's and the compressor's working memory)
CHUNK_BYTES = 4 << 20
NICE = 10                        # the compaction gives way to the recorder and to the node's pods
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


# ---- writing ---------------------------------------------------------------------------------------
@dataclass
class Compacted:
    """What one compaction did: `kept` says why the JSONL was kept (then nothing was written)."""
    segment: str
    events: int = 0
    json_bytes: int = 0
    columnar_bytes: int = 0
    kept: str | None = None


def compact_at(dir_fd: int, name: str) -> Compacted:
    """Compact the closed JSONL segment `name` of the directory dir_fd (see the module docstring).
    Raises OSError when the directory refuses (the JSONL is then untouched)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.json as pajson

    result = Compacted(name)
    src = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            result.kept = "not a regular file"
            return result
        result.json_bytes = size = st.st_size
        if size == 0:
            result.kept = "empty"
            return result
        os.lseek(src, size - 1, os.SEEK_SET)
        if os.read(src, 1) != b"\n":
            result.kept = "its last line is cut off"       # a write failure's partial line: tolerant reader
            return result
        os.lseek(src, 0, os.SEEK_SET)
        out = _unnamed_file(dir_fd)
        try:
            schema = arrow_schema().with_metadata({JSON_BYTES_KEY: str(size).encode()})
            options = ipc.IpcWriteOptions(compression=COMPRESSION)
            read_options = pajson.ReadOptions(block_size=CHUNK_BYTES + (1 << 20))
            with os.fdopen(os.dup(src), "rb", buffering=0) as fh, \
                    pa.OSFile(f"/proc/self/fd/{out}", "wb") as sink, \
                    ipc.new_file(sink, schema, options=options) as writer:
                for chunk in json_chunks(fh, size, CHUNK_BYTES):
                    try:
                        table = pajson.read_json(chunk, read_options=read_options, parse_options=parse_options())
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        # (pyarrow's message quotes the file: tenant text, not for meta.json)
                        result.kept = "a line the fast reader does not take (unparsable, unknown field or type)"
                        return result
                    if not table_is_clean(table):
                        result.kept = "an event without ts or kind, or text that is not UTF-8"
                        return result
                    writer.write_table(table.replace_schema_metadata(schema.metadata))
                    result.events += table.num_rows
            if not result.events:
                result.kept = "no events"
                return result
            os.fsync(out)
            result.columnar_bytes = os.fstat(out).st_size
            _link(out, dir_fd, columnar_name(name))
        finally:
            os.close(out)
    finally:
        os.close(src)
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        # removed meanwhile (the disk cap pruned it): the columnar copy must not bring it back
        os.unlink(columnar_name(name), dir_fd=dir_fd)
        result.kept = "pruned by the disk cap while it was compacted"
    return result


def _unnamed_file(dir_fd: int) -> int:
    """A new file in the directory with no name yet (O_TMPFILE): a crash leaves nothing."""
    return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o640, dir_fd=dir_fd)


def _link(fd: int, dir_fd: int, name: str) -> None:
    """Give the unnamed file fd its name; never replaces a file of that name (EEXIST)."""
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)


# ---- the child process ---------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """python -m sigtrace.events.compact DIR_FD NAME: compact one segment of the directory open as
    DIR_FD (inherited), at low priority; prints the result as one JSON line."""
    dir_fd, name = int(argv[0]), argv[1]
    try:
        os.nice(NICE)
    except OSError:
        pass
    try:
        # the OOM killer's first choice in the recorder's cgroup: the child, never the recorder
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")
    except OSError:
        pass
    if importlib.util.find_spec("pyarrow") is None:
        return EXIT_NO_PYARROW
    import pyarrow as pa
    pa.set_memory_pool(pa.system_memory_pool())   # gives freed chunks back (mimalloc keeps them: +30%)
    try:
        result = compact_at(dir_fd, name)
    except FileNotFoundError:
        result = Compacted(name, kept="removed before its turn (the disk cap)")
    except OSError as exc:
        result = Compacted(name, kept="the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                           else f"the directory refused it ({exc.strerror})")
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

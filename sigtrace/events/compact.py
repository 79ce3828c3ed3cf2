"""Compaction of a closed JSONL segment into a columnar one (sigtrace.events.columnar): what the
child process started by sigtrace.events.compactor runs (`python -m sigtrace.events.compact DIR_FD
NAME`), at low priority, so that neither the recorder's CPU nor its memory pays for pyarrow; and
`sigtrace compact DIR` for recordings made with --no-compact or before compaction existed.
"""
from __future__ import annotations

import errno
import importlib.util
import itertools
import json
import os
import stat
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import DataError
from .columnar import READ_FLAGS, COMPRESSION, FIRST_TS_KEY, JSON_BYTES_KEY, arrow_schema, columnar_name, is_columnar
from .compactor import EXIT_NO_PYARROW, REMOVED
from .jsonl_tables import json_chunks, one_event_per_line, parse_options, table_is_clean
from .segments import claim_segment, list_segments, open_dir, run_dirs_under

# JSON parsed at once, one record batch each (~14k events): the child's peak is the interpreter and
# pyarrow (~100 MB) plus ~25x this (the parser's and the compressor's working memory)
CHUNK_BYTES = 4 << 20
NICE = 10                        # the compaction gives way to the recorder and to the node's pods


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

    result = Compacted(name)
    src = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    try:
        # held until the JSONL is gone: a `record --append` that opens it meanwhile starts the next segment
        if not claim_segment(src, dir_fd, name, writing=False):
            result.kept = "held by another process (a recorder writing it), or replaced meanwhile"
            return result
        st = os.fstat(src)
        why = _not_compactable(src, st)
        if why:
            result.kept = why
            return result
        result.json_bytes = st.st_size
        with os.fdopen(os.dup(src), "rb", buffering=0) as fh:
            tables = _clean_tables(fh, st.st_size, result)
            first = next(tables, None)
            if first is None:
                result.kept = result.kept or "no events"
                return result
            out = _unnamed_file(dir_fd)
            try:
                schema = arrow_schema().with_metadata({
                    JSON_BYTES_KEY: str(st.st_size).encode(),
                    FIRST_TS_KEY: repr(float(first.column("ts")[0].as_py())).encode()})
                options = ipc.IpcWriteOptions(compression=COMPRESSION)
                with pa.OSFile(f"/proc/self/fd/{out}", "wb") as sink, \
                        ipc.new_file(sink, schema, options=options) as writer:
                    for table in itertools.chain([first], tables):
                        writer.write_table(table.replace_schema_metadata(schema.metadata))
                        result.events += table.num_rows
                if result.kept:
                    result.events = 0
                    return result
                os.fsync(out)
                # the JSONL's times: --max-age counts from the last write of the events, not the compaction
                os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
                result.columnar_bytes = os.fstat(out).st_size
                try:
                    _link(out, dir_fd, columnar_name(name))
                except FileExistsError:
                    # not ours (the writer's names are new): readers read the JSONL and name the other
                    result.kept = f"{columnar_name(name)} is there already"
                    result.events = result.columnar_bytes = 0
                    return result
            finally:
                os.close(out)
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            # removed meanwhile (the disk cap pruned it): the columnar copy must not bring it back
            os.unlink(columnar_name(name), dir_fd=dir_fd)
            result.kept = "pruned by the disk cap while it was compacted"
        return result
    finally:
        os.close(src)


def _not_compactable(fd: int, st: os.stat_result) -> str | None:
    """Why a segment is left as it is before it is read, or None."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty"
    if os.pread(fd, 1, st.st_size - 1) != b"\n":
        return "its last line is cut off"        # a write failure's partial line: the tolerant reader's
    return None


def _clean_tables(fh, size: int, result: Compacted) -> Iterator[Any]:
    """The segment's events as tables, as the fast reader takes them; at the first chunk it would not
    take, result.kept says why and the tables end."""
    import pyarrow as pa
    import pyarrow.json as pajson
    read_options = pajson.ReadOptions(block_size=CHUNK_BYTES + (1 << 20))
    options = parse_options()
    for chunk, lines, blank in json_chunks(fh, size, CHUNK_BYTES):
        try:
            table = pajson.read_json(chunk, read_options=read_options, parse_options=options)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # (pyarrow's message quotes the file: tenant text, not for meta.json)
            result.kept = "a line the fast reader does not take (unparsable, unknown field or type)"
            return
        if not one_event_per_line(table, lines, blank):
            result.kept = "a line the fast reader does not take (blank, or two events on it)"
            return
        if not table_is_clean(table):
            result.kept = "an event without ts or kind, or text that is not UTF-8"
            return
        yield table


def _unnamed_file(dir_fd: int) -> int:
    """A new file in the directory with no name yet (O_TMPFILE): a crash leaves nothing."""
    return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o640, dir_fd=dir_fd)


def _link(fd: int, dir_fd: int, name: str) -> None:
    """Give the unnamed file fd its name; never replaces a file of that name (EEXIST)."""
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)


# ---- a recording compacted after the fact (`sigtrace compact`) --------------------------------------
@dataclass
class RecordingCompacted:
    """What `sigtrace compact DIR` did, over every run under DIR."""
    runs: int = 0
    segments: int = 0
    events: int = 0
    json_bytes: int = 0
    columnar_bytes: int = 0
    kept: list[str] = field(default_factory=list)       # "run/segment: why", left JSONL
    open_runs: list[str] = field(default_factory=list)  # runs whose last segment a recorder may still write


def compact_recording(directory: str | os.PathLike,
                      progress: Callable[[str, int, int | None], None] | None = None) -> RecordingCompacted:
    """Compact every closed JSONL segment of the recordings under directory, in this process. A run's
    last segment is compacted only when its meta.json has an end (the recorder stopped): a running
    recorder, or a killed one, may have a cut line there. Raises DataError when there is nothing."""
    from .source import read_meta         # lazy: pandas, which the recorder's child does without
    root = Path(directory)
    runs = run_dirs_under(root) if root.is_dir() else []
    if not runs:
        raise DataError(f"{root}: no recording under it (no events*.jsonl / events*.arrow); pass the --output DIR "
                        f"of 'sigtrace record' or 'sigtrace agent'")
    out = RecordingCompacted(runs=len(runs))
    todo = []
    for run in runs:
        segments = list_segments(run)
        meta, _ = read_meta(run)
        finished = isinstance(meta.get("end"), (int, float))
        for seq, path in segments:
            if is_columnar(path):
                continue
            if seq == segments[-1][0] and not finished:
                out.open_runs.append(str(run))
                continue
            todo.append((run, path.name))
    real_root = Path(os.path.realpath(root))       # the links the operator put in DIR's own path
    for done, (run, name) in enumerate(todo, 1):
        where = f"{run.relative_to(root)}/{name}" if run != root else name
        try:
            # below DIR no component is followed if it is a link (a run swapped for one since it was listed)
            fd = open_dir(real_root / run.relative_to(root), create=False)
        except OSError as exc:
            out.kept.append(f"{where}: cannot open its directory ({exc.strerror})")
            continue
        try:
            result = compact_at(fd, name)
        except OSError as exc:
            out.kept.append(f"{where}: {exc.strerror or 'cannot be written'}")
            continue
        finally:
            os.close(fd)
        if result.kept:
            out.kept.append(f"{where}: {result.kept}")
        else:
            out.segments += 1
            out.events += result.events
            out.json_bytes += result.json_bytes
            out.columnar_bytes += result.columnar_bytes
        if progress:
            progress("segments compacted", done, len(todo))
    return out


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
        result = Compacted(name, kept=REMOVED)
    except OSError as exc:
        result = Compacted(name, kept="the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                           else f"the directory refused it ({exc.strerror})")
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

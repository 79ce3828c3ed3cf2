"""Write the export frame as UTF-8 CSV or Parquet, atomically (temp file + rename).

CSV convention, so that an empty string and a missing value stay different: a null is an
empty unquoted field, a string is always quoted (`""` is the empty string). pandas'
plain read_csv reads both as NaN; sigtrace analyze reads them back exactly.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import pandas as pd

from ..errors import OutputError, UsageProblem
from ..events.writer import atomic_file, existing_output
from . import cells
from .columns import sidecar_path


def have_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return False
    return True


def arrow_table(df: pd.DataFrame):
    import pyarrow as pa
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, UnicodeEncodeError):
        # text that is not valid UTF-8 (lone surrogates from a broken decoder): replace, don't fail
        df = df.copy()
        for col in df.columns:
            if df[col].dtype == "string" or df[col].dtype == object:
                df[col] = df[col].map(
                    lambda v: v.encode("utf-8", "replace").decode("utf-8") if isinstance(v, str) else v,
                    na_action="ignore").astype(df[col].dtype)
        return pa.Table.from_pandas(df, preserve_index=False)


class _CsvSink:
    """CSV written chunk by chunk: one header, then each chunk's rows, as one write of the whole would."""

    def __init__(self, tmp: Path, raw: bool) -> None:
        self.tmp, self.raw, self.first = tmp, raw, True
        self.fh = open(tmp, "wb")

    def write(self, df: pd.DataFrame) -> None:
        df = df if self.raw else cells.neutralise(df)
        if have_pyarrow():
            import pyarrow.csv as pacsv
            # "needed" quotes every string value (strings can contain separators) and leaves nulls bare
            pacsv.write_csv(arrow_table(df), self.fh,
                            pacsv.WriteOptions(quoting_style="needed", include_header=self.first))
        else:
            # fallback: the C writer cannot tell "" from null; both become an empty field
            df.to_csv(self.fh, index=False, header=self.first, encoding="utf-8", quoting=csv.QUOTE_MINIMAL,
                      lineterminator="\n")
        self.first = False

    def close(self) -> None:
        self.fh.close()


class ParquetSink:
    """Parquet written chunk by chunk into row groups of about ROW_GROUP rows. The schema is the first
    chunk's: chunks must carry the whole file's categories (dictionaries), which fix the types.
    where: a path or an open binary file (left open); meta: the JSON embedded as b"sigtrace"."""

    ROW_GROUP = 1 << 18

    def __init__(self, where: Path | BinaryIO, meta: bytes) -> None:
        if not have_pyarrow():
            raise UsageProblem("--parquet needs pyarrow, which is not installed; pip install pyarrow, or use --csv")
        self.where, self.meta = where, meta
        self.writer = self.schema = None
        self.pending: list = []
        self.rows = 0

    def write(self, df: pd.DataFrame) -> None:
        import pyarrow.parquet as pq
        table = arrow_table(df)
        if self.writer is None:
            # the per-node meta travels inside the Parquet file as well as in the sidecar
            schema_meta = dict(table.schema.metadata or {})
            schema_meta[b"sigtrace"] = self.meta
            self.schema = table.schema.with_metadata(schema_meta)
            where = str(self.where) if isinstance(self.where, Path) else self.where
            self.writer = pq.ParquetWriter(where, self.schema, compression="zstd")
        if not table.schema.equals(self.schema, check_metadata=False):
            table = table.cast(self.schema)
        self.pending.append(table.replace_schema_metadata(None))
        self.rows += table.num_rows
        if self.rows >= self.ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=max(self.rows, 1))
        self.pending, self.rows = [], 0

    def close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()


def _sink(fmt: str, tmp: Path, meta: dict, raw: bool):
    return _CsvSink(tmp, raw) if fmt == "csv" else ParquetSink(tmp, json.dumps(meta).encode())


STDOUT = "-"


def check_output_path(path: str) -> None:
    """Refuse what a rename would destroy or redirect: a symlink (a planted link is followed by
    nothing we do, but the user meant its target), a FIFO, a device, a directory. One line."""
    if path == STDOUT:
        return
    st = existing_output(path, UsageProblem)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UsageProblem(f"{path} exists and is not a regular file: give a file path, or - for stdout")


def write_export(df: pd.DataFrame, meta: dict, path: str | os.PathLike, fmt: str, raw: bool = False) -> None:
    """Write df to path (fmt "csv" or "parquet", "-" for stdout) and its meta to the sidecar
    PATH.meta.json. CSV string cells a spreadsheet would evaluate are neutralised unless raw."""
    write_exports(iter([df]), meta, [(str(path), fmt)], raw=raw)


def sidecar_meta(meta: dict, fmt: str, raw: bool) -> dict:
    return dict(meta, csv_cells=cells.RAW if raw else cells.NEUTRALISED) if fmt == "csv" else meta


def write_exports(chunks: Iterator[pd.DataFrame], meta: dict, targets: list[tuple[str, str]],
                  raw: bool = False) -> int:
    """Write the export, given as chunks in row order (each in COLUMNS, categoricals carrying the
    whole export's categories), to every (path, fmt) of targets at once ("-": stdout), each file
    atomically, then the sidecars. Returns the rows written."""
    for path, _ in targets:
        check_output_path(path)
    with ExitStack() as stack:
        sinks = []
        for path, fmt in targets:
            tmp = stack.enter_context(_output(path))
            sinks.append((path, _guarded(path, lambda: _sink(fmt, tmp, sidecar_meta(meta, fmt, raw), raw))))
        rows = 0
        for df in chunks:
            for path, sink in sinks:
                _guarded(path, lambda: sink.write(df))
            rows += len(df)
        for path, sink in sinks:
            _guarded(path, sink.close)
    for path, fmt in targets:
        if path != STDOUT:
            _guarded(path, lambda: _write_sidecar(path, sidecar_meta(meta, fmt, raw)))
    return rows


def _guarded(path: str, what: Callable[[], Any]) -> Any:
    try:
        return what()
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}; choose a writable path") from exc


def _write_sidecar(path: str, meta: dict) -> None:
    text = json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n"
    side = Path(sidecar_path(path))
    check_output_path(str(side))
    atomic_file(side, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextmanager
def _output(path: str) -> Iterator[Path]:
    """A temporary file to write path's content to: renamed over path (atomic_file), or copied to
    stdout, once everything is written; removed if anything fails."""
    if path == STDOUT:
        # to stdout (a pipe): no sidecar, the per-node meta is lost unless Parquet embeds it
        with tempfile.TemporaryDirectory(prefix="sigtrace-export-") as d:
            tmp = Path(d) / "out"
            yield tmp
            with open(tmp, "rb") as fh:
                shutil.copyfileobj(fh, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        return
    out = Path(path)
    fd, name = _guarded(path, lambda: tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part"))
    os.close(fd)
    try:
        yield Path(name)
        # atomic_file's own temp file (mode, rename over a planted link) takes the written one's place
        _guarded(path, lambda: atomic_file(out, lambda tmp: os.replace(name, tmp)))
    finally:
        Path(name).unlink(missing_ok=True)

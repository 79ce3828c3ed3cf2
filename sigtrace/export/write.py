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
from pathlib import Path

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


def _write_csv(df: pd.DataFrame, tmp: Path) -> None:
    if have_pyarrow():
        import pyarrow.csv as pacsv
        # "needed" quotes every string value (strings can contain separators) and leaves nulls bare
        pacsv.write_csv(arrow_table(df), str(tmp), pacsv.WriteOptions(quoting_style="needed"))
    else:
        # fallback: the C writer cannot tell "" from null; both become an empty field
        df.to_csv(tmp, index=False, encoding="utf-8", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")


def _write_parquet(df: pd.DataFrame, tmp: Path, meta: dict) -> None:
    if not have_pyarrow():
        raise UsageProblem("--parquet needs pyarrow, which is not installed; pip install pyarrow, or use --csv")
    import pyarrow.parquet as pq
    table = arrow_table(df)
    # the per-node meta travels inside the Parquet file as well as in the sidecar
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[b"sigtrace"] = json.dumps(meta).encode()
    pq.write_table(table.replace_schema_metadata(schema_meta), str(tmp), compression="zstd")


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
    if fmt == "csv":
        df = df if raw else cells.neutralise(df)
        meta = dict(meta, csv_cells=cells.RAW if raw else cells.NEUTRALISED)
    if str(path) == STDOUT:
        _write_stdout(df, meta, fmt)
        return
    check_output_path(str(path))
    out = Path(path)
    try:
        atomic_file(out, (lambda tmp: _write_csv(df, tmp)) if fmt == "csv" else (lambda tmp: _write_parquet(df, tmp, meta)))
        text = json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n"
        side = Path(sidecar_path(str(out)))
        check_output_path(str(side))
        atomic_file(side, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror}; choose a writable path") from exc


def _write_stdout(df: pd.DataFrame, meta: dict, fmt: str) -> None:
    """To stdout (a pipe): no sidecar, the per-node meta is lost unless Parquet embeds it."""
    with tempfile.TemporaryDirectory(prefix="sigtrace-export-") as d:
        tmp = Path(d) / "out"
        _write_csv(df, tmp) if fmt == "csv" else _write_parquet(df, tmp, meta)
        with open(tmp, "rb") as fh:
            shutil.copyfileobj(fh, sys.stdout.buffer)
        sys.stdout.buffer.flush()

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

from pathlib import Path

import pandas as pd

from ..errors import DataError
from .columnar import is_columnar, read_table
from .jsonl_tables import json_tables, table_is_clean
from .source import Recording, Source, lost_note, plan_recording, unfinished_note
from .schema import DTYPES
from .validate import frame_is_valid


def read_clean_recording(directory: str | Path) -> Recording | None:
    """The Recording read_recording would return, or None when it needs the tolerant reader."""
    try:
        src = plan_recording(directory)
    except DataError:
        return None   # read_recording gives the right error
    return read_clean_source(src)


def table_frame(table, index=None) -> pd.DataFrame | None:
    """The events frame read_recording gives (schema dtypes, sorted categories) of a clean table,
    consumed; None when a value is out of range or vocabulary (the tolerant reader skips it).
    index: the frame's row labels (default 0..n-1)."""
    import pyarrow as pa
    table = categories_in_arrow(table, DTYPES)
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


def categories_in_arrow(table, dtypes: dict[str, str]):
    """table with the columns dtypes calls "category" dictionary-encoded: repeated strings become
    pandas categoricals inside Arrow, without a Python string per row."""
    for i, name in enumerate(table.column_names):
        if dtypes.get(name) == "category":
            table = table.set_column(i, name, table.column(i).dictionary_encode())
    return table


def read_clean_source(src: Source) -> Recording | None:
    """read_clean_recording for a planned recording (sigtrace.events.source.plan_recording)."""
    try:
        import pyarrow as pa
        import pyarrow.json  # noqa: F401  (json_tables reads with it)
    except ImportError:
        return None

    meta, incomplete = src.meta, list(src.notes)
    if not isinstance(meta, dict):
        return None
    tables, cut_lines = [], []
    for label, path in src.current_files():
        try:
            if is_columnar(path):
                tables.append(read_table(path))
            else:
                tables.extend(json_tables(label, path, cut_lines))
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

"""A vectorised read of a clean recording: pyarrow's JSON reader instead of a json.loads per line.

10 million events through json.loads and DataFrame.from_records take minutes and many GB of
dicts; pyarrow parses the file in C++ threads straight into columns. It accepts only what the
tolerant reader (sigtrace.events.reader.read_recording) would read unchanged: every line an
object of known fields, types and kinds. Anything else (a truncated last line, garbage, an
unknown field or kind, a wrongly typed value) returns None and the export falls back to
read_recording, which skips and lists what it cannot use. tests/test_export_fast.py checks
that both give the same Recording.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..events.reader import Recording
from ..events.schema import DTYPES, FIELD_NAMES, KINDS
from ..events.writer import EVENTS_FILE, META_FILE
from .write import have_pyarrow


def _arrow_schema():
    import pyarrow as pa
    by_dtype = {"float64": pa.float64(), "Int64": pa.int64(), "string": pa.string(), "category": pa.string()}
    return pa.schema([pa.field(name, by_dtype[DTYPES[name]]) for name in FIELD_NAMES])


def _meta(d: Path) -> tuple[dict[str, Any], list[str]]:
    # the same notes, in the same order, as read_recording (kept equal by tests/test_export_fast.py)
    meta: dict[str, Any] = {}
    incomplete: list[str] = []
    meta_path = d / META_FILE
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            incomplete.append(f"{META_FILE} is unreadable: node, backend and lost-event counts unknown")
    else:
        incomplete.append(f"no {META_FILE}: the recorder did not finish (killed?); lost-event counts unknown")
    if meta and meta.get("end") is None:
        incomplete.append("the recorder did not stop cleanly (no end time): the last second may be missing")
    if meta.get("lost_events"):
        incomplete.append(f"{meta['lost_events']} events were lost by the recorder (ring buffer full)")
    return meta, incomplete


def read_clean_recording(directory: str | Path) -> Recording | None:
    """The Recording read_recording would return, or None when the file needs the tolerant reader."""
    if not have_pyarrow():
        return None
    import pyarrow as pa
    import pyarrow.json as pajson

    d = Path(directory)
    path = d / EVENTS_FILE
    if not d.is_dir() or not path.is_file() or path.stat().st_size == 0:
        return None   # read_recording gives the right error
    meta, incomplete = _meta(d)
    if not isinstance(meta, dict):
        return None
    try:
        table = pajson.read_json(str(path), parse_options=pajson.ParseOptions(
            explicit_schema=_arrow_schema(), unexpected_field_behavior="error"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError):
        return None
    if table.num_rows == 0 or table.column("ts").null_count or table.column("kind").null_count:
        return None
    # repeated strings become categoricals inside Arrow (dictionary encoding, no Python strings)
    for i, name in enumerate(table.column_names):
        if DTYPES[name] == "category":
            table = table.set_column(i, name, table.column(i).dictionary_encode())
    mapper = {pa.int64(): pd.Int64Dtype(), pa.string(): pd.StringDtype()}.get
    df = table.to_pandas(types_mapper=mapper)
    if not df["kind"].isin(KINDS).all():
        return None
    for name, dtype in DTYPES.items():
        if dtype == "category":
            if df[name].cat.categories.empty:
                # an all-null column: the very dtype read_recording's astype gives one
                # (from_records makes an absent field a float NaN column)
                df[name] = pd.Series(float("nan"), index=df.index).astype("category")
            else:
                # astype("category") in read_recording sorts the categories: same order here
                df[name] = df[name].cat.reorder_categories(sorted(df[name].cat.categories))
    df = df.sort_values("ts", kind="stable").reset_index(drop=True)
    return Recording(events=df, meta=meta, incomplete=incomplete, source=str(d))

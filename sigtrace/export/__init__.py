"""sigtrace export: recordings (one per node) -> one CSV or Parquet file, one row per event, or a
Hive-partitioned Parquet dataset DIR/node=<node>/date=<YYYY-MM-DD>/ (sigtrace.export.dataset).

Columns: the event schema's fields in schema order (sigtrace.events.schema.FIELD_NAMES),
then `node` and `schema_version` (sigtrace.export.columns). Per-node meta (backend, lost
events, what was incomplete) goes to a sidecar FILE.meta.json, which analyze reads.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import UsageProblem
from ..events.reader import read_recording
from ..events.segments import run_dirs_under
from ..events.schema import SCHEMA_VERSION
from .columns import COLUMNS, EXPORT_DTYPES, sidecar_path
from .dataset import is_dataset_target, write_dataset
from .frame import export_frame
from .write import check_output_path, have_pyarrow, write_export

__all__ = ["COLUMNS", "EXPORT_DTYPES", "ExportResult", "export_recordings", "have_pyarrow", "sidecar_path"]


@dataclass
class ExportResult:
    rows: int
    nodes: list[str]
    written: list[str]
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # dataset parts already there (same events)


def export_recordings(dirs: Sequence[str | os.PathLike], csv: str | None = None,
                      parquet: str | None = None, raw: bool = False,
                      progress: Callable[[str, int, int | None], None] | None = None) -> ExportResult:
    """Read every recording dir (tolerantly) and write all their events to csv and/or parquet
    ("-": stdout; a directory, or a path ending in '/': a partitioned dataset added to).
    raw: CSV cells exactly as recorded (see sigtrace.export.cells). progress(what, done, total):
    told after each recording read."""
    if not csv and not parquet:
        raise UsageProblem("nothing to write: give --csv FILE and/or --parquet FILE")
    if csv == "-" and parquet == "-":
        raise UsageProblem("--csv - and --parquet -: only one of them can go to stdout")
    dataset = parquet if parquet and parquet != "-" and is_dataset_target(str(parquet)) else None
    for path in (csv, None if dataset else parquet):
        if path:
            check_output_path(str(path))      # before reading gigabytes
    if parquet and not have_pyarrow():
        raise UsageProblem("--parquet needs pyarrow, which is not installed; pip install pyarrow, or use --csv")
    # read_recording takes the vectorised pyarrow path (sigtrace.events.fast_reader) for a clean
    # events.jsonl and the tolerant line-by-line one otherwise; everything after is vectorised.
    # A directory of runs (an agent's root, a `kubectl sigtrace collect` output) is read run by run:
    # rows do not care, and export_frame adds up each node's runs in its meta.
    runs = [run for d in dirs for run in (run_dirs_under(d) or [d])]
    recordings = []
    for run in runs:
        recordings.append(read_recording(run))
        if progress:
            progress("recordings read", len(recordings), len(runs))
            progress("events read", sum(len(r.events) for r in recordings), None)
    df, metas, notes = export_frame(recordings)
    meta = {"schema_version": SCHEMA_VERSION, "columns": list(COLUMNS), "nodes": metas, "notes": notes}
    written, skipped = [], []
    for path, fmt in ((csv, "csv"), (None if dataset else parquet, "parquet")):
        if path:
            write_export(df, meta, path, fmt, raw=raw)
            written.append(str(path))
    if dataset:
        parts = write_dataset(df, meta, dataset)
        written += [os.path.join(dataset, p) for p in parts.written]
        skipped = [os.path.join(dataset, p) for p in parts.skipped]
    notes = notes + [w for m in metas.values() for w in m["incomplete"]]
    return ExportResult(rows=len(df), nodes=sorted(metas), written=written, notes=notes, skipped=skipped)

"""sigtrace export: recordings (one per node) -> one CSV or Parquet file, one row per event, or a
Hive-partitioned Parquet dataset DIR/node=<node>/date=<YYYY-MM-DD>/ (sigtrace.export.dataset).

Columns: the event schema's fields in schema order (sigtrace.events.schema.FIELD_NAMES),
then `node` and `schema_version` (sigtrace.export.columns). Per-node meta (backend, lost
events, what was incomplete) goes to a sidecar FILE.meta.json, which analyze reads.
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from ..errors import DataError, UsageProblem
from ..events.partition import SpillFailed, _spill_warning, spill_dir
from ..events.columnar import recorded_bytes
from ..events.reader import read_recording
from ..events.segments import run_dirs_under
from ..events.source import plan_recording
from ..events.schema import SCHEMA_VERSION
from .columns import COLUMNS, EXPORT_DTYPES, NODE, sidecar_path
from .dataset import DatasetSink, is_dataset_target
from .frame import (PodNames, cast_export, export_frame_runs, fill_categories, finish_export, node_name, register_run,
                    run_meta, with_categories)
from .stream import CATEGORICAL, CHUNK_ROWS, KEYS, RUN, TEXT, NotStreamable, Run, merged, read_runs
from .write import check_output_path, have_pyarrow, write_exports

# An export of at most this much recorded JSON (at the default chunk) is read whole, as report reads
# a recording under PART_BYTES: streaming costs fixed work per run and per chunk (many small runs
# exported 4-8x slower), and the whole frame of 64 MB of JSON is about what streaming holds anyway.
WHOLE_BYTES = 64 << 20

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
                      progress: Callable[[str, int, int | None], None] | None = None,
                      chunk_rows: int = CHUNK_ROWS, whole_bytes: int | None = None) -> ExportResult:
    """Read every recording dir (tolerantly) and write all their events to csv and/or parquet
    ("-": stdout; a directory, or a path ending in '/': a partitioned dataset added to).
    raw: CSV cells exactly as recorded (see sigtrace.export.cells). progress(what, done, total):
    told after each recording read. chunk_rows: rows written at once (the peak is a few chunks,
    whatever the recordings' size; see sigtrace.export.stream). whole_bytes: an export whose event
    files hold at most this many bytes is read as one frame (default: WHOLE_BYTES at the default
    chunk_rows, in proportion to chunk_rows otherwise)."""
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
    # A directory of runs (an agent's root, a `kubectl sigtrace collect` output) is read run by run:
    # rows do not care, and each node's meta adds up its runs.
    runs = [run for d in dirs for run in (run_dirs_under(d) or [d])]
    files = [(str(p), fmt) for p, fmt in ((csv, "csv"), (None if dataset else parquet, "parquet")) if p]
    if whole_bytes is None:
        whole_bytes = WHOLE_BYTES * chunk_rows // CHUNK_ROWS
    if not have_pyarrow() or _recorded_bytes(runs) <= whole_bytes:
        return _export_whole(runs, files, dataset, raw, progress)
    try:
        tmp = spill_dir("sigtrace-export-")
    except OSError as exc:
        _spill_warning(SpillFailed(exc))
        return _export_whole(runs, files, dataset, raw, progress)     # nowhere to spill: in memory
    with tmp:
        try:
            read = read_runs(runs, Path(tmp.name), chunk_rows, progress)
        except NotStreamable:
            # a column the tolerant reader could not type: the whole frame decides its type
            return _export_whole(runs, files, dataset, raw, progress)
        metas: dict[str, dict] = {}
        notes: list[str] = []
        nodes = [register_run(run.rec, metas, notes) for run in read]
        names, categories = _whole_export(read, nodes)
        meta = _sidecar(metas, notes)
        chunks = ((with_categories(finish_export(_cast(df), names), categories), df[RUN].to_numpy())
                  for df in merged(list(zip(read, nodes)), chunk_rows))
        run_metas = [run_meta(run.rec, node) for run, node in zip(read, nodes)]
        return _write(chunks, meta, files, dataset, raw, metas, notes, run_metas, chunk_rows)


def _recorded_bytes(runs: list) -> int:
    """The size of every run's event files (a file that cannot be sized counts as big: streamed).
    A run that is no recording costs nothing here: reading it says so."""
    total = 0
    for run in runs:
        try:
            files = list(plan_recording(run).current_files())
        except DataError:
            continue
        for _, path in files:
            try:
                total += recorded_bytes(path)
            except OSError:
                return 1 << 62
    return total


def _export_whole(runs: list, files: list[tuple[str, str]], dataset: str | None, raw: bool,
                  progress: Callable[[str, int, int | None], None] | None) -> ExportResult:
    """The export as one frame in memory: without pyarrow, or for a run with untyped columns."""
    recordings = []
    for run in runs:
        recordings.append(read_recording(run))
        if progress:
            progress("recordings read", len(recordings), len(runs))
            progress("events read", sum(len(r.events) for r in recordings), None)
    df, metas, notes, rows_run = export_frame_runs(recordings)
    run_metas = [run_meta(rec, node_name(rec)[0]) for rec in recordings]
    return _write(iter([(df, rows_run)]), _sidecar(metas, notes), files, dataset, raw, metas, notes, run_metas)


def _sidecar(metas: dict[str, dict], notes: list[str]) -> dict:
    return {"schema_version": SCHEMA_VERSION, "columns": list(COLUMNS), "nodes": metas, "notes": notes}


def _write(chunks: Iterator[tuple[pd.DataFrame, np.ndarray]], meta: dict, files: list[tuple[str, str]],
           dataset: str | None, raw: bool, metas: dict[str, dict], notes: list[str], run_metas: list[dict],
           chunk_rows: int = CHUNK_ROWS) -> ExportResult:
    """chunks: the export's rows, each with its run's index in run_metas (a dataset's parts are by run)."""
    with ExitStack() as stack:
        sink = stack.enter_context(DatasetSink(dataset, meta, chunk_rows, run_metas)) if dataset else None
        frames = _fed(chunks, sink)
        rows = write_exports(frames, meta, files, raw=raw) if files else sum(len(df) for df in frames)
    written, skipped = [path for path, _ in files], []
    if sink:                        # its parts are written as it is closed
        written += [os.path.join(dataset, p) for p in sink.result.written]
        skipped = [os.path.join(dataset, p) for p in sink.result.skipped]
    notes = notes + [w for m in metas.values() for w in m["incomplete"]]
    return ExportResult(rows=rows, nodes=sorted(metas), written=written, notes=notes, skipped=skipped)


def _fed(chunks: Iterator[tuple[pd.DataFrame, np.ndarray]], sink: DatasetSink | None) -> Iterator[pd.DataFrame]:
    for df, runs in chunks:
        if sink:
            sink.write(df, runs)
        yield df


def _cast(df: pd.DataFrame) -> pd.DataFrame:
    if cast_export(df):         # the runs' columns are typed (NotStreamable otherwise): cannot happen
        raise RuntimeError("export: a chunk's column could not be cast to the export's type")
    return df


def _whole_export(runs: list[Run], nodes: list[str]) -> tuple[PodNames | None, dict[str, pd.Index]]:
    """What every chunk needs of the whole export: the pod names (from every run's lifecycle rows,
    in export order) and each categorical column's categories."""
    frames = [run.lifecycle.assign(**{NODE: node}) for run, node in zip(runs, nodes)]
    lifecycle = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if len(frames) > 1:
        lifecycle = lifecycle.sort_values("ts", kind="stable", ignore_index=True)
    cast_export(lifecycle)
    names = PodNames.of(lifecycle)
    values = {col: set().union(*(run.values.get(col, set()) for run in runs))
              for col in {*CATEGORICAL, *TEXT}}
    values.update(fill_categories(names, values, values))
    values[NODE] = set(nodes)
    return names, {col: pd.Index(sorted(v), dtype="str") for col, v in values.items() if col not in KEYS}

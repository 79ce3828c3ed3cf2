"""The events of a few pods of a recording, for `report --pod`: one pass over its files that
keeps those pods' rows, instead of splitting the whole recording by pod and correlating every pod.

A pod's report reads only its own events and the signals sent to it (sigtrace.events.partition),
plus a few facts of the whole recording gathered on the way (partition.WholeFacts: kinds, last
event, lifecycle rows, each row's place in time order). So it is the report the whole recording
gives that pod, byte for byte (tests/test_selection.py), in about the time of reading the files:
on a week of a busy node, seconds instead of a minute.

A pod is named by its uid or by its name (the last one its pod_lifecycle rows give it, as its
report shows it); a name names every pod that had it (a StatefulSet's web-0 after each restart).
A name is learnt from the pod's lifecycle rows as they come: a pod whose events came before the
row that names it (rare: the API watcher reports a pod when it starts) gives None, and the
caller reports as without a selection (in parts by pod when the recording is big, else whole); so
do chosen pods with more than MAX_SELECTED_ROWS events, which one pass would hold at once. What
the tolerant reader skips is skipped and noted as it does (partition.CleanChunks, tolerant).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection

import numpy as np
import pandas as pd

from . import schema as S
from .partition import ROW_POSITION, CleanChunks, NotClean, Summary, WholeFacts, chunks_readable, labelled_frame
from .source import Source


# the chosen pods' rows are correlated at once: past this many (a part's worth, report.build's
# PART_EVENTS), the recording is split by pod instead, one part at a time
MAX_SELECTED_ROWS = 250_000


@dataclass
class SelectedPods:
    """The chosen pods' rows and the whole recording's facts, as report.build.report_parts takes
    parts (units() and frame()): one unit holding every chosen pod whole."""
    meta: dict[str, Any]
    incomplete: list[str]
    source: str
    summary: Summary
    chosen: list[str]                        # the uids the selectors name, in uid order
    known: dict[str, str | None]             # every pod uid in the recording -> its name (None: unknown)
    _table: Any = None
    _rank: np.ndarray | None = None
    _frame: pd.DataFrame | None = None

    def units(self) -> list[int]:
        return [0] if self.chosen else []

    def frame(self, i: int = 0) -> tuple[pd.DataFrame, frozenset[str]]:
        """The chosen pods' events (and maybe some of pods a name once named), labelled as the whole
        recording's frame labels them, made once and kept (a replay learns from them after the
        report); the uids to report. NotClean as PodParts.frame."""
        if self._frame is None:
            table, self._table = self._table, None
            self._frame = labelled_frame(table, self._rank, "the selected pods' rows")
        return self._frame, frozenset(self.chosen)

    def close(self) -> None:
        self._table = self._frame = None


def select_pods(src: Source, selectors: Collection[str],
                progress: Callable[[str, int, int | None], None] | None = None) -> SelectedPods | None:
    """The events of the pods the selectors name (uids or names), or None when they are to be
    reported as without a selection (see the module docstring). progress(what, done, total): told
    as events are read."""
    if not chunks_readable(src):
        return None
    import pyarrow as pa
    import pyarrow.compute as pc
    meta = src.meta
    names = {str(s) for s in selectors}
    wanted = set(names)                      # uids to keep: each selector may be one
    seen: set[str] = set()                   # pod uids of the chunks read so far
    kept: list[Any] = []
    kept_rows = 0
    incomplete = list(src.notes)
    tables = CleanChunks(src, tolerant=True)       # what the tolerant reader skips is skipped here too
    whole = WholeFacts()
    try:
        for table, base in tables:
            seq = whole.add(table, base)
            for uid in _named_here(table, names):
                if uid not in wanted:
                    if uid in seen:
                        return None      # its earlier rows were not kept: read it whole
                    wanted.add(uid)
            keep = _rows_of(table, pa.array(sorted(wanted), pa.string()))
            if pc.any(keep).as_py():
                kept.append(table.filter(keep).append_column(ROW_POSITION, seq.filter(keep)))
                kept_rows += kept[-1].num_rows
                if kept_rows > MAX_SELECTED_ROWS:
                    return None          # busy pods: the split's parts keep memory bounded instead
            seen |= _uids_in(table)
            if progress:
                progress("reading events", base + table.num_rows, None)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError, NotClean):
        return None
    done = whole.finish(meta, incomplete, tables)
    if done is None:
        return None
    summary, rank = done
    known = {uid: None for uid in seen}
    known.update(last_names(summary.lifecycle))
    chosen = sorted(uid for uid in seen if uid in names or known.get(uid) in names)
    if any(uid not in wanted for uid in chosen):
        return None                      # named only by a later row: its rows were not all kept
    table = pa.concat_tables(kept) if kept else whole.schema.empty_table()
    return SelectedPods(meta, incomplete, str(src.directory), summary, chosen, known, _table=table, _rank=rank)


def last_names(lifecycle: pd.DataFrame) -> dict[str, str]:
    """Pod uid -> the last name its lifecycle rows (in time order) give it: the report's pod_name."""
    out: dict[str, str] = {}
    for uid, name in zip(lifecycle["pod_uid"].astype(object), lifecycle["pod_name"].astype(object)):
        if isinstance(uid, str) and uid and isinstance(name, str) and name:
            out[uid] = name
    return out


def _named_here(table: Any, names: set[str]) -> list[str]:
    """The uids this chunk's lifecycle rows give one of the names."""
    import pyarrow as pa
    import pyarrow.compute as pc
    rows = pc.and_(pc.equal(table.column("kind"), S.POD_LIFECYCLE),
                   pc.is_in(table.column("pod_name"), value_set=pa.array(sorted(names), pa.string())))
    rows = pc.fill_null(rows, False)
    if not pc.any(rows).as_py():
        return []
    return [u for u in pc.unique(table.column("pod_uid").filter(rows)).to_pylist() if u]


def _rows_of(table: Any, uids: Any) -> Any:
    """The mask of a chunk's rows of these pods: their own, and the signals sent to them."""
    import pyarrow.compute as pc
    own = pc.is_in(table.column("pod_uid"), value_set=uids)
    target = pc.is_in(table.column("target_pod_uid"), value_set=uids)
    return pc.fill_null(pc.or_(own, target), False)


def _uids_in(table: Any) -> set[str]:
    import pyarrow.compute as pc
    return {u for name in ("pod_uid", "target_pod_uid") for u in pc.unique(table.column(name)).to_pylist() if u}

"""Events as plain Python rows, for the per-pod steps that walk a handful of events one by one
(processes, signals, lifecycle). A pandas operation costs ~0.1 ms whatever its size: done per pod
on frames of a few rows, they were most of a report's time. Here each column is converted once for
all pods and every pod then works on dicts."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

Row = dict[str, Any]

# what the process/signal/lifecycle steps read
PROCESS_COLUMNS = ("ts", "kind", "pid", "tid", "comm", "pod_uid", "container_id", "nspid", "sig", "code",
                   "si_pid", "target_pid", "target_comm", "target_pod_uid", "target_container_id",
                   "target_nspid", "result", "handler", "filename", "ppid", "exit_code", "exit_signal",
                   "event", "pod_name", "namespace", "container_name", "detail")


def column_values(col: pd.Series) -> list[Any]:
    """A column as Python values, missing as None (pd.NA, NaN and None alike)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        arr = col.astype(object).to_numpy(dtype=object)
    else:
        try:
            arr = col.to_numpy(dtype=object, na_value=None)
        except (TypeError, ValueError):
            arr = col.to_numpy(dtype=object)
    missing = pd.isna(arr)
    if missing.any():
        arr = arr.copy()
        arr[missing] = None
    return [v.item() if isinstance(v, np.generic) else v for v in arr.tolist()] if col.dtype.kind in "iufb" else arr.tolist()


def to_rows(frame: pd.DataFrame, columns: tuple[str, ...] = PROCESS_COLUMNS) -> list[Row]:
    """One dict per row (keys: columns present in the frame, plus "row": the frame's index, unless
    the frame has a column of that name)."""
    cols = [c for c in columns if c in frame.columns]
    values = [column_values(frame[c]) for c in cols]
    index = frame.index.tolist()
    out = []
    for i, vals in enumerate(zip(*values)) if values else enumerate([()] * len(frame)):
        r = dict(zip(cols, vals))
        if "row" not in r:
            r["row"] = int(index[i])
        out.append(r)
    return out


class EventLookup:
    """ts and kind of the recording's events by row (the frame's index label), for evidence: a
    label lookup in the frame (.at) costs ~0.1 ms, and a report cites tens of events per pod."""

    def __init__(self, events: pd.DataFrame) -> None:
        self._events = events
        labels = events.index.to_numpy()
        self._ts = events["ts"].to_numpy(dtype=float)
        self._kind = events["kind"].astype(object).to_numpy(dtype=object)
        self._pos: np.ndarray | None = None
        if len(labels) and labels.dtype.kind in "iu" and labels.min() >= 0 and labels.max() < 4 * len(labels) + 1024:
            self._pos = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
            self._pos[labels] = np.arange(len(labels))

    def _at(self, row: int) -> int:
        if self._pos is not None and 0 <= row < len(self._pos) and self._pos[row] >= 0:
            return int(self._pos[row])
        return int(self._events.index.get_loc(row))

    def ts(self, row: int) -> float:
        return float(self._ts[self._at(row)])

    def kind(self, row: int) -> str:
        return str(self._kind[self._at(row)])

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
    out = arr.tolist()
    if col.dtype == object or isinstance(col.dtype, pd.CategoricalDtype) or col.dtype.kind == "f":
        # object columns may hold NaN or pd.NA; float columns NaN
        out = [None if (v is None or v is pd.NA or (isinstance(v, float) and v != v)) else
               (v.item() if isinstance(v, np.generic) else v) for v in out]
    return out


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

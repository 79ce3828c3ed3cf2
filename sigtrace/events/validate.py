"""Where events enter, one check per field: its schema type, its range, its vocabulary.

A recording can come from anywhere (copied between machines, edited, written by a newer or broken
recorder). A field of the wrong type, out of range or not finite makes its event unusable: it is
skipped and counted by reason (the report's `incomplete` says so), never coerced into a different
meaning (`pid: 1.5`, `sig: 15`, `target_pod_uid: 123`) and never a traceback. meta.json is checked
the same way: a wrong field is dropped and named. Both readers (tolerant and pyarrow) apply these
rules, so they keep giving the same Recording.
"""
from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from . import capabilities as C
from .schema import DTYPES, GENERATE_RESULTS, KINDS, TCP_STATES

PID_MAX = 4_194_304                       # PID_MAX_LIMIT on 64-bit kernels
TS_MAX = 2.0 ** 33                        # epoch seconds, year 2242: anything later is garbage
INT_RANGES: dict[str, tuple[int, int]] = {
    "pid": (0, PID_MAX), "tid": (0, PID_MAX), "nspid": (0, PID_MAX), "target_pid": (0, PID_MAX),
    "target_nspid": (0, PID_MAX), "ppid": (0, PID_MAX), "si_pid": (0, PID_MAX),
    "sport": (0, 65_535), "dport": (0, 65_535),
    "code": (-(2 ** 31), 2 ** 31 - 1), "exit_code": (-(2 ** 31), 2 ** 31 - 1),
}
SIGNAL_NAME = re.compile(r"^SIG[A-Z0-9+]{1,12}\Z")     # \Z: "SIGTERM\n" is not one ($ would take it)
VOCABULARY: dict[str, frozenset[str]] = {
    "kind": frozenset(KINDS),
    "result": frozenset(GENERATE_RESULTS),
    "handler": frozenset({"default", "ignore", "handler"}),
    "old_state": frozenset(TCP_STATES.values()),
    "new_state": frozenset(TCP_STATES.values()),
}
SIGNAL_FIELDS = ("sig", "exit_signal")
STRING_LIMITS = {"detail": 65_536, "filename": 4_096}
STRING_LIMIT = 1_024                      # any other text field (comm is 15 bytes in the kernel)


def _string_problem(name: str, value: Any) -> str | None:
    if not isinstance(value, str):
        return "not a string"
    if len(value) > STRING_LIMITS.get(name, STRING_LIMIT):
        return "too long"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:            # a lone surrogate (\ud800) from a broken writer
        return "not valid Unicode"
    if name in SIGNAL_FIELDS and not SIGNAL_NAME.match(value):
        return "not a signal name"
    vocab = VOCABULARY.get(name)
    if vocab is not None and value not in vocab:
        return "not a known value"
    return None


def field_problem(name: str, value: Any) -> str | None:
    """Why this value cannot stand in this schema field, or None when it can (null always can)."""
    if value is None:
        return None
    dtype = DTYPES[name]
    if dtype == "float64":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "not a number"
        if not math.isfinite(value) or not 0 <= value < TS_MAX:
            return "out of range"
        return None
    if dtype == "Int64":
        if isinstance(value, bool) or not isinstance(value, int):
            return "not an integer"
        low, high = INT_RANGES.get(name, (-(2 ** 63), 2 ** 63 - 1))
        return None if low <= value <= high else "out of range"
    return _string_problem(name, value)


def event_problem(event: dict[str, Any]) -> str | None:
    """`field: why` for the first unusable field of an event (a dict of schema fields), or None."""
    for name, value in event.items():
        why = field_problem(name, value)
        if why is not None:
            return f"{name} {why}"
    return None


def frame_problems(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """The vectorised check of a frame whose columns already have the schema's types (the pyarrow
    reader's, an export's): `field why` -> boolean mask of the rows that fail it (only failing checks).
    Each check looks at a column's min/max or categories first: a clean frame costs little."""
    out: dict[str, np.ndarray] = {}

    def add(why: str, mask: Any) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            out[why] = mask
    ts = df["ts"].to_numpy(dtype=float, na_value=np.nan)
    if not (np.isfinite(ts).all() and ts.min(initial=0) >= 0 and ts.max(initial=0) < TS_MAX):
        add("ts out of range", ~(np.isfinite(ts) & (ts >= 0) & (ts < TS_MAX)))
    for name, (low, high) in INT_RANGES.items():
        col = df[name] if name in df else None
        if col is None or col.isna().all() or (col.min() >= low and col.max() <= high):
            continue
        v = col.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        add(f"{name} out of range", (v < low) | (v > high))
    for name, vocab in VOCABULARY.items():
        if name in df and not _values(df[name]) <= vocab:
            add(f"{name} not a known value", df[name].notna().to_numpy() & ~df[name].astype(object).isin(vocab).to_numpy())
    for name in SIGNAL_FIELDS:
        if name in df:
            bad = {v for v in _values(df[name]) if not SIGNAL_NAME.match(v)}
            if bad:
                add(f"{name} not a signal name", df[name].astype(object).isin(bad).to_numpy())
    for name, dtype in DTYPES.items():
        if dtype not in ("string", "category") or name not in df or name in VOCABULARY or name in SIGNAL_FIELDS:
            continue
        limit = STRING_LIMITS.get(name, STRING_LIMIT)
        col = df[name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            long = [c for c in col.cat.categories if isinstance(c, str) and len(c) > limit]
            if long:
                add(f"{name} too long", col.isin(long).to_numpy())
        elif col.notna().any():
            lengths = col.str.len()
            if lengths.max() > limit:
                add(f"{name} too long", (lengths > limit).fillna(False).to_numpy())
    return out


def table_is_valid(table: Any) -> bool:
    """frame_is_valid for a clean Arrow table of the recorder's schema (CleanChunks'), without
    making the frame (~4x less time): each check on a column's min/max or distinct values. Never
    True where frame_is_valid would be False (tests/test_selection.py); False for a table of
    another schema."""
    import pyarrow.compute as pc
    from .columnar import arrow_schema
    if not table.schema.remove_metadata().equals(arrow_schema()):
        return False
    ts = table.column("ts")
    if ts.null_count:
        return False
    t = ts.to_numpy()
    if len(t) and not (np.isfinite(t).all() and t.min() >= 0 and t.max() < TS_MAX):
        return False
    for name, (low, high) in INT_RANGES.items():
        lo_hi = pc.min_max(table.column(name))
        low_v, high_v = lo_hi["min"].as_py(), lo_hi["max"].as_py()
        if low_v is not None and (low_v < low or high_v > high):
            return False
    for name, dtype in DTYPES.items():
        if dtype not in ("string", "category"):
            continue
        col = table.column(name)
        if col.null_count == len(col):
            continue
        if name in VOCABULARY or name in SIGNAL_FIELDS or dtype == "category":
            values = [v for v in pc.unique(col).to_pylist() if v is not None]
            if name in VOCABULARY and not set(values) <= VOCABULARY[name]:
                return False
            if name in SIGNAL_FIELDS and not all(SIGNAL_NAME.match(v) for v in values):
                return False
            if name not in VOCABULARY and name not in SIGNAL_FIELDS and \
                    any(len(v) > STRING_LIMITS.get(name, STRING_LIMIT) for v in values):
                return False
        elif pc.max(pc.utf8_length(col)).as_py() > STRING_LIMITS.get(name, STRING_LIMIT):
            return False
    return True


def frame_is_valid(df: pd.DataFrame) -> bool:
    """True when every value is in range and vocabulary; False sends a file to the tolerant reader,
    which skips and counts the bad events one by one."""
    return not frame_problems(df)


def _values(col: pd.Series) -> set[str]:
    if isinstance(col.dtype, pd.CategoricalDtype):
        return {str(v) for v in col.cat.categories}
    return {str(v) for v in pd.unique(col.dropna())}


# ---- meta.json ---------------------------------------------------------------------------------
def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


META_FIELDS: dict[str, Any] = {
    "schema_version": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "node": lambda v: isinstance(v, str) and len(v) <= 253,
    "kernel": lambda v: isinstance(v, str) and len(v) <= 256,
    "backend": lambda v: isinstance(v, str) and len(v) <= 64,
    "start": lambda v: v is None or _num(v),
    "end": lambda v: v is None or _num(v),
    "alive_at": lambda v: v is None or _num(v),
    "alive_every_s": lambda v: v is None or _num(v),
    "events": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "lost_events": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "capabilities": lambda v: isinstance(v, list) and all(c in C.ALL for c in v),
    "lost_by_probe": lambda v: isinstance(v, dict) and all(isinstance(n, int) and n >= 0 for n in v.values()),
    "pod_endpoints": lambda v: isinstance(v, dict) and all(isinstance(x, list) and all(isinstance(e, str) for e in x)
                                                            for x in v.values()),
    "dies_with": lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("pid"), int)),
}


def clean_meta(meta: Any) -> tuple[dict[str, Any], list[str]]:
    """meta.json's fields that hold what they claim, and a note naming each one dropped."""
    if not isinstance(meta, dict):
        return {}, [f"meta.json is a JSON {type(meta).__name__}, not an object: node, backend and lost-event "
                    f"counts unknown"]
    out, dropped = {}, []
    for key, value in meta.items():
        check = META_FIELDS.get(key)
        if check is not None and not check(value):
            dropped.append(key)
            continue
        out[key] = value
    notes = [f"meta.json: ignored {', '.join(sorted(dropped))} (wrong type or range)"] if dropped else []
    return out, notes

"""Read a recording back: tolerant of truncation, garbage and newer recorders.

What cannot be used is not dropped silently: every skipped line, unknown kind or unknown
field is described in Recording.incomplete, which reports show.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from ..errors import DataError
from .schema import DTYPES, FIELD_NAMES, KINDS
from .writer import EVENTS_FILE, META_FILE


@dataclass
class Recording:
    events: pd.DataFrame
    meta: dict[str, Any]
    incomplete: list[str] = field(default_factory=list)
    source: str = ""


def iter_event_lines(path: Path, problems: Counter, examples: dict) -> Iterator[dict]:
    """Yield parsed events; count lines that are not JSON objects of a known kind."""
    known_fields = set(FIELD_NAMES)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                key = "truncated last line" if not raw.endswith(b"\n") else "unparsable lines"
                problems[key] += 1
                examples.setdefault(key, lineno)
                continue
            if not isinstance(obj, dict) or "ts" not in obj or "kind" not in obj:
                problems["lines without ts/kind"] += 1
                examples.setdefault("lines without ts/kind", lineno)
                continue
            if obj["kind"] not in KINDS:
                key = f"events of unknown kind {obj['kind']!r}"
                problems[key] += 1
                examples.setdefault(key, lineno)
                continue
            extra = obj.keys() - known_fields
            if extra:
                for name in extra:
                    problems[f"unknown field {name!r} (ignored)"] += 1
                    obj.pop(name)
            yield obj


def events_frame(rows: list[dict]) -> pd.DataFrame:
    """A DataFrame with every schema column, in schema order, with the schema's dtypes."""
    df = pd.DataFrame.from_records(rows, columns=list(FIELD_NAMES))
    for name, dtype in DTYPES.items():
        try:
            df[name] = df[name].astype(dtype)
        except (TypeError, ValueError):
            # a value of the wrong type from a newer or broken writer: keep the column as objects
            df[name] = df[name].astype("object")
    return df.sort_values("ts", kind="stable").reset_index(drop=True)


def read_meta(d: Path) -> tuple[dict[str, Any], list[str]]:
    """meta.json, and what its absence or state says about the recording's completeness."""
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
    return meta, incomplete


def unfinished_note(meta: dict[str, Any], events: pd.DataFrame) -> str | None:
    """A recorder that never wrote its end time was killed: say so, name the last event it kept (what
    came later is missing), and whose death took it along when it lived in a traced PID namespace."""
    if not isinstance(meta, dict) or not meta or meta.get("end") is not None:
        return None
    note = "the recorder did not stop cleanly (no end time; killed?)"
    if len(events):
        last = events.iloc[-1]
        who = f" of {last['comm']}[{last['pid']}]" if pd.notna(last["comm"]) and pd.notna(last["pid"]) else ""
        note += f": its last event is {last['kind']}{who} at {_utc(last['ts'])}, anything later is missing"
    dies = meta.get("dies_with")
    if isinstance(dies, dict):
        cid = str(dies.get("container_id") or "")[:12] or "?"
        note += (f"; it ran in the PID namespace of {dies.get('comm') or '?'} (PID 1 of container {cid}) "
                 f"and was killed when that process exited")
    return note


def _utc(ts: Any) -> str:
    try:
        return pd.Timestamp(float(ts), unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S.%f UTC")
    except (TypeError, ValueError, OverflowError):
        return str(ts)


def lost_note(meta: dict[str, Any]) -> str | None:
    lost = meta.get("lost_events") if isinstance(meta, dict) else None
    return f"{lost} events were lost by the recorder (ring buffer full)" if lost else None


def read_recording(directory: str | Path, *, fast: bool = True) -> Recording:
    """Load DIR/events.jsonl and DIR/meta.json. Raises DataError when there is nothing usable.

    A clean file (every line a complete object of known kinds, fields and types: what the
    recorder writes) is parsed by pyarrow's JSON reader straight into columns; json.loads per
    line and a list of dicts cost ~50x the time and ~3.5 KB per event (docs/benchmarks.md).
    Anything else, or fast=False, takes the tolerant line-by-line path below, which gives the
    same Recording (tests/test_fast_reader.py) and lists what it skipped."""
    if fast:
        from .fast_reader import read_clean_recording   # lazy: it imports this module (and pyarrow)
        rec = read_clean_recording(directory)
        if rec is not None:
            return rec
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: no such recording directory; pass the --output DIR of 'sigtrace record'")
    path = d / EVENTS_FILE
    if not path.exists():
        raise DataError(f"{d}: has no {EVENTS_FILE}; is it the --output DIR of 'sigtrace record'?")
    meta, incomplete = read_meta(d)
    problems: Counter = Counter()
    examples: dict = {}
    rows = list(iter_event_lines(path, problems, examples))
    for what, n in problems.items():
        at = f" (first at line {examples[what]})" if what in examples else ""
        incomplete.append(f"skipped {n} {what}{at}" if not what.startswith("unknown field") else f"{n} x {what}")
    if not rows:
        raise DataError(f"{path}: no readable events ({sum(problems.values())} unusable lines); record again")
    if lost_note(meta):
        incomplete.append(lost_note(meta))
    events = events_frame(rows)
    if unfinished_note(meta, events):
        incomplete.append(unfinished_note(meta, events))
    return Recording(events=events, meta=meta, incomplete=incomplete, source=str(d))

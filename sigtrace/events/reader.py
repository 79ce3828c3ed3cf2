"""Read a recording back: tolerant of truncation, garbage and newer recorders.

What cannot be used is not dropped silently: every skipped line, unknown kind or unknown
field is described in Recording.incomplete, which reports show.

A recording is one run directory (its segments read in order as one stream, see
sigtrace.events.segments) or a directory of runs of one node (an agent's output root, one node's
directory from `kubectl sigtrace collect`): its runs are read as one recording in time order, so a
pod whose stop straddles an agent restart gets one report; each run keeps its own meta.json on
disk, and what the merge had to decide (the gap between runs, differing capabilities) is listed.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import pandas as pd

from ..errors import DataError
from .columnar import Unreadable, is_columnar, iter_rows
from .jsonl_tables import LONG_LINE, LONG_LINE_BODY, MAX_LINE_BYTES, capped_lines, open_segment
from .schema import DTYPES, FIELD_NAMES, KINDS
from .source import Recording, lost_note, plan_recording, unfinished_note
from .validate import event_problem

TOO_LONG = f"lines longer than {MAX_LINE_BYTES >> 20} MiB"

__all__ = ["Recording", "checked_lines", "events_frame", "iter_event_lines", "problem_notes", "read_recording"]


def iter_event_lines(path: Path, problems: Counter, examples: dict, label: str = "") -> Iterator[dict]:
    """Yield parsed events; count lines that are not JSON objects of a known kind. examples gets
    the first place of each problem ("line 7", or "<label> line 7" for one file of several)."""
    fh = open_counted(path, problems, label)
    if fh is not None:
        with fh:
            yield from checked_lines(capped_lines(fh), 1, problems, examples, label)


def open_counted(path: Path, problems: Counter, label: str = "") -> BinaryIO | None:
    """A JSONL segment opened for reading (jsonl_tables.open_segment: a FIFO or device put there
    since the listing is not waited on), or None with the reason counted in problems.
    FileNotFoundError (removed while being read) is the caller's to say."""
    try:
        return open_segment(path)
    except FileNotFoundError:
        raise
    except Unreadable as exc:
        problems[f"unreadable segments ({label or path.name}: {exc})"] += 1
    except OSError as exc:
        problems[f"unreadable segments ({label or path.name}: {exc.strerror or 'cannot be read'})"] += 1
    return None


def checked_lines(raws: Iterable[bytes], first: int, problems: Counter, examples: dict,
                  label: str = "") -> Iterator[dict]:
    """iter_event_lines of lines (each with its newline, but maybe a file's last) numbered from
    first: also a chunk of a file (sigtrace.events.partition's tolerant chunks)."""
    where = f"{label} line" if label else "line"
    for lineno, raw in enumerate(raws, first):
        if not raw.strip():
            continue
        if raw.startswith(LONG_LINE_BODY) and len(raw) <= len(LONG_LINE):   # read past (capped_lines)
            problems[TOO_LONG] += 1
            examples.setdefault(TOO_LONG, f"{where} {lineno}")
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):       # RecursionError: "[[[[..." nested past the stack
            key = "truncated last line" if not raw.endswith(b"\n") else "unparsable lines"
            problems[key] += 1
            examples.setdefault(key, f"{where} {lineno}")
            continue
        event = checked_event(obj, problems, examples, f"{where} {lineno}")
        if event is not None:
            yield event


def problem_notes(problems: Counter, examples: dict) -> list[str]:
    """What was skipped, as Recording.incomplete lists it: one note per problem, in the order they
    were first met, with its first place."""
    out = []
    for what, n in problems.items():
        at = f" (first at {examples[what]})" if what in examples else ""
        out.append(f"skipped {n} {what}{at}" if not what.startswith("unknown field") else f"{n} x {what}")
    return out


def iter_columnar_rows(path: Path, problems: Counter, examples: dict, label: str = "",
                       fd: int | None = None) -> Iterator[dict]:
    """iter_event_lines for a columnar segment (sigtrace.events.columnar): its rows are checked as
    lines are ("row 7" for "line 7"); a file that is not whole and valid is counted, with its rows
    read so far kept. fd: the segment already open (at its start), read instead of path."""
    where = f"{label} row" if label else "row"
    for n, obj in iter_rows(path if fd is None else fd, problems, label or path.name):
        event = checked_event(obj, problems, examples, f"{where} {n}")
        if event is not None:
            yield event


def checked_event(obj: object, problems: Counter, examples: dict, place: str) -> dict | None:
    """The event of one parsed line or row, or None when it is not usable (counted in problems, its
    place the first example of each): not an object with ts and kind, a kind not known, a field of
    the wrong type or range. Unknown fields are dropped and counted."""
    if not isinstance(obj, dict) or obj.get("ts") is None or obj.get("kind") is None:
        problems["lines without ts/kind"] += 1
        examples.setdefault("lines without ts/kind", place)
        return None
    if obj["kind"] not in KINDS:
        key = f"events of unknown kind {obj['kind']!r}"
        problems[key] += 1
        examples.setdefault(key, place)
        return None
    extra = obj.keys() - _KNOWN_FIELDS
    if extra:
        for name in extra:
            problems[f"unknown field {name!r} (ignored)"] += 1
            obj.pop(name)
    why = event_problem(obj)
    if why is not None:
        # a value of the wrong type or range: the event is not used rather than misread
        key = f"events whose {why}"
        problems[key] += 1
        examples.setdefault(key, place)
        return None
    return obj


_KNOWN_FIELDS = frozenset(FIELD_NAMES)


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


def read_recording(directory: str | Path, *, fast: bool = True) -> Recording:
    """Load a recording: DIR's segments (events.jsonl, events-000002.jsonl, ...) and DIR/meta.json,
    or every run under DIR as one (see the module docstring). Raises DataError when there is
    nothing usable.

    A clean file (every line a complete object of known kinds, fields and types: what the
    recorder writes) is parsed by pyarrow's JSON reader straight into columns; json.loads per
    line and a list of dicts cost ~50x the time and ~3.5 KB per event (docs/benchmarks.md).
    Anything else, or fast=False, takes the tolerant line-by-line path below, which gives the
    same Recording (tests/test_fast_reader.py) and lists what it skipped."""
    src = plan_recording(directory)
    if fast:
        from .fast_reader import read_clean_source   # lazy: pyarrow
        rec = read_clean_source(src)
        if rec is not None:
            return rec
    d = src.directory
    meta, incomplete = src.meta, list(src.notes)
    problems: Counter = Counter()
    examples: dict = {}
    rows: list[dict] = []
    for label, path in src.current_files():
        try:
            lines = iter_columnar_rows if is_columnar(path) else iter_event_lines
            rows.extend(lines(path, problems, examples, label))
        except FileNotFoundError:
            # removed between listing and reading: the disk cap of a recorder that is running
            incomplete.append(f"{label or path.name} was removed while being read (disk cap?)")
    incomplete += problem_notes(problems, examples)
    if not rows:
        where = src.files[0][1] if len(src.files) == 1 else d
        why = "; ".join(incomplete[:3]) or f"{sum(problems.values())} unusable lines"
        raise DataError(f"{where}: no readable events ({why}); record again")
    if lost_note(meta):
        incomplete.append(lost_note(meta))
    events = events_frame(rows)
    if unfinished_note(meta, events):
        incomplete.append(unfinished_note(meta, events))
    return Recording(events=events, meta=meta, incomplete=incomplete, source=str(d))

"""What a recording is made of, before a line is read: its run directories, their segment files in
order, their meta.json (checked), and what is known to be incomplete (sigtrace.events.segments).
Both readers (reader.py, tolerant; fast_reader.py, pyarrow) start from a Source and end in a
Recording."""
from __future__ import annotations

import json
import math
from collections import Counter
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from ..errors import DataError
from .columnar import current_segment
from .segments import list_segments, read_small_file, run_dirs, run_dirs_under
from .validate import clean_meta
from .writer import EVENTS_FILE, META_FILE


@dataclass
class Recording:
    events: pd.DataFrame
    meta: dict[str, Any]
    incomplete: list[str] = field(default_factory=list)
    source: str = ""


def read_meta(d: Path) -> tuple[dict[str, Any], list[str]]:
    """meta.json, and what its absence or state says about the recording's completeness."""
    meta: dict[str, Any] = {}
    incomplete: list[str] = []
    meta_path = d / META_FILE
    if meta_path.exists() or meta_path.is_symlink():
        try:
            data = read_small_file(meta_path)       # never waiting on a FIFO, at most MAX_META_BYTES
            if data is None:
                raise ValueError("not a regular file, a link, too big or unreadable")
            meta, notes = clean_meta(json.loads(data))
            incomplete += notes
        except (ValueError, RecursionError):      # RecursionError: "[[[[..." nested past the stack
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


def lost_events(meta: dict[str, Any]) -> int:
    """meta.json's lost_events as a count (0 when missing or not a number)."""
    return _int(meta.get("lost_events")) if isinstance(meta, dict) else 0


def lost_note(meta: dict[str, Any]) -> str | None:
    """What the recorder lost, by cause: the ring buffers (lost_by_probe) and, since segments, the
    disk (meta.json output.lost: disk full, output directory removed or not writable)."""
    lost = meta.get("lost_events") if isinstance(meta, dict) else None
    if not lost:
        return None
    out = meta.get("output") if isinstance(meta.get("output"), dict) else {}
    by = out.get("lost") if isinstance(out.get("lost"), dict) else {}
    disk, failed = _int(by.get("disk_full")), _int(by.get("write_failed"))
    if not (disk or failed):
        return f"{lost} events were lost by the recorder (ring buffer full)"
    parts = []
    ring = _int(lost) - disk - failed
    if ring > 0:
        parts.append(f"{ring} ring buffer full")
    if disk:
        parts.append(f"{disk} not written: disk full")
    if failed:
        parts.append(f"{failed} not written: output directory removed or not writable")
    return f"{lost} events were lost by the recorder ({'; '.join(parts)})"


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError, OverflowError):     # OverflowError: Infinity in a copied meta.json
        return 0


@dataclass
class Source:
    """What read_recording reads: segment files in order (label for notes, path), the meta that goes
    with them, and what is known to be incomplete before a line is read."""
    directory: Path
    files: list[tuple[str, Path]]
    meta: dict[str, Any]
    notes: list[str]

    def current_files(self) -> Iterator[tuple[str, Path]]:
        """files, each looked up as it is reached: a JSONL compacted since the listing (a report taken
        while the recorder runs) is given under its columnar name."""
        return ((label, current_segment(path)) for label, path in self.files)


def plan_recording(directory: str | Path) -> Source:
    """Find the segments and meta of a run directory, or of every run of a directory of runs.
    Raises DataError (one line) when there is no recording."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: no such recording directory; pass the --output DIR of 'sigtrace record'")
    try:
        runs = run_dirs(d)
    except OSError as exc:
        raise DataError(f"{d}: cannot list it ({exc.strerror}); check its permissions") from None
    if not runs:
        holders = sorted({r.parent for r in run_dirs_under(d)})    # deeper: directories of runs
        if len(holders) == 1:
            return plan_recording(holders[0])           # e.g. a collect output of one node
        if holders:
            shown = ", ".join(str(p) for p in holders[:3]) + (", ..." if len(holders) > 3 else "")
            raise DataError(f"{d}: holds recordings in {len(holders)} directories ({shown}): pass one node's "
                            f"directory (all its runs are read as one), or run `kubectl sigtrace report {d}`")
        raise DataError(f"{d}: has no {EVENTS_FILE} (nor other segments); is it the --output DIR of 'sigtrace record' "
                        f"(or of 'sigtrace agent')?")
    if len(runs) == 1:             # DIR itself, or a directory holding one run: read that run
        run = runs[0]
        meta, notes = read_meta(run)
        segments = _regular(_segments(run, notes), notes)
        notes += segment_notes(meta, [s for s, _ in segments], "")
        many = len(segments) > 1
        return Source(run, [(p.name if many else "", p) for _, p in segments], meta, notes)
    return _plan_runs(d, runs)


def _segments(run: Path, notes: list[str]) -> list[tuple[int, Path]]:
    """The run's segments; a columnar file beside its JSONL is named and not read."""
    ignored: list[str] = []
    segments = list_segments(run, ignored)
    for name in ignored:
        notes.append(f"{name} not read: the JSONL segment of the same number is there too (a compaction cut "
                     f"short, or a file put there); the JSONL was read")
    return segments


def _regular(segments: list[tuple[int, Path]], notes: list[str]) -> list[tuple[int, Path]]:
    """Only regular files are read (a FIFO named events.jsonl would hang the reader); the rest is named."""
    out = []
    for seq, path in segments:
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except OSError:
            regular = False
        if regular:
            out.append((seq, path))
        else:
            notes.append(f"{path.name} is not a regular file: not read")
    return out


def segment_notes(meta: dict[str, Any], seqs: list[int], where: str) -> list[str]:
    """Segments missing at the start (pruned by the disk cap, meta.json `pruned`) or in between."""
    notes = []
    if not seqs:
        return notes
    pruned = meta.get("pruned") if isinstance(meta, dict) and isinstance(meta.get("pruned"), dict) else None
    if seqs[0] > 1:
        which = "segment 1" if seqs[0] == 2 else f"segments 1-{seqs[0] - 1}"
        if pruned:
            until = f" (events until about {_utc(pruned['until'])})" if pruned.get("until") else ""
            notes.append(f"{where}{which} removed by the recorder's disk cap (--max-disk/--max-age){until}: "
                         f"what this recording held before its first kept segment is missing")
        else:
            notes.append(f"{where}{which} missing (removed?): what this recording held before its first "
                         f"kept segment is missing")
    for a, b in zip(seqs, seqs[1:]):
        if b > a + 1:
            which = f"segment {a + 1}" if b == a + 2 else f"segments {a + 1}-{b - 1}"
            notes.append(f"{where}{which} missing (removed?): events between segments {a} and {b} are missing")
    return notes


def _plan_runs(d: Path, runs: list[Path]) -> Source:
    """Several runs (one per recorder start) read as one recording in time order."""
    infos = []
    for run in runs:
        meta, notes = read_meta(run)
        infos.append((run, meta if isinstance(meta, dict) else {}, notes, _regular(_segments(run, notes), notes)))
    nodes = sorted({str(m["node"]) for _, m, _, _ in infos if m.get("node")})
    if len(nodes) > 1:
        raise DataError(f"{d}: holds recordings of {len(nodes)} nodes ({', '.join(nodes)}); a report reads one "
                        f"node's runs: pass a directory with only that node's, or run `kubectl sigtrace report {d}`")

    def start(info) -> tuple[float, str]:
        s = info[1].get("start")
        return (float(s) if isinstance(s, (int, float)) else math.inf, info[0].name)
    infos.sort(key=start)
    files, notes = [], []
    for run, meta, meta_notes, segments in infos:
        notes += [f"{run.name}: {n}" for n in meta_notes]
        notes += segment_notes(meta, [s for s, _ in segments], f"{run.name}: ")
        files += [(f"{run.name}/{p.name}", p) for _, p in segments]
    meta, merge_notes = merge_run_metas([(run.name, meta) for run, meta, _, _ in infos])
    return Source(d, files, meta, notes + merge_notes)


def merge_run_metas(metas: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], list[str]]:
    """One meta for runs read as one recording: the last run's (its end decides whether the whole
    ended cleanly), with the first start, summed losses, what all runs can record, the union of
    pod endpoints, and a note for each time the recorder was not running between two runs."""
    notes: list[str] = []
    merged = dict(metas[-1][1])
    firsts = [m.get("start") for _, m in metas if isinstance(m.get("start"), (int, float))]
    if firsts:
        merged["start"] = min(firsts)
    merged["lost_events"] = sum(_int(m.get("lost_events")) for _, m in metas)
    merged["events"] = sum(_int(m.get("events")) for _, m in metas)
    causes: Counter = Counter()
    for _, m in metas:
        out = m.get("output") if isinstance(m.get("output"), dict) else {}
        if isinstance(out.get("lost"), dict):
            causes.update({k: _int(v) for k, v in out["lost"].items()})
    if causes:
        merged["output"] = {**(merged.get("output") if isinstance(merged.get("output"), dict) else {}),
                            "lost": dict(causes)}
    caps = [(name, m.get("capabilities")) for name, m in metas]
    if all(isinstance(c, list) and c for _, c in caps):
        sets = [frozenset(map(str, c)) for _, c in caps]
        if len(set(sets)) > 1:
            common = frozenset.intersection(*sets)
            merged["capabilities"] = sorted(common)
            differ = "; ".join(f"{name}: {', '.join(sorted(s - common))}" for (name, _), s in zip(caps, sets)
                               if s - common)
            notes.append(f"the runs record different things (only some have {differ}): reporting with what all "
                         f"of them record")
    else:
        merged["capabilities"] = []          # inferred from the events, with build_reports' own note
    endpoints = [m.get("pod_endpoints") for _, m in metas if isinstance(m.get("pod_endpoints"), dict)]
    if len(endpoints) > 1 and any(e != endpoints[0] for e in endpoints):
        union: dict[str, list] = {}
        for e in endpoints:
            for uid, eps in e.items():
                union[uid] = sorted(set(union.get(uid, [])) | set(eps or []))
        merged["pod_endpoints"] = union
    merged["runs"] = [{"dir": name, "start": m.get("start"), "end": m.get("end"),
                       "lost_events": _int(m.get("lost_events"))} for name, m in metas]
    for (a, ma), (b, mb) in zip(metas, metas[1:]):
        killed = ma.get("end") is None
        last = ma.get("end") if not killed else ma.get("alive_at")
        nxt = mb.get("start")
        how = f"{a} was killed (no end time), then {b} started" if killed else f"{a} stopped, then {b} started"
        if not isinstance(last, (int, float)) or not isinstance(nxt, (int, float)):
            notes.append(f"the recorder did not run between two runs ({how}); when exactly is unknown: events "
                         f"in between are missing")
        elif nxt > last:
            notes.append(f"no recording from {_utc(last)} to {_utc(nxt)} ({nxt - last:.1f} s; {how}): events in "
                         f"between are missing")
    return merged, notes



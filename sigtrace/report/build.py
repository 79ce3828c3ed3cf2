"""The report stage: facts per pod (sigtrace.correlate) -> verdicts (sigtrace.verdicts) -> timeline
and stats -> one PodReport per pod. The one implementation behind `sigtrace report`, live reports
and `sigtrace analyze`; it knows nothing of how a report is rendered.

A recording is reported whole (build_reports: its events as one frame) or in parts by pod
(report_recording: sigtrace.events.partition), which gives the same reports in bounded memory: a
pod's report reads only its own events; the node-wide parts (which ReplicaSets the recording saw,
the recording's kinds and last event) come from small summaries gathered while reading."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from ..correlate.build import build_contexts, capabilities_for, capabilities_of, lifecycle_contexts
from ..correlate.outside import pod_resets_outside_stop, resets_outside_stop
from ..correlate.pod import PodContext
from ..correlate.stats import build_stats
from ..correlate.timeline import build_timeline
from ..correlate.trigger import pod_trigger, replica_sets
from ..verdicts import evaluate
from .model import PodReport, PodStore, ReportSet

# a frame of more events than this is reported in parts by pod (report_parts): the correlation's
# peak is then a part's (~100 bytes an event for each of a dozen intermediate columns), not the whole's
PART_EVENTS = 250_000


def report_for(ctx: PodContext, rs_by_deployment: dict[str, set[str]] | None = None) -> PodReport:
    """One pod's report. rs_by_deployment: the ReplicaSets the recording saw per Deployment
    (trigger.replica_sets of all pods), which tells a rollout from a scale-down."""
    t0 = ctx.t0 if ctx.t0 is not None else ctx.first_ts
    containers = []
    for c in ctx.containers.values():
        containers.append({
            "container_id": c.id, "name": c.name, "app": c.app,
            "pid1": c.pid1.to_dict(t0) if c.pid1 else None,
            "stop_signal": ({"sig": c.stop_signal.sig, "sender": c.stop_signal.sender_label,
                             "result": c.stop_signal.result, "t": ctx.rel(c.stop_signal.ts)} if c.stop_signal else None),
            "exit_t": ctx.rel(c.exit_ts) if c.exit_ts is not None else None,
            "processes": [p.to_dict(t0) for p in c.processes],
        })
    return PodReport(ctx.pod_uid, ctx.pod_name, ctx.namespace, ctx.stopped, ctx.t0, containers,
                     build_timeline(ctx), evaluate(ctx), build_stats(ctx), connections=ctx.display.lanes,
                     trigger=pod_trigger(ctx, rs_by_deployment or {}))


def build_reports(events: pd.DataFrame, meta: dict[str, Any], incomplete: Iterable[str] = (),
                  lanes: bool = True, progress: Callable[[str, int, int | None], None] | None = None) -> ReportSet:
    """One report per pod seen in the events (as the current task's pod or a signal's target).
    lanes=False leaves out PodReport.connections (only the HTML picture draws them).
    progress(what, done, total): told as pods are done."""
    meta = meta or {}
    if len(events) > PART_EVENTS:
        from ..events.partition import FrameParts
        n_parts = len(events) // PART_EVENTS + 1
        return report_parts(FrameParts(events, meta, list(incomplete), n_parts), lanes, progress)
    notes = list(incomplete)
    caps, cap_notes = capabilities_of(meta, events)
    notes += cap_notes
    ctxs = build_contexts(events, caps, meta, lanes)
    rs_by_deployment = replica_sets(ctxs)
    reports = []
    for ctx in ctxs.values():
        reports.append(report_for(ctx, rs_by_deployment))
        if progress:
            progress("pods done", len(reports), len(ctxs))
    return ReportSet(reports, _lost(meta), notes, meta, outside_stop=resets_outside_stop(ctxs))


def _lost(meta: dict[str, Any]) -> int:
    try:
        return int(meta.get("lost_events") or 0)
    except (TypeError, ValueError):
        return 0


def report_recording(directory: str | Path, lanes: bool = True, part_bytes: int | None = None,
                     progress: Callable[[str, int, int | None], None] | None = None) -> ReportSet:
    """The reports of a recording directory (read_recording's input), read in parts by pod when it
    is big and clean (bounded memory), whole otherwise. DataError as read_recording. part_bytes:
    how much of the recording's JSON a part holds (events.partition.PART_BYTES); progress as
    build_reports'."""
    from ..events.partition import PART_BYTES, NotClean, split_recording
    from ..events.reader import read_recording
    from ..events.source import plan_recording
    src = plan_recording(directory)
    parts = split_recording(src, part_bytes or PART_BYTES, progress)
    if parts is not None:
        try:
            return report_parts(parts, lanes, progress)
        except NotClean:
            pass                     # a value the tolerant reader skips: read it whole, as it does
        finally:
            parts.close()
    if progress:
        progress("reading events", 0, None)
    rec = read_recording(directory)
    if progress:
        progress("reading events", len(rec.events), len(rec.events))
    return build_reports(rec.events, rec.meta, rec.incomplete, lanes, progress)


def report_parts(parts: Any, lanes: bool = True,
                 progress: Callable[[str, int, int | None], None] | None = None) -> ReportSet:
    """build_reports of a recording split by pod (sigtrace.events.partition.PodParts): each part's
    pods from that part alone, in pod uid order as a whole recording's. NotClean from a part."""
    meta = parts.meta or {}
    summary = parts.summary
    notes = list(parts.incomplete)
    caps, cap_notes = capabilities_for(meta, summary.kinds)
    notes += cap_notes
    rs_by_deployment = replica_sets(lifecycle_contexts(summary.lifecycle, caps))
    reports = PodStore()             # compact until rendered: 26k reports as objects held ~0.9 GB
    outside: list[dict[str, Any]] = []
    for events, uids in parts.frames():
        ctxs = build_contexts(events, caps, meta, lanes, pods=uids, last_ts=summary.last_ts)
        del events
        for ctx in ctxs.values():
            reports.add(report_for(ctx, rs_by_deployment))
            entry = pod_resets_outside_stop(ctx)
            if entry is not None:
                outside.append(entry)
            if progress:
                progress("pods done", len(reports), None)
    reports.sort()
    outside.sort(key=lambda e: e["pod_uid"])
    return ReportSet(reports, _lost(meta), notes, meta, outside_stop=outside)

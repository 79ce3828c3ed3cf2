"""The report stage: facts per pod (sigtrace.correlate) -> verdicts (sigtrace.verdicts) -> timeline
and stats -> one PodReport per pod. The one implementation behind `sigtrace report`, live reports
and `sigtrace analyze`; it knows nothing of how a report is rendered."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import pandas as pd

from ..correlate.build import build_contexts, capabilities_of
from ..correlate.outside import resets_outside_stop
from ..correlate.pod import PodContext
from ..correlate.stats import build_stats
from ..correlate.timeline import build_timeline
from ..correlate.trigger import pod_trigger, replica_sets
from ..verdicts import evaluate
from .model import PodReport, ReportSet


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
    lost = meta.get("lost_events") or 0
    try:
        lost = int(lost)
    except (TypeError, ValueError):
        lost = 0
    return ReportSet(reports, lost, notes, meta, outside_stop=resets_outside_stop(ctxs))

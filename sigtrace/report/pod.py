"""One pod's report: its facts (a PodContext) -> verdicts, timeline, stats -> PodReport. What
report.build runs for every pod, in this process or in a worker (report.workers)."""
from __future__ import annotations

from ..correlate.pod import PodContext
from ..correlate.stats import build_stats
from ..correlate.timeline import build_timeline
from ..correlate.trigger import pod_trigger
from ..verdicts import evaluate
from .model import PodReport


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

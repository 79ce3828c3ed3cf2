"""Many small recordings reported in one correlation (analyze's nodes of a few hundred events).

A recording's report costs ~60 ms of pandas calls whatever its size, so a fleet export of 4,000
small nodes took four minutes of fixed costs. A pod's correlation reads only its own rows, and
the node-wide tables (connections, listeners, refusals) are keyed by pod: so the recordings'
frames go one after the other into one frame, each recording's rows labelled after the rows of
the one before (its row_base), and are correlated as one. What belongs to a recording and not to
a pod is then applied per recording: its capabilities (recordings are batched only with others of
the same), its endpoints, the recorder's cut, its ReplicaSets, its notes and lost events. Each
recording gets the ReportSet report_parts gives it alone (tests/test_analyze_parts.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..correlate.build import build_contexts, capabilities_for, lifecycle_contexts
from ..correlate.cut import mark_recorder_cut
from ..correlate.outside import pod_resets_outside_stop
from ..correlate.trigger import replica_sets
from ..events.schema import POD_LIFECYCLE
from ..events.source import lost_events
from .model import PodStore, ReportSet
from .pod import report_for


@dataclass
class Member:
    """One recording of a batch."""
    meta: dict[str, Any]
    incomplete: list[str]
    kinds: frozenset[str]            # the kinds of events it holds
    last_ts: float                   # its last event's time
    base: int                        # the batch frame's label of its first row
    rows: int
    uids: frozenset[str]             # its pods: every pod_uid and target_pod_uid of its rows


def capabilities(member: Member) -> tuple[frozenset[str], list[str]]:
    """What the member's recording can hold, and the note when that is assumed (report_parts')."""
    return capabilities_for(member.meta or {}, member.kinds)


def report_batch(events: pd.DataFrame, members: list[Member], lanes: bool = False) -> list[ReportSet]:
    """Each member's ReportSet, as report_parts makes it for the member alone. events: every
    member's rows in label order, a member's labelled base + its own label. The members' pods
    must be disjoint and their capabilities the same (analyze.parts forms such batches)."""
    if not members:
        return []
    if len(events) and not events["ts"].is_monotonic_increasing:
        # in time order once, as build_contexts would: the recorder's cut reads the same rows then
        # (a node whose export has rows out of time order: which comm a pid had first)
        events = events.sort_values("ts", kind="stable")
    caps = capabilities(members[0])[0]
    endpoints: dict[str, Any] = {}
    for m in members:
        mine = (m.meta or {}).get("pod_endpoints")
        if isinstance(mine, dict):
            # a recording speaks for its own pods only: another's entry must not reach a batched neighbour
            endpoints.update((uid, eps) for uid, eps in mine.items() if uid in m.uids)
    ctxs = build_contexts(events, caps, {"pod_endpoints": endpoints}, lanes)
    # the pods' lifecycle facts, for each member's ReplicaSets: a pod's from its own rows only
    owners = lifecycle_contexts(events[(events["kind"] == POD_LIFECYCLE).to_numpy(dtype=bool, na_value=False)], caps)
    out = []
    for m in members:
        mine = sorted(m.uids)
        rs_by_deployment = replica_sets({uid: owners[uid] for uid in mine if uid in owners})
        out.append(_member_reports(m, events, {uid: ctxs[uid] for uid in mine if uid in ctxs}, rs_by_deployment))
    return out


def _member_reports(m: Member, events: pd.DataFrame, ctxs: dict[str, Any],
                    rs_by_deployment: dict[str, set[str]]) -> ReportSet:
    meta = m.meta or {}
    notes = list(m.incomplete) + capabilities(m)[1]
    for ctx in ctxs.values():
        ctx.row_base = m.base
    mark_recorder_cut(ctxs, meta, events, m.last_ts)
    reports = PodStore()
    outside = []
    for ctx in ctxs.values():
        reports.add(report_for(ctx, rs_by_deployment))
        entry = pod_resets_outside_stop(ctx)
        if entry is not None:
            outside.append(entry)
    reports.sort()
    outside.sort(key=lambda e: e["pod_uid"])
    return ReportSet(reports, lost_events(meta), notes, meta, outside_stop=outside)

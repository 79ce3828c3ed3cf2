"""Facts per pod: events (schema dtypes) + meta -> one PodContext per pod (build_contexts), and what
the recording can hold (capabilities_of). The report stage (sigtrace.report) asks them questions."""
from __future__ import annotations

from typing import Any, Collection

import pandas as pd

from ..events import capabilities as C
from ..events import schema as S
from .cut import mark_recorder_cut
from .pod import PodContext, lifecycle_context, process_context
from .rows import EventLookup, Row, to_rows

# string columns of the TCP events with a handful of values per node (pods, containers, processes, addresses)
LOW_CARDINALITY = ("comm", "pod_uid", "container_id", "saddr", "daddr", "reason")


def capabilities_of(meta: dict[str, Any], events: pd.DataFrame) -> tuple[frozenset[str], list[str]]:
    """What the recording can hold. Without meta's list (an old or killed recorder), assume it holds
    what its events show, and say so."""
    caps = meta.get("capabilities") if isinstance(meta, dict) else None
    if isinstance(caps, list) and caps:
        return frozenset(str(c) for c in caps), []
    return capabilities_for(meta, set(events["kind"].astype("object").dropna().unique()))


def capabilities_for(meta: dict[str, Any], kinds: Collection[str]) -> tuple[frozenset[str], list[str]]:
    """capabilities_of for a recording whose kinds of events are known (read in parts)."""
    caps = meta.get("capabilities") if isinstance(meta, dict) else None
    if isinstance(caps, list) and caps:
        return frozenset(str(c) for c in caps), []
    kinds = set(kinds)
    inferred = set()
    if S.SIGNAL_GENERATE in kinds:
        inferred.add(C.SIGNAL_SENDER)
    if S.SIGNAL_DELIVER in kinds:
        inferred.add(C.SIGNAL_DELIVERY)
    if S.PROCESS_EXEC in kinds:
        inferred.add(C.PROCESS_EXEC)
    if S.PROCESS_EXIT in kinds:
        inferred.add(C.PROCESS_EXIT)
    if S.TCP_STATE in kinds:
        inferred.add(C.TCP_STATES)
    # the bpf recorder, the only one writing tcp_state, records kernel resets with it
    if kinds & {S.TCP_RESET_SENT, S.TCP_RESET_RECEIVED, S.TCP_STATE}:
        inferred.add(C.KERNEL_RESETS)
    if kinds & {S.SOCK_CLOSE, S.CONNECT_ERROR}:
        inferred.add(C.SOCKET_CALLS)
    note = ("meta.json lists no capabilities: assuming the recording holds what its events show "
            f"({', '.join(sorted(inferred)) or 'nothing'})")
    return frozenset(inferred), [note]


def pod_uids(events: pd.DataFrame) -> list[str]:
    # unique values first: str() of each (what astype(str) did) on a handful, not on every row
    uids = ({str(u) for u in pd.unique(events["pod_uid"].dropna().to_numpy())}
            | {str(u) for u in pd.unique(events["target_pod_uid"].dropna().to_numpy())})
    return sorted(u for u in uids if u)


def build_contexts(events: pd.DataFrame, caps: frozenset[str], meta: dict[str, Any] | None = None,
                   lanes: bool = True, pods: Collection[str] | None = None,
                   last_ts: float | None = None) -> dict[str, PodContext]:
    """Every pod's context (pod uid -> PodContext), in pod uid order. Processes and signals per pod
    from a few rows each; TCP for all pods at once (network.attach_tcp). lanes: also the HTML
    picture's connection intervals. pods: only these (events holds all of their rows, and maybe
    some of other pods); last_ts: the whole recording's last event time when events is a part."""
    from .network import TCP_INPUT, attach_tcp
    meta = meta or {}
    if len(events) and not events["ts"].is_monotonic_increasing:
        events = events.sort_values("ts", kind="stable")
    is_tcp = events["kind"].isin(S.TCP_KINDS)
    own: dict[str, list[Row]] = {}
    incoming: dict[str, list[Row]] = {}
    for r in to_rows(events[~is_tcp]):
        uid = r.get("pod_uid")
        if uid:
            own.setdefault(str(uid), []).append(r)
        if r["kind"] == S.SIGNAL_GENERATE and r.get("target_pod_uid"):
            incoming.setdefault(str(r["target_pod_uid"]), []).append(r)
    mine = events["pod_uid"].notna() if pods is None else events["pod_uid"].isin(pods)
    tcp = events.loc[is_tcp & mine, [c for c in TCP_INPUT if c in events.columns]]
    # few distinct values over most of the rows: as categories, the many filters and takes of the
    # TCP pass move small integer codes instead of Arrow strings
    tcp = tcp.astype({c: "category" for c in LOW_CARDINALITY if c in tcp.columns and tcp[c].dtype == "string"})
    first_tcp = tcp.groupby(tcp["pod_uid"].astype(object), sort=False)["ts"].min().to_dict() if len(tcp) else {}
    ctxs = {uid: process_context(events, uid, caps, own.get(uid, []), incoming.get(uid, []), first_tcp.get(uid))
            for uid in pod_uids(events) if pods is None or uid in pods}
    lookup = EventLookup(events)
    for ctx in ctxs.values():
        ctx.lookup = lookup
    endpoints = meta.get("pod_endpoints") if isinstance(meta.get("pod_endpoints"), dict) else None
    attach_tcp(ctxs, tcp, endpoints, lanes)
    mark_recorder_cut(ctxs, meta, events, last_ts)
    return ctxs


def build_context(events: pd.DataFrame, pod_uid: str, caps: frozenset[str],
                  meta: dict[str, Any] | None = None) -> PodContext:
    """One pod's context (tests, tools): the same steps as for a whole recording."""
    ctx = build_contexts(events, caps, meta).get(pod_uid)
    if ctx is None:
        raise KeyError(f"pod {pod_uid} has no events")
    return ctx


def lifecycle_contexts(lifecycle: pd.DataFrame, caps: frozenset[str]) -> dict[str, PodContext]:
    """Contexts holding only each pod's lifecycle facts (name, namespace, owner): what the node-wide
    questions about pods (trigger.replica_sets) read, from a recording's pod_lifecycle rows."""
    rows: dict[str, list[Row]] = {}
    for r in to_rows(lifecycle):
        if r.get("pod_uid"):
            rows.setdefault(str(r["pod_uid"]), []).append(r)
    return {uid: lifecycle_context(lifecycle, uid, caps, rows[uid]) for uid in sorted(rows)}

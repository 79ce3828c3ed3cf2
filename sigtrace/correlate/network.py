"""The TCP side of every pod at once: listeners, connections (side, port class, how they ended,
who closed them), refused attempts and the processes' own socket calls, attached to each pod's
context. One vectorised pass over the recording's TCP events (most of its rows) instead of one
per pod: a pandas operation costs ~0.1 ms whatever its size, and a node has many small pods."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..events import schema as S
from .connections import (CONN_COLUMNS, REFUSED_COLUMNS, Listener, aggregate_connections, build_listeners,
                          build_refused, classify, listener_masks)
from .pod import PodContext, mark_upstream
from .rows import to_rows

# what aggregate_connections and build_refused read: only these of a big recording's TCP rows
TCP_INPUT = ["ts", "kind", "pid", "comm", "pod_uid", "container_id", "saddr", "sport", "daddr", "dport",
             "old_state", "new_state", "sock", "reason"]
SOCKET_CALL_KINDS = (S.SOCK_CLOSE, S.CONNECT_ERROR, S.TCP_RESET_RECEIVED)

_EMPTY_CONNS = pd.DataFrame(columns=CONN_COLUMNS)
_EMPTY_REFUSED = pd.DataFrame(columns=REFUSED_COLUMNS)


def attach_tcp(ctxs: dict[str, PodContext], tcp: pd.DataFrame, endpoints: dict[str, Any] | None) -> None:
    """Fill listeners, conns, refused and socket_calls of every context. tcp: the recording's TCP
    events that belong to a pod (pod_uid set), in time order."""
    st = tcp[tcp["kind"] == S.TCP_STATE]
    _attach_listeners(ctxs, st, endpoints or {})
    for ctx in ctxs.values():
        mark_upstream(ctx)
    ports = {u: set(c.listeners) for u, c in ctxs.items()}
    upstream = {u: {p for p, li in c.listeners.items() if li.upstream} for u, c in ctxs.items()}
    exits = {u: {p.pid: p.exit_ts for p in c.procs.values() if p.exit_ts is not None} for u, c in ctxs.items()}
    agg = aggregate_connections(tcp, by_pod=True) if len(st) else None
    conns = classify(_without_pod_prefix(agg), ports, upstream, exits) if agg is not None and len(agg) else None
    refused = build_refused(tcp, conns if conns is not None else pd.DataFrame(columns=["pod"] + CONN_COLUMNS),
                            upstream)
    calls = tcp[tcp["kind"].isin(SOCKET_CALL_KINDS)]
    for uid, part in _split(conns, "pod").items():
        if uid in ctxs:
            ctxs[uid].conns = part[CONN_COLUMNS].reset_index(drop=True)
    for uid, part in _split(refused, "pod").items():
        if uid in ctxs:
            ctxs[uid].refused = part[REFUSED_COLUMNS].reset_index(drop=True)
    for uid, part in _split(calls, "pod_uid").items():
        if uid in ctxs:
            ctxs[uid].socket_calls = part
    for ctx in ctxs.values():
        if ctx.conns.empty and not len(ctx.conns.columns):
            ctx.conns = _EMPTY_CONNS
        if ctx.refused.empty and not len(ctx.refused.columns):
            ctx.refused = _EMPTY_REFUSED
    _attach_summaries(ctxs, conns if conns is not None else pd.DataFrame(columns=["pod"] + CONN_COLUMNS), refused)


def _attach_summaries(ctxs: dict[str, PodContext], conns: pd.DataFrame, refused: pd.DataFrame) -> None:
    """What the stats, the timeline and the HTML picture take from the connections, for all pods."""
    from .build import conn_lanes
    from .stats import conn_stats
    from .timeline import PRE_WINDOW_S, conn_lines
    t0 = {u: c.t0 for u, c in ctxs.items()}
    ref = {u: (c.t0 if c.t0 is not None else c.first_ts) for u, c in ctxs.items()}
    starts = {u: (c.t0 - PRE_WINDOW_S if c.t0 is not None else float("-inf")) for u, c in ctxs.items()}
    for name, per_pod in (("conn_stats", conn_stats(conns, refused, t0)), ("conn_lines", conn_lines(conns, refused, starts)),
                          ("lanes", conn_lanes(conns, t0, ref))):
        for uid, value in per_pod.items():
            if uid in ctxs:
                setattr(ctxs[uid], name, value)


def _attach_listeners(ctxs: dict[str, PodContext], st: pd.DataFrame, endpoints: dict[str, Any]) -> None:
    listen, child = listener_masks(st)
    rows: dict[str, list] = {}
    for r in to_rows(st[listen], ("ts", "pid", "comm", "pod_uid", "container_id", "saddr", "sport", "new_state")):
        rows.setdefault(r["pod_uid"], []).append(r)
    children: dict[str, set[int]] = {}
    ch = st.loc[child & st["sport"].notna(), ["pod_uid", "sport"]]
    if len(ch):
        for uid, port in ch.astype({"pod_uid": object}).drop_duplicates().itertuples(index=False):
            children.setdefault(uid, set()).add(int(port))
    for uid, ctx in ctxs.items():
        ctx.listeners = build_listeners(rows.get(uid, []), children.get(uid))
        for ep in endpoints.get(uid) or () if isinstance(endpoints, dict) else ():
            # "*:8080", "127.0.0.1:9000": what the recorder learned from /proc/<pid>/net (LISTEN may predate it)
            addr, _, port = str(ep).rpartition(":")
            if port.isdigit():
                ctx.listeners.setdefault(int(port), Listener(int(port), addr or None, None, None, None, None, None, None))


def _without_pod_prefix(agg: pd.DataFrame) -> pd.DataFrame:
    """Connection keys as the pod alone names them ("sock#n"): the string path prefixes "uid|"."""
    keys = agg.index.tolist()
    pods = agg["pod"].tolist()
    if keys and isinstance(keys[0], str) and str(keys[0]).startswith(f"{pods[0]}|"):
        agg = agg.copy()
        agg.index = pd.Index([k[len(p) + 1:] if k.startswith(f"{p}|") else k for k, p in zip(keys, pods)],
                             name=agg.index.name)
    return agg


def _split(frame: pd.DataFrame | None, column: str) -> dict[str, pd.DataFrame]:
    if frame is None or not len(frame):
        return {}
    col = frame[column]
    keys = col.astype(object).to_numpy() if not isinstance(col.dtype, np.dtype) else col.to_numpy()
    return {str(u): frame.iloc[idx] for u, idx in pd.Series(keys).groupby(keys, sort=False).indices.items()
            if u is not None and u == u}

"""The TCP side of every pod at once: listeners, connections (side, port class, how they ended,
who closed them), refused attempts and the processes' own socket calls, attached to each pod's
context. One vectorised pass over the recording's TCP events (most of its rows) instead of one
per pod: a pandas operation costs ~0.1 ms whatever its size, and a node has many small pods."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from ..events import schema as S
from .connections import (CONN_COLUMNS, REFUSED_COLUMNS, Listener, aggregate_connections, build_listeners,
                          build_refused, classify, listener_masks)
from .counted import add_to_stats, add_to_timeline, counted_closes
from .facts import Connections, PodRows, Refusals, SocketCalls, numpy_columns
from .pod import PodContext, mark_upstream
from .rows import to_rows

# what aggregate_connections and build_refused read: only these of a big recording's TCP rows
TCP_INPUT = ["ts", "kind", "pid", "comm", "pod_uid", "container_id", "saddr", "sport", "daddr", "dport",
             "old_state", "new_state", "sock", "reason", "count"]
SOCKET_CALL_KINDS = (S.SOCK_CLOSE, S.CONNECT_ERROR, S.TCP_RESET_RECEIVED)
MAX_LANE_CONNS = 2000


def attach_tcp(ctxs: dict[str, PodContext], tcp: pd.DataFrame, endpoints: dict[str, Any] | None,
               lanes: bool = True) -> None:
    """Fill listeners, conns, refused, calls and display of every context. tcp: the recording's TCP
    events that belong to a pod (pod_uid set), in time order."""
    st = tcp[tcp["kind"] == S.TCP_STATE]
    _attach_listeners(ctxs, st, endpoints or {})
    for ctx in ctxs.values():
        mark_upstream(ctx)
    ports = {u: set(c.listeners) for u, c in ctxs.items()}
    upstream = {u: {p for p, li in c.listeners.items() if li.upstream} for u, c in ctxs.items()}
    exits = {u: {p.pid: p.exit_ts for p in c.procs.values() if p.exit_ts is not None} for u, c in ctxs.items()}
    agg = aggregate_connections(tcp, by_pod=True) if len(st) else None
    conns = (classify(_without_pod_prefix(agg), ports, upstream, exits) if agg is not None and len(agg)
             else pd.DataFrame(columns=["pod"] + CONN_COLUMNS))
    refused = build_refused(tcp, conns, upstream)
    calls = tcp[tcp["kind"].isin(SOCKET_CALL_KINDS)]
    conn_rows, refused_rows = _pod_rows(conns, "pod", CONN_COLUMNS), _pod_rows(refused, "pod", REFUSED_COLUMNS)
    call_rows = _pod_rows(calls, "pod_uid", None)
    for uid, ctx in ctxs.items():
        ctx.conns = Connections(conn_rows(uid), ctx.procs)
        ctx.refused = Refusals(refused_rows(uid))
        ctx.calls = SocketCalls(call_rows(uid))
    counted = counted_closes(tcp, ports, upstream)
    _attach_summaries(ctxs, conns, refused, lanes, counted)


def _pod_rows(frame: pd.DataFrame, key: str, columns: list[str] | None) -> Callable[[str], PodRows]:
    """pod uid -> its rows of a table of all pods. Each pod's rows are made adjacent once: a pod's
    table is then a slice, not a copy. columns: those kept, converted to numpy once for all pods;
    None keeps all, converted per pod on first use."""
    frame = frame.iloc[np.argsort(_keys(frame[key]), kind="stable")] if len(frame) else frame
    parts = _ranges(frame[key]) if len(frame) else {}
    view = frame[columns] if columns else frame
    cols = numpy_columns(view) if columns else None
    return lambda uid: PodRows(view, cols, *parts.get(uid, (0, 0)))


def _keys(col: pd.Series) -> np.ndarray:
    return pd.factorize(col.to_numpy(dtype=object))[0]


def _ranges(col: pd.Series) -> dict[str, tuple[int, int]]:
    """Of a column sorted so that equal values are adjacent: value -> [start, end) positions."""
    vals = col.to_numpy(dtype=object)
    starts = np.flatnonzero(np.r_[True, vals[1:] != vals[:-1]])
    ends = np.r_[starts[1:], len(vals)]
    return {str(vals[a]): (int(a), int(b)) for a, b in zip(starts, ends) if vals[a] is not None}


def _attach_summaries(ctxs: dict[str, PodContext], conns: pd.DataFrame, refused: pd.DataFrame, lanes: bool,
                      counted: pd.DataFrame) -> None:
    """What the stats, the timeline and the HTML picture take from the connections (and the closes
    the kernel counted), for all pods."""
    from .stats import conn_stats
    from .timeline import PRE_WINDOW_S, conn_lines
    t0 = {u: c.t0 for u, c in ctxs.items()}
    ref = {u: (c.t0 if c.t0 is not None else c.first_ts) for u, c in ctxs.items()}
    starts = {u: (c.t0 - PRE_WINDOW_S if c.t0 is not None else float("-inf")) for u, c in ctxs.items()}
    stats, lines = conn_stats(conns, refused, t0), conn_lines(conns, refused, starts)
    if len(counted):
        add_to_stats(stats, counted)
        add_to_timeline(lines, counted, starts)
    for name, per_pod in (("stats", stats), ("timeline", lines),
                          ("lanes", conn_lanes(conns, t0, ref) if lanes else {})):
        for uid, value in per_pod.items():
            if uid in ctxs:
                setattr(ctxs[uid].display, name, value)


def conn_lanes(conns: pd.DataFrame, t0: dict[str, float | None], ref: dict[str, float]) -> dict[str, list[dict[str, Any]]]:
    """pod uid -> its server-side connections as intervals for the HTML picture, for all pods at once.
    t0: each pod's trigger (None: not stopped); ref: the time its report counts from."""
    out: dict[str, list[dict[str, Any]]] = {}
    if not len(conns):
        return out
    c = conns[(conns["side"] == "server") & conns["est_ts"].notna()]
    # the picture is about the shutdown: connections still open within a second of the trigger
    since = c["pod"].map(t0).astype(float).to_numpy() - 1.0
    end = c["end_ts"].to_numpy(dtype=float)
    c = c[np.isnan(since) | np.isnan(end) | (end >= since)]
    c = c[c.groupby("pod", sort=False).cumcount().to_numpy() < MAX_LANE_CONNS]
    for r in to_rows(c, ("pod", "port", "port_class", "est_ts", "end_ts", "close_kind", "closed_by", "at_exit",
                         "rst_after_close")):
        base, est = ref[r["pod"]], r["est_ts"]
        out.setdefault(r["pod"], []).append({
            "port": int(r["port"]), "port_class": r["port_class"],
            "start_t": None if est == float("-inf") else round(float(est) - base, 6),
            "end_t": round(float(r["end_ts"]) - base, 6) if r["end_ts"] is not None else None,
            "close_kind": r["close_kind"], "closed_by": r["closed_by"], "at_exit": bool(r["at_exit"]),
            "rst_after_close": bool(r["rst_after_close"])})
    return out


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



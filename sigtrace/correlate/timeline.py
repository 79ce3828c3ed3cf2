"""The per-pod timeline: what happened in order, relative to the first stop trigger."""
from __future__ import annotations

from typing import Any

import pandas as pd

from .pod import NOT_STOP, PodContext
from .processes import PRESTOP

MAX_PER_TYPE = 20          # connection entries per type; the rest become one summary line
HANDLER_TEXT = {"handler": "handled", "default": "default action", "ignore": "SIG_IGN"}
PRE_WINDOW_S = 1.0         # show this much before the trigger (the preStop exec, pod deletion)


def _entry(ctx: PodContext, ts: float, type_: str, text: str, row: int | None, container: str | None = None,
           **extra: Any) -> dict[str, Any]:
    e = {"t": ctx.rel(ts), "ts": ts, "type": type_, "container": container, "text": text, "event": row}
    e.update(extra)
    return e


def _cname(ctx: PodContext, cid: str | None) -> str | None:
    c = ctx.containers.get(cid or "")
    return c.label if c else None


def build_timeline(ctx: PodContext) -> list[dict[str, Any]]:
    start = (ctx.t0 - PRE_WINDOW_S) if ctx.t0 is not None else float("-inf")
    out: list[dict[str, Any]] = []
    for lc in ctx.lifecycle:
        if lc["event"] != "pod_seen":
            out.append(_entry(ctx, lc["ts"], "lifecycle", str(lc["event"]).replace("_", " "), lc["row"]))
    for p in ctx.procs.values():
        if p.external and p.exec_ts is not None and p.exec_ts >= start:
            what = "preStop exec" if p.role == PRESTOP else "exec into the container"
            out.append(_entry(ctx, p.exec_ts, "prestop" if p.role == PRESTOP else "exec",
                              f"{what}: {p.filename or p.comm} [{p.pid}]", _exec_row(ctx, p.pid), _cname(ctx, p.container_id),
                              pid=p.pid, comm=p.comm))
        if p.exit_ts is not None and p.exit_ts >= start:
            how = f"killed by {p.exit_signal}" if p.exit_signal else f"exited, code {p.exit_code}"
            out.append(_entry(ctx, p.exit_ts, "exit", f"{p.label} {how}", p.exit_row, _cname(ctx, p.container_id),
                              pid=p.pid, comm=p.comm, role=p.role, exit_code=p.exit_code, exit_signal=p.exit_signal))
    for s in ctx.signals:
        if s.ts < start:
            continue
        if s.sig in NOT_STOP and s.target is not None and s.sender_pid == s.target.pid:
            continue        # a process's own notifications (nginx's SIGIO, Go's SIGURG): noise on a timeline
        parts = [s.result or ("delivered" if s.handler else None), HANDLER_TEXT.get(s.handler or "")]
        detail = ", ".join(p for p in parts if p)
        text = f"{s.sender_label} → {s.target_label}: {s.sig}" + (f" ({detail})" if detail else "")
        trig = s in ctx.runtime_stops
        out.append(_entry(ctx, s.ts, "stop_signal" if trig else "signal", text, s.row,
                          _cname(ctx, s.target.container_id if s.target else None), sig=s.sig, sender=s.sender_label,
                          target=s.target_label, result=s.result, handler=s.handler))
    for li in ctx.listeners.values():
        if li.close_ts is not None and li.close_ts >= start:
            what = "FastCGI listener" if li.upstream else "listener"
            out.append(_entry(ctx, li.close_ts, "listener_close", f"{what} :{li.port} closed", li.close_row,
                              _cname(ctx, li.container_id), port=li.port))
    out += _conn_entries(ctx, start)
    out.sort(key=lambda e: (e["ts"], e["event"] if e["event"] is not None else -1))
    return out


def _exec_row(ctx: PodContext, pid: int) -> int | None:
    """The first process_exec of pid in the whole recording. The pid -> row map is built once per
    recording (scanning the frame per process made reports O(pods x events))."""
    rows = ctx.exec_rows
    if rows is None:
        rows = ctx.exec_rows = exec_rows(ctx.events)
    return rows.get(pid)


def exec_rows(events: pd.DataFrame) -> dict[int, int]:
    ex = events[(events["kind"] == "process_exec") & events["pid"].notna()]
    first = ex.index.to_series().groupby(ex["pid"].to_numpy()).min() if len(ex) else {}
    return {int(p): int(r) for p, r in dict(first).items()}


def _conn_entries(ctx: PodContext, start: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    c = ctx.conns
    if len(c):
        # one line per connection, seen from the pod's serving side (the lab's client side would repeat it)
        c = c[(c["side"] != "client") & c["end_ts"].notna() & (c["end_ts"] >= start) & ~c["refused"]]
        groups = {
            "conn_reset": c[c["close_kind"] == "rst"],
            "conn_cut": c[(c["close_kind"] == "fin") & c["at_exit"] & (c["closed_by"] == "pod")],
            "conn_close": c[(c["close_kind"] == "fin") & ~(c["at_exit"] & (c["closed_by"] == "pod"))],
        }
        for type_, g in groups.items():
            g = g.sort_values("end_ts")
            for _, r in g.head(MAX_PER_TYPE).iterrows():
                out.append(_conn_entry(ctx, type_, r))
            if len(g) > MAX_PER_TYPE:
                out.append(_entry(ctx, float(g["end_ts"].iloc[MAX_PER_TYPE]), type_,
                                  f"... and {len(g) - MAX_PER_TYPE} more like this", None))
    r = ctx.refused
    if len(r):
        r = r[r["ts"] >= start]
        for _, x in r.head(MAX_PER_TYPE).iterrows():
            kind = "FastCGI connect" if x["port_class"] == "upstream" else "connection attempt"
            cp = int(x["client_port"]) if pd.notna(x["client_port"]) else "?"
            out.append(_entry(ctx, float(x["ts"]), "refused", f"{kind} {x['client_addr']}:{cp} → :{x['port']} refused (RST)",
                              int(x["row"]), port=int(x["port"]), port_class=x["port_class"]))
        if len(r) > MAX_PER_TYPE:
            out.append(_entry(ctx, float(r["ts"].iloc[MAX_PER_TYPE]), "refused",
                              f"... and {len(r) - MAX_PER_TYPE} more refused attempts", None))
    return out


def _conn_entry(ctx: PodContext, type_: str, r: pd.Series) -> dict[str, Any]:
    who = ""
    cp = r["closer_pid"]
    if cp == cp and cp is not None and cp is not pd.NA:
        p = ctx.procs.get(int(cp))
        who = f" by {p.label if p else int(cp)}" + (" as it exited" if r["at_exit"] else "")
    elif r["closed_by"] == "peer":
        who = " by the peer"
    what = {"conn_reset": "reset (RST)", "conn_cut": "closed (FIN)", "conn_close": "closed (FIN)"}[type_]
    cls = "FastCGI connection" if r["port_class"] == "upstream" else "connection"
    row = r["close_row"]
    closer = ctx.procs.get(int(cp)) if cp == cp and cp is not None else None
    container = _cname(ctx, closer.container_id) if closer else None
    return _entry(ctx, float(r["end_ts"]), type_, f"{cls} {r['daddr']}:{r['dport']} → :{r['port']} {what}{who}",
                  int(row) if row == row and row is not None else int(r["first_row"]), container,
                  port=int(r["port"]), port_class=r["port_class"], closed_by=r["closed_by"])

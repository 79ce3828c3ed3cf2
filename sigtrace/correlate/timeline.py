"""The per-pod timeline: what happened in order, relative to the first stop trigger."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .pod import NOT_STOP, STOP_PRE_S, PodContext
from .processes import PRESTOP
from .rows import to_rows

MAX_PER_TYPE = 20          # connection entries per type; the rest become one summary line
HANDLER_TEXT = {"handler": "handled", "default": "default action", "ignore": "SIG_IGN"}
PRE_WINDOW_S = STOP_PRE_S  # show this much before the trigger (the preStop exec, pod deletion)


def _entry(ctx: PodContext, ts: float, type_: str, text: str, row: int | None, container: str | None = None,
           **extra: Any) -> dict[str, Any]:
    e = {"t": ctx.rel(ts), "ts": ts, "type": type_, "container": container, "text": text, "event": ctx.event_number(row)}
    e.update(extra)
    return e


def _cname(ctx: PodContext, cid: str | None) -> str | None:
    c = ctx.containers.get(cid or "")
    return c.label if c else None


def build_timeline(ctx: PodContext) -> list[dict[str, Any]]:
    start = (ctx.t0 - PRE_WINDOW_S) if ctx.t0 is not None else float("-inf")
    out: list[dict[str, Any]] = []
    for lc in ctx.lifecycle:
        if lc.event != "pod_seen":
            out.append(_entry(ctx, lc.ts, "lifecycle", str(lc.event).replace("_", " "), lc.row))
    for p in ctx.procs.values():
        if p.external and p.exec_ts is not None and p.exec_ts >= start:
            what = "preStop exec" if p.role == PRESTOP else "exec into the container"
            out.append(_entry(ctx, p.exec_ts, "prestop" if p.role == PRESTOP else "exec",
                              f"{what}: {p.filename or p.comm} [{p.pid}]", ctx.exec_row(p.pid), _cname(ctx, p.container_id),
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
    out += _conn_entries(ctx)
    out.sort(key=lambda e: (e["ts"], e["event"] if e["event"] is not None else -1))
    return out




CONN_LINE_TYPES = ("conn_reset", "conn_cut", "conn_close")
_LINE_COLUMNS = ("pod", "end_ts", "closer_pid", "at_exit", "closed_by", "port_class", "close_row", "first_row",
                 "daddr", "dport", "port", "rst_after_close", "rst_ts", "fin_row")


def conn_lines(conns: pd.DataFrame, refused: pd.DataFrame, starts: dict[str, float]) -> dict[str, list[dict[str, Any]]]:
    """pod uid -> the connection lines of its timeline, for all pods at once: per type the first
    MAX_PER_TYPE connections by end time ({"type", "row"}) and a count of the rest ({"type", "more",
    "ts"}). starts: each pod's timeline start. conns/refused: every pod's, with a pod column."""
    out: dict[str, list[dict[str, Any]]] = {}
    if len(conns):
        c = conns
        start = c["pod"].map(starts).astype(float).to_numpy()
        end = c["end_ts"].to_numpy(dtype=float)
        kind = c["close_kind"].to_numpy(dtype=object)
        by_pod = c["at_exit"].to_numpy(dtype=bool) & (c["closed_by"] == "pod").to_numpy(dtype=bool)
        # one line per connection, seen from the pod's serving side (the lab's client side would repeat it)
        shown = (c["side"] != "client").to_numpy(dtype=bool) & ~np.isnan(end) & (end >= start) & ~c["refused"].to_numpy(dtype=bool)
        type_ = np.select([kind == "rst", (kind == "fin") & by_pod, kind == "fin"], [0, 1, 2], -1)
        keep = shown & (type_ >= 0)
        sel = c.loc[keep, list(_LINE_COLUMNS)].assign(type=type_[keep])
        _ranked(sel, ["pod", "type"], "end_ts", lambda r: {"type": CONN_LINE_TYPES[r["type"]], "row": r},
                lambda n, ts, r: {"type": CONN_LINE_TYPES[r["type"]], "more": n, "ts": ts}, out)
    if len(refused):
        start = refused["pod"].map(starts).astype(float).to_numpy()
        sel = refused[refused["ts"].to_numpy(dtype=float) >= start]
        _ranked(sel, ["pod"], "ts", lambda r: {"type": "refused", "row": r},
                lambda n, ts, r: {"type": "refused", "more": n, "ts": ts}, out)
    return out


def _ranked(sel: pd.DataFrame, groups: list[str], by: str, line: Any, more: Any,
            out: dict[str, list[dict[str, Any]]]) -> None:
    """Per group, the first MAX_PER_TYPE rows by `by` as lines, then one "more" line for the rest."""
    if not len(sel):
        return
    sel = sel.sort_values(groups + [by], kind="stable")
    rank = sel.groupby(groups, sort=False).cumcount().to_numpy()
    size = sel.groupby(groups, sort=False)[by].transform("size").to_numpy()
    rows = to_rows(sel[rank <= MAX_PER_TYPE], tuple(sel.columns))
    for r, k, n in zip(rows, rank[rank <= MAX_PER_TYPE], size[rank <= MAX_PER_TYPE]):
        lines = out.setdefault(r["pod"], [])
        if k < MAX_PER_TYPE:
            lines.append(line(r))
        else:
            lines.append(more(int(n - MAX_PER_TYPE), float(r[by]), r))


def _conn_entries(ctx: PodContext) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for x in ctx.display.timeline:
        type_ = x["type"]
        if "more" in x:
            what = "more refused attempts" if type_ == "refused" else "more like this"
            if x.get("counted"):
                what += f" ({x['counted']} counted in the kernel, not recorded one by one: the closes shown are a sample)"
            out.append(_entry(ctx, x["ts"], type_, f"... and {x['more']} {what}", None))
        elif type_ == "refused":
            r = x["row"]
            kind = "FastCGI connect" if r["port_class"] == "upstream" else "connection attempt"
            cp = int(r["client_port"]) if r["client_port"] is not None else "?"
            out.append(_entry(ctx, float(r["ts"]), "refused", f"{kind} {r['client_addr']}:{cp} → :{r['port']} refused (RST)",
                              int(r["row"]), port=int(r["port"]), port_class=r["port_class"]))
        else:
            out.append(_conn_entry(ctx, type_, x["row"]))
    return out


def _conn_entry(ctx: PodContext, type_: str, r: dict[str, Any]) -> dict[str, Any]:
    who = ""
    cp = r["closer_pid"]
    if cp is not None:
        p = ctx.procs.get(int(cp))
        who = f" by {p.label if p else int(cp)}" + (" as it exited" if r["at_exit"] else "")
    elif r["closed_by"] == "peer":
        who = " by the peer"
    what = {"conn_reset": "reset (RST)", "conn_cut": "closed (FIN)", "conn_close": "closed (FIN)"}[type_]
    cls = "FastCGI connection" if r["port_class"] == "upstream" else "connection"
    row = r["close_row"]
    closer = ctx.procs.get(int(cp)) if cp is not None else None
    container = _cname(ctx, closer.container_id) if closer else None
    if r.get("rst_after_close") and r.get("rst_ts") is not None:
        # closed first (FIN), reset when the peer sent on it: the line is the close, the reset named
        after = float(r["rst_ts"]) - float(r["end_ts"])
        fin = r.get("fin_row")
        return _entry(ctx, float(r["end_ts"]), type_, f"idle {cls} "
                      f"{r['daddr']}:{r['dport']} → :{r['port']} closed (FIN){who}; the peer's next request on it "
                      f"was reset (RST) {after:.3f} s later", int(fin) if fin is not None else int(r["first_row"]),
                      container, port=int(r["port"]), port_class=r["port_class"], closed_by=r["closed_by"],
                      reset_t=ctx.rel(float(r["rst_ts"])))
    return _entry(ctx, float(r["end_ts"]), type_, f"{cls} {r['daddr']}:{r['dport']} → :{r['port']} {what}{who}",
                  int(row) if row is not None else int(r["first_row"]), container,
                  port=int(r["port"]), port_class=r["port_class"], closed_by=r["closed_by"])

"""Verdicts about traffic that reached a pod that no longer listened, or a connection it had closed."""
from __future__ import annotations

import numpy as np

from ..correlate.pod import PodContext
from ..correlate.processes import NGINX_MASTER, NGINX_WORKER
from ..events import capabilities as C
from ..events import lifecycle as L
from ..events import schema as S
from .base import Finding, Undecidable, fmt_t, rule, serving_ports
from .nginx import closed_by_roles


@rule("endpoint-race", "traffic still routed to the pod after its listener closed",
      "Keep serving until every load balancer has dropped the pod: a preStop `sleep` longer than endpoint "
      "propagation (5-15 s typical; grace period above it), and readiness gates for cloud load balancers.")
def endpoint_race(ctx: PodContext) -> Finding | Undecidable | None:
    if not ctx.stopped:
        return None
    serving = {p: li for p, li in ctx.listeners.items() if not li.upstream}
    hits = np.zeros(0, dtype=np.intp)
    if ctx.size("refused"):
        ts, port = ctx.col("ts", "refused"), ctx.col("port", "refused")
        m = (ctx.col("port_class", "refused") == "serving") & (ts >= ctx.t0)
        for i in np.flatnonzero(m):
            # only attempts after that port's listener closed (when we saw it close) count
            li = serving.get(int(port[i]))
            if li is not None and li.close_ts is not None and ts[i] < li.close_ts - 1e-6:
                m[i] = False
        hits = np.flatnonzero(m)
    if not len(hits):
        if not ctx.has(C.KERNEL_RESETS):
            return Undecidable([C.KERNEL_RESETS], "refused connection attempts from outside the pod are RSTs the "
                               "kernel sends by itself; this recording cannot show them")
        return None
    ev = []
    for p in sorted({int(port[i]) for i in hits}):
        li = serving.get(p)
        if li is not None and li.close_row is not None:
            ev.append(ctx.evidence(li.close_row, f"listener :{p} closed"))
    row, addr, cport = ctx.col("row", "refused"), ctx.col("client_addr", "refused"), ctx.col("client_port", "refused")
    for i in hits[:4]:
        cp = int(cport[i]) if cport[i] == cport[i] else "?"
        ev.append(ctx.evidence(int(row[i]), f"connection attempt {addr[i]}:{cp} → :{int(port[i])} refused (RST)"))
    if len(hits) > 4:
        ev.append({"t": None, "ts": None, "kind": None, "what": f"... and {len(hits) - 4} more refused", "event": None})
    for lc in ctx.lifecycle:
        if lc["event"] in (L.ENDPOINTS_NOT_READY, L.ENDPOINTS_TERMINATING, L.ENDPOINTS_REMOVED, L.TRAFFIC_STOPPED, L.POD_DELETED):
            ev.append(ctx.evidence(lc["row"], lc["event"].replace("_", " ")))
    last = float(ts[hits].max())
    return Finding(f"{len(hits)} connection attempt(s) were refused after the listener closed, the last at "
                   f"{fmt_t(ctx.rel(last))}: the load balancers still routed traffic to the stopping pod.", ev)


def _reset_detail(ctx: PodContext, row: int | None) -> str:
    """How the kernel sent a reset, from its event: the orphan's state and the reason where recorded."""
    if row is None or row not in ctx.events.index:
        return ""
    e = ctx.events.loc[row]
    parts = [str(v) for v in (e.get("old_state"), e.get("reason")) if isinstance(v, str) and v]
    return f" ({', '.join(parts)})" if parts else ""


@rule("keepalive-close-race", "idle keep-alive connections closed by nginx while the client sent its next request on them",
      "Keep serving until every load balancer has dropped the pod (a preStop sleep longer than the balancer's "
      "deregistration; nginx's graceful stop closes idle keep-alive connections at once), and make the pod never "
      "close first at steady state: nginx >= 1.27.4 keepalive_min_timeout, or a proxy/balancer upstream "
      "keepalive_timeout shorter than the pod's keepalive_timeout; let the proxy retry idempotent requests.")
def keepalive_close_race(ctx: PodContext) -> Finding | Undecidable | None:
    if not ctx.stopped:
        return None
    hits = np.zeros(0, dtype=np.intp)
    if ctx.size("conns"):
        end = ctx.col("end_ts")
        m = ((ctx.col("side") == "server") & (ctx.col("port_class") == "serving")
             & ctx.col("rst_after_close") & ctx.in_stop(np.nan_to_num(end, nan=-np.inf)))
        hits = closed_by_roles(ctx, m, (NGINX_WORKER, NGINX_MASTER))      # closed by nginx (or a task unseen)
    if not len(hits):
        lacking = ctx.lacking(C.TCP_STATES, C.KERNEL_RESETS)
        if lacking and _nginx_closed_clients(ctx):
            return Undecidable(lacking, "nginx closed client connections as the pod stopped; whether a client then "
                               "sent a request on one of them needs the resets the kernel sends for closed sockets")
        return None
    fin, rst, port = ctx.col("end_ts"), ctx.col("rst_ts"), ctx.col("port")
    fin_row, rst_row, closer = ctx.col("fin_row"), ctx.col("close_row"), ctx.col("closer_pid")
    daddr, dport = ctx.col("daddr"), ctx.col("dport")
    first_fin, last_rst = float(np.nanmin(fin[hits])), float(np.nanmax(rst[hits]))
    ev, marks = [], []
    cause = "nginx's keepalive_timeout expired"
    for m in ctx.by_role(NGINX_MASTER):
        sigs = [s for s in ctx.signals_to(pid=m.pid) if s.reached and s.sig in ("SIGQUIT", "SIGTERM", "SIGINT")
                and s.ts <= first_fin + 1e-6]
        if sigs:
            s = sigs[-1]
            ev.append(ctx.evidence(s.row, f"{s.sender_label} → {s.target_label}: {s.sig} (nginx closes its idle "
                                          "keep-alive connections at once)"))
            cause = (f"{s.sig}: nginx's graceful shutdown closes idle keep-alive connections at once" if s.sig == "SIGQUIT"
                     else f"{s.sig}: nginx's fast shutdown closed them")
            break
    for i in hits[:3]:
        p = ctx.procs.get(int(closer[i])) if closer[i] == closer[i] else None
        who = f" by {p.label}" if p else ""
        cp = int(dport[i]) if dport[i] == dport[i] else "?"
        conn = f"{daddr[i]}:{cp} → :{int(port[i])}"
        if fin_row[i] == fin_row[i]:
            ev.append(ctx.evidence(int(fin_row[i]), f"idle connection {conn} closed (FIN){who}"))
        row = int(rst_row[i]) if rst_row[i] == rst_row[i] else None
        ev.append(ctx.evidence(row, f"the client's next request on {conn} answered with a reset (RST)"
                                    f"{_reset_detail(ctx, row)}, {float(rst[i]) - float(fin[i]):.3f} s after the close",
                               ts=float(rst[i])))
    if len(hits) > 3:
        ev.append({"t": None, "ts": None, "kind": None, "what": f"... and {len(hits) - 3} more connection(s)", "event": None})
    for i in hits[:200]:
        marks.append({"kind": "race", "t0": ctx.rel(float(fin[i])), "t1": ctx.rel(float(rst[i])),
                      "lane": f"port:{int(port[i])}", "label": "closed idle, then the next request was reset"})
    return Finding(f"{len(hits)} idle keep-alive connection(s) were closed by the pod from {fmt_t(ctx.rel(first_fin))} "
                   f"({cause}) while the client still used them: its next request on each was answered with a reset, "
                   f"the last at {fmt_t(ctx.rel(last_rst))}. A load balancer's or proxy's connection pool cannot know "
                   "a close is on its way.", ev, marks=marks)


def _nginx_closed_clients(ctx: PodContext) -> bool:
    """Under strace: an nginx process closed a connection to a serving port during the stop."""
    sc = ctx.socket_calls
    if not len(sc) or "sport" not in sc:
        return False
    serving = serving_ports(ctx)
    nginx = {p.pid for p in ctx.procs.values() if p.role in (NGINX_MASTER, NGINX_WORKER)}
    # a connection has a peer; a close without one is the listener's
    m = ((sc["kind"] == S.SOCK_CLOSE) & sc["sport"].isin(serving) & sc["dport"].notna() & sc["pid"].isin(nginx)
         & ctx.in_stop(sc["ts"].to_numpy(dtype=float)))
    return bool(m.any())

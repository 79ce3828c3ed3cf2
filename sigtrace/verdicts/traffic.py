"""Verdicts about traffic that reached a pod that no longer listened, or a connection it had closed."""
from __future__ import annotations

from ..correlate.pod import PodContext
from ..correlate.processes import NGINX_MASTER, NGINX_WORKER
from ..events import capabilities as C
from ..events import lifecycle as L
from .base import Finding, Undecidable, fmt_t, more, rule, serving_ports


@rule("endpoint-race", "traffic still routed to the pod after its listener closed",
      "Keep serving until every load balancer has dropped the pod: a preStop `sleep` longer than endpoint "
      "propagation (5-15 s typical; grace period above it), and readiness gates for cloud load balancers.")
def endpoint_race(ctx: PodContext) -> Finding | Undecidable | None:
    if not ctx.stopped:
        return None
    serving = {p: li for p, li in ctx.listeners.items() if not li.upstream}
    # only attempts after that port's listener closed (when we saw it close) count
    hits = ctx.refused.serving().at(since=ctx.t0).after_listener_closed(serving)
    if not hits:
        if not ctx.has(C.KERNEL_RESETS):
            return Undecidable([C.KERNEL_RESETS], "refused connection attempts from outside the pod are RSTs the "
                               "kernel sends by itself; this recording cannot show them")
        return None
    ev = []
    for p in hits.ports():
        li = serving.get(p)
        if li is not None and li.close_row is not None:
            ev.append(ctx.evidence(li.close_row, f"listener :{p} closed"))
    for r in hits.first(4):
        cp = r.client_port if r.client_port is not None else "?"
        ev.append(ctx.evidence(r.row, f"connection attempt {r.client_addr}:{cp} → :{r.port} refused (RST)"))
    if len(hits) > 4:
        ev.append(more(len(hits) - 4, "more refused"))
    for lc in ctx.lifecycle_events(L.ENDPOINTS_NOT_READY, L.ENDPOINTS_TERMINATING, L.ENDPOINTS_REMOVED,
                                   L.TRAFFIC_STOPPED, L.POD_DELETED):
        ev.append(ctx.evidence(lc.row, lc.event.replace("_", " ")))
    last = hits.latest()
    return Finding(f"{len(hits)} connection attempt(s) were refused after the listener closed, the last at "
                   f"{fmt_t(ctx.rel(last))}: the load balancers still routed traffic to the stopping pod.", ev)


def _reset_detail(ctx: PodContext, row: int | None) -> str:
    """How the kernel sent a reset, from its event: the orphan's state and the reason where recorded."""
    parts = ctx.reset_detail(row)
    return f" ({', '.join(parts)})" if parts else ""


@rule("keepalive-close-race", "idle keep-alive connections closed by nginx while the client sent its next request on them",
      "Keep serving until every load balancer has dropped the pod (a preStop sleep longer than the balancer's "
      "deregistration; nginx's graceful stop closes idle keep-alive connections at once), and make the pod never "
      "close first at steady state: nginx >= 1.27.4 keepalive_min_timeout, or a proxy/balancer upstream "
      "keepalive_timeout shorter than the pod's keepalive_timeout; let the proxy retry idempotent requests.")
def keepalive_close_race(ctx: PodContext) -> Finding | Undecidable | None:
    if not ctx.stopped:
        return None
    # closed by nginx (or a task unseen) during the stop, then reset on the client's next request
    hits = (ctx.conns.server_side().serving().reset_after_close().ended(since=ctx.stop_from)
            .closed_by_roles((NGINX_WORKER, NGINX_MASTER)))
    if not hits:
        lacking = ctx.lacking(C.TCP_STATES, C.KERNEL_RESETS)
        if lacking and _nginx_closed_clients(ctx):
            return Undecidable(lacking, "nginx closed client connections as the pod stopped; whether a client then "
                               "sent a request on one of them needs the resets the kernel sends for closed sockets")
        return None
    first_fin, last_rst = hits.earliest_end(), hits.latest_reset()
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
    for c in hits.first(3):
        p = ctx.procs.get(c.closer_pid) if c.closer_pid is not None else None
        who = f" by {p.label}" if p else ""
        cp = c.dport if c.dport is not None else "?"
        conn = f"{c.daddr}:{cp} → :{c.port}"
        if c.fin_row is not None:
            ev.append(ctx.evidence(c.fin_row, f"idle connection {conn} closed (FIN){who}"))
        ev.append(ctx.evidence(c.close_row, f"the client's next request on {conn} answered with a reset (RST)"
                                            f"{_reset_detail(ctx, c.close_row)}, {c.rst_ts - c.end_ts:.3f} s after the close",
                               ts=c.rst_ts))
    if len(hits) > 3:
        ev.append(more(len(hits) - 3, "more connection(s)"))
    for c in hits.first(200):
        marks.append({"kind": "race", "t0": ctx.rel(c.end_ts), "t1": ctx.rel(c.rst_ts),
                      "lane": f"port:{c.port}", "label": "closed idle, then the next request was reset"})
    return Finding(f"{len(hits)} idle keep-alive connection(s) were closed by the pod from {fmt_t(ctx.rel(first_fin))} "
                   f"({cause}) while the client still used them: its next request on each was answered with a reset, "
                   f"the last at {fmt_t(ctx.rel(last_rst))}. A load balancer's or proxy's connection pool cannot know "
                   "a close is on its way.", ev, marks=marks)


def _nginx_closed_clients(ctx: PodContext) -> bool:
    """Under strace: an nginx process closed a connection to a serving port during the stop."""
    if ctx.stop_from is None:
        return False
    nginx = {p.pid for p in ctx.procs.values() if p.role in (NGINX_MASTER, NGINX_WORKER)}
    # a connection has a peer; a close without one is the listener's
    return bool(ctx.calls.closes().by(nginx).from_ports(serving_ports(ctx)).with_peer().at(since=ctx.stop_from))

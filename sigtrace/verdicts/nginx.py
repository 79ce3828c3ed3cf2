"""Verdicts about how nginx was stopped: fast shutdown by TERM/INT, the preStop `nginx -s quit`
whose graceful drain the runtime's TERM cut short, and a graceful drain that worker_shutdown_timeout
ended with requests still in flight."""
from __future__ import annotations

from ..correlate.facts import Connections
from ..correlate.pod import PodContext, Signal
from ..correlate.processes import EXEC, FPM_CHILD, FPM_MASTER, NGINX_MASTER, NGINX_WORKER, PRESTOP, Process
from ..events import capabilities as C
from .base import Finding, Undecidable, fmt_t, more, rule, serving_ports, shown, upstream_ports

FAST = ("SIGTERM", "SIGINT")


def conn_ev(ctx: PodContext, conns: Connections, limit: int = 4) -> list[dict]:
    """Evidence for connections: the first `limit`, then a count."""
    ev = []
    for c in conns.first(limit):
        how = "reset (RST)" if c.close_kind == "rst" else "closed (FIN)"
        who = ""
        if c.closer_pid is not None:
            p = ctx.procs.get(c.closer_pid)
            who = f" by {p.label if p else c.closer_pid}" + (" as it exited" if c.at_exit else "")
        ev.append(ctx.evidence(c.row, f"connection {c.daddr}:{shown(c.dport)} → :{c.port} {how}{who}", ts=c.end_ts))
    if len(conns) > limit:
        ev.append(more(len(conns) - limit, "more connection(s)"))
    return ev


def cut_connections(conns: Connections, closer_roles: tuple[str, ...] = ()) -> Connections:
    """Of conns, those the pod then closed or reset (the client did not close first). With
    closer_roles, only those closed by such a process (or an unknown one): a reset by the master as
    it closes its listener is a connection still in the accept queue, not a request cut."""
    cut = conns.cut_by_pod()
    return cut.closed_by_roles(closer_roles) if closer_roles else cut


@rule("prestop-quit-superseded", "preStop `nginx -s quit` returned at once; the runtime's TERM/INT hit a draining master",
      "Set the container's stop signal to SIGQUIT (STOPSIGNAL SIGQUIT in the image, or lifecycle.stopSignal) and drop the "
      "preStop quit, or make the preStop wait until the master has exited (e.g. `nginx -s quit; while pgrep -x nginx; do sleep 1; done`).",
      supersedes=("nginx-fast-shutdown",))
def prestop_quit_superseded(ctx: PodContext) -> Finding | Undecidable | None:
    for m in ctx.by_role(NGINX_MASTER):
        sigs = ctx.signals_to(pid=m.pid)
        quits = [s for s in sigs if s.sig == "SIGQUIT" and s.reached and s.sender_in_pod
                 and s.sender_role in (PRESTOP, EXEC, "unknown", "shell")]
        for q in quits:
            terms = [s for s in sigs if s.sig in FAST and s.from_outside and s.ts > q.ts and s.reached and m.alive_at(s.ts)]
            if not terms:
                continue
            t = terms[0]
            workers = [w for w in ctx.by_role(NGINX_WORKER) if w.container_id == m.container_id and w.alive_at(t.ts)
                       and (w.exec_ts is None or w.exec_ts <= t.ts)]
            open_c = ctx.conns.open_at(t.ts, "serving") or ctx.conns.open_at(t.ts, "upstream")
            if not workers and not open_c:
                continue      # the drain had finished: TERM found nothing left to cut
            ev = [ctx.evidence(q.row, f"{q.sender_label} → {q.target_label}: SIGQUIT (graceful drain starts)"),
                  ctx.evidence(t.row, f"{t.sender_label} → {t.target_label}: {t.sig} {t.ts - q.ts:.3f} s "
                                      "later: fast shutdown")]
            if workers:
                ev.append(ctx.evidence(None, f"{len(workers)} nginx worker(s) still draining at the {t.sig}", ts=t.ts))
            ev += conn_ev(ctx, cut_connections(ctx.conns.open_at(t.ts, "serving"), (NGINX_WORKER,)))
            return Finding(f"The preStop `nginx -s quit` returned at once and the runtime's {t.sig} followed "
                           f"{t.ts - q.ts:.3f} s later, turning the graceful drain of {m.label} into a fast shutdown.",
                           ev, about=m.pid)
    return None


@rule("nginx-fast-shutdown", "the nginx master got TERM/INT with connections open",
      "Stop nginx with SIGQUIT (STOPSIGNAL SIGQUIT / lifecycle.stopSignal: SIGQUIT; the official image does since "
      "1.19.5) and bound the drain with worker_shutdown_timeout below the grace period.")
def nginx_fast_shutdown(ctx: PodContext) -> Finding | Undecidable | None:
    for m in ctx.by_role(NGINX_MASTER):
        for s in ctx.signals_to(pid=m.pid):
            if s.sig not in FAST or not s.reached or (ctx.t0 is not None and s.ts < ctx.t0 - 1.0):
                continue
            cut = cut_connections(ctx.conns.open_at(s.ts, "serving"), (NGINX_WORKER,))
            if not cut:
                if not ctx.has(C.TCP_STATES) and m.alive_at(s.ts):
                    return Undecidable([C.TCP_STATES], f"{m.label} got {s.sig}; whether connections were open "
                                       "needs TCP state transitions")
                continue
            ev = [ctx.evidence(s.row, f"{s.sender_label} → {s.target_label}: {s.sig} (fast shutdown)")]
            ev += conn_ev(ctx, cut)
            return Finding(f"{m.label} got {s.sig} (fast shutdown) with {len(cut)} client connection(s) open; "
                           "they were cut instead of drained.", ev, about=m.pid)
    return None


MIN_SHUTDOWN_TIMEOUT_S = 0.05    # closes within this of the QUIT are the drain's own (idle connections)
CLUSTER_S = 0.2                  # worker_shutdown_timeout closes every connection of a worker at one timer


@rule("nginx-shutdown-timeout", "nginx's worker_shutdown_timeout expired during a graceful QUIT with requests in flight",
      "Set worker_shutdown_timeout above the longest request (and php-fpm's request_terminate_timeout) and below "
      "the grace period minus the preStop; raise terminationGracePeriodSeconds if the longest request needs it.")
def nginx_shutdown_timeout(ctx: PodContext) -> Finding | Undecidable | None:
    for m in ctx.by_role(NGINX_MASTER):
        sigs = ctx.signals_to(pid=m.pid)
        quits = [s for s in sigs if s.sig == "SIGQUIT" and s.reached and m.alive_at(s.ts)]
        if not quits:
            continue
        q = quits[0]
        # a fast shutdown or a kill ends the drain: what it cuts is that verdict's
        hard = [s.ts for s in ctx.signals if s.ts > q.ts and s.reached and s.target is not None
                and s.target.container_id == m.container_id and s.target.role in (NGINX_MASTER, NGINX_WORKER)
                and (s.sig in FAST or (s.sig == "SIGKILL" and s.from_outside))]
        until = min(hard, default=float("inf"))
        if not ctx.has(C.TCP_STATES):
            if ctx.has(C.SOCKET_CALLS):
                found = _abandoned_by_calls(ctx, m, q, until)
                if found is not None:
                    return found
                continue
            return Undecidable(ctx.lacking(C.TCP_STATES, C.SOCKET_CALLS),
                               f"{m.label} got SIGQUIT; whether worker_shutdown_timeout closed connections with "
                               "requests in flight needs TCP state transitions or the processes' socket calls")
        late = ctx.conns.ended(since=q.ts + MIN_SHUTDOWN_TIMEOUT_S, before=until).not_at_exit()
        # FastCGI requests nginx gave up on: the nginx side closed first, and php-fpm answered later
        # anyway, into the closed socket (reset). Without that reset, nginx closing first is also how
        # a request that just ended can look (nginx read the response and closed before php-fpm did).
        reset_up = late.upstream().reset()
        abandoned = (reset_up.server_side().closed_by_peer().reset_by_peer()
                     | reset_up.client_side().closed_by_pod().reset_after_close())
        tc = abandoned.earliest_end()
        if tc is None:
            continue
        up = abandoned.ended(until=tc + CLUSTER_S)
        # client connections open since before the QUIT, closed by the pod at that same moment
        cut = (late.server_side().serving().closed_by_pod().established(before=q.ts)
               .ended(since=tc - CLUSTER_S, until=tc + CLUSTER_S).closed_by_roles((NGINX_WORKER,)))
        if not cut:
            continue
        # both ends are the pod's (FastCGI over loopback): count php-fpm's ends, cite nginx's close
        fpm_end, nginx_end = list(up.server_side()), list(up.client_side())
        n_up = len(fpm_end) or len(nginx_end)
        # php-fpm's late response hit nginx's closed socket, which answered with a reset
        late_resets = ([(c.rst_ts, c.close_row) for c in nginx_end if c.rst_ts is not None] or
                       [(ctx.event_ts(c.close_row), c.close_row) for c in fpm_end
                        if c.close_kind == "rst" and c.close_row is not None])
        timeout = tc - q.ts
        fcgi_port = (fpm_end or nginx_end)[0].port
        ev = [ctx.evidence(q.row, f"{q.sender_label} → {q.target_label}: SIGQUIT (graceful: in-flight requests "
                                  "may finish)")]
        ev += [dict(e, what=e["what"] + " (a request in flight)") for e in conn_ev(ctx, cut, limit=3)]
        for c in (nginx_end or fpm_end)[:2]:
            p = ctx.procs.get(c.closer_pid) if c.closer_pid is not None else None
            row = c.fin_row if c.fin_row is not None else c.close_row
            ev.append(ctx.evidence(row, f"FastCGI connection to :{c.port} closed by "
                                   f"{p.label if p else 'nginx'} before php-fpm answered", ts=c.end_ts))
        for ts, row in late_resets[:2]:
            ev.append(ctx.evidence(row, f"php-fpm's late response on :{fcgi_port} answered with a reset by nginx's "
                                        "closed socket", ts=ts))
        marks = [{"kind": "span", "t0": ctx.rel(q.ts), "t1": ctx.rel(tc), "lane": f"pid:{m.pid}",
                  "label": f"worker_shutdown_timeout ≈ {timeout:.2f} s"}]
        return Finding(f"{m.label} got SIGQUIT at {fmt_t(ctx.rel(q.ts))}; {timeout:.2f} s later (worker_shutdown_timeout) "
                       f"its workers closed {len(cut)} client connection(s) open since before the QUIT and "
                       f"{n_up} FastCGI connection(s) with requests in flight"
                       + (f"; {len(late_resets)} late response(s) from php-fpm were answered with resets"
                          if late_resets else "") + ".", ev, about=m.pid, marks=marks)
    return None


def _abandoned_by_calls(ctx: PodContext, m: Process, q: Signal, until: float) -> Finding | None:
    """strace: an nginx worker close()d FastCGI connections at QUIT + T while php-fpm still held their
    other end (it closed them later: its request was still running), and client connections at the
    same moment."""
    ups = upstream_ports(ctx)
    serving = serving_ports(ctx)
    workers = {p.pid for p in ctx.by_role(NGINX_WORKER) if p.container_id == m.container_id}
    fpm = {p.pid for p in ctx.procs.values() if p.role in (FPM_CHILD, FPM_MASTER)}
    closes = ctx.calls.closes().by(workers).at(since=q.ts + MIN_SHUTDOWN_TIMEOUT_S, before=until).not_at_exit()
    # php-fpm closes its end right after its response, so a request that ended has both closes within
    # a moment (whoever is first); one php-fpm closed only well after nginx was still running
    fpm_closes = ctx.calls.closes().by(fpm).from_ports(ups)
    abandoned = list(closes.to_ports(ups).other_end_closed_later(fpm_closes, MIN_SHUTDOWN_TIMEOUT_S))
    if not abandoned:
        return None
    tc = min(c.ts for c in abandoned)
    clients = closes.from_ports(serving).at(since=tc - CLUSTER_S, until=tc + CLUSTER_S)
    if not clients:
        return None
    ev = [ctx.evidence(q.row, f"{q.sender_label} → {q.target_label}: SIGQUIT (graceful: in-flight requests may finish)")]
    ev += [ctx.evidence(c.row, f"{shown(c.comm)}[{shown(c.pid)}] closed client connection {shown(c.daddr)}:"
                               f"{shown(c.dport)} → :{shown(c.sport)}") for c in clients.first(3)]
    ev += [ctx.evidence(c.row, f"{shown(c.comm)}[{shown(c.pid)}] closed FastCGI connection :{shown(c.sport)} → "
                               f":{shown(c.dport)} while php-fpm still worked on it") for c in abandoned[:2]]
    return Finding(f"{m.label} got SIGQUIT; {tc - q.ts:.2f} s later (worker_shutdown_timeout) its workers closed "
                   f"{len(clients)} client connection(s) and {len(abandoned)} FastCGI connection(s) php-fpm was still "
                   "answering (seen in the processes' socket calls).", ev, about=m.pid,
                   marks=[{"kind": "span", "t0": ctx.rel(q.ts), "t1": ctx.rel(tc), "lane": f"pid:{m.pid}",
                           "label": f"worker_shutdown_timeout ≈ {tc - q.ts:.2f} s"}])

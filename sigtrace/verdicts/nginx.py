"""Verdicts about how nginx was stopped: fast shutdown by TERM/INT, the preStop `nginx -s quit`
whose graceful drain the runtime's TERM cut short, and a graceful drain that worker_shutdown_timeout
ended with requests still in flight."""
from __future__ import annotations

import numpy as np

from ..correlate.pod import PodContext, Signal
from ..correlate.processes import EXEC, FPM_CHILD, FPM_MASTER, NGINX_MASTER, NGINX_WORKER, PRESTOP, Process
from ..events import capabilities as C
from ..events import schema as S
from .base import Finding, Undecidable, fmt_t, rule, serving_ports

FAST = ("SIGTERM", "SIGINT")


def conn_ev(ctx: PodContext, idx: np.ndarray, limit: int = 4) -> list[dict]:
    """Evidence for the connections at positions idx of ctx.conns: the first `limit`, then a count."""
    kind, closer, at_exit = ctx.col("close_kind"), ctx.col("closer_pid"), ctx.col("at_exit")
    close_row, first_row, end = ctx.col("close_row"), ctx.col("first_row"), ctx.col("end_ts")
    daddr, dport, port = ctx.col("daddr"), ctx.col("dport"), ctx.col("port")
    ev = []
    for i in idx[:limit]:
        how = "reset (RST)" if kind[i] == "rst" else "closed (FIN)"
        who = ""
        if closer[i] == closer[i]:
            p = ctx.procs.get(int(closer[i]))
            who = f" by {p.label if p else int(closer[i])}" + (" as it exited" if at_exit[i] else "")
        row = int(close_row[i]) if close_row[i] == close_row[i] else int(first_row[i])
        dp = int(dport[i]) if dport[i] == dport[i] else "<NA>"
        ev.append(ctx.evidence(row, f"connection {daddr[i]}:{dp} → :{int(port[i])} {how}{who}",
                               ts=float(end[i]) if end[i] == end[i] else None))
    if len(idx) > limit:
        ev.append({"t": None, "ts": None, "kind": None, "what": f"... and {len(idx) - limit} more connection(s)", "event": None})
    return ev


def cut_connections(ctx: PodContext, ts: float, port_class: str, closer_roles: tuple[str, ...] = ()) -> np.ndarray:
    """Positions in ctx.conns of server-side connections open at ts that the pod then closed or reset
    (the client did not close first). With closer_roles, only those closed by such a process (or an
    unknown one): a reset by the master as it closes its listener is a connection still in the
    accept queue, not a request cut."""
    m = ctx.open_mask(ts, port_class)
    if not m.any():
        return np.flatnonzero(m)
    m &= (ctx.col("closed_by") == "pod") & ((ctx.col("close_kind") == "rst") | ctx.col("at_exit"))
    return closed_by_roles(ctx, m, closer_roles) if closer_roles else np.flatnonzero(m)


def closed_by_roles(ctx: PodContext, mask: np.ndarray, roles: tuple[str, ...], keep: bool = True) -> np.ndarray:
    """Positions where mask holds and whose closer has one of roles (keep) or not (not keep); an
    unknown closer always stays."""
    closer = ctx.col("closer_pid")
    out = []
    for i in np.flatnonzero(mask):
        p = ctx.procs.get(int(closer[i])) if closer[i] == closer[i] else None
        if p is None or (p.role in roles) == keep:
            out.append(i)
    return np.array(out, dtype=np.intp)


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
            open_c = ctx.open_mask(t.ts, "serving") | ctx.open_mask(t.ts, "upstream")
            if not workers and not open_c.any():
                continue      # the drain had finished: TERM found nothing left to cut
            ev = [ctx.evidence(q.row, f"{q.sender_label} → {q.target_label}: SIGQUIT (graceful drain starts)"),
                  ctx.evidence(t.row, f"{t.sender_label} → {t.target_label}: {t.sig} {t.ts - q.ts:.3f} s "
                                      "later: fast shutdown")]
            if workers:
                ev.append(ctx.evidence(None, f"{len(workers)} nginx worker(s) still draining at the {t.sig}", ts=t.ts))
            ev += conn_ev(ctx, cut_connections(ctx, t.ts, "serving", (NGINX_WORKER,)))
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
            cut = cut_connections(ctx, s.ts, "serving", (NGINX_WORKER,))
            if not len(cut):
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
        if not ctx.size("conns"):
            continue
        side, cls, closed_by = ctx.col("side"), ctx.col("port_class"), ctx.col("closed_by")
        est, end, at_exit = ctx.col("est_ts"), ctx.col("end_ts"), ctx.col("at_exit")
        endf = np.nan_to_num(end, nan=np.inf)
        late = (endf >= q.ts + MIN_SHUTDOWN_TIMEOUT_S) & (endf < until) & ~at_exit
        # FastCGI requests nginx gave up on: the nginx side closed first, and php-fpm answered later
        # anyway, into the closed socket (reset). Without that reset, nginx closing first is also how
        # a request that just ended can look (nginx read the response and closed before php-fpm did).
        kind, reset_by, after = ctx.col("close_kind"), ctx.col("reset_by"), ctx.col("rst_after_close")
        abandoned = late & (cls == "upstream") & (kind == "rst") & (
            ((side == "server") & (closed_by == "peer") & (reset_by == "peer"))
            | ((side == "client") & (closed_by == "pod") & after))
        if not abandoned.any():
            continue
        tc = float(endf[abandoned].min())
        up = abandoned & (endf <= tc + CLUSTER_S)
        # client connections open since before the QUIT, closed by the pod at that same moment
        cut = (late & (side == "server") & (cls == "serving") & (closed_by == "pod") & (est < q.ts)
               & (endf >= tc - CLUSTER_S) & (endf <= tc + CLUSTER_S))
        cut = closed_by_roles(ctx, cut, (NGINX_WORKER,))
        if not len(cut):
            continue
        # both ends are the pod's (FastCGI over loopback): count php-fpm's ends, cite nginx's close
        fpm_end, nginx_end = np.flatnonzero(up & (side == "server")), np.flatnonzero(up & (side == "client"))
        n_up = len(fpm_end) or len(nginx_end)
        close_row, fin_row = ctx.col("close_row"), ctx.col("fin_row")
        closer, port, rst_ts = ctx.col("closer_pid"), ctx.col("port"), ctx.col("rst_ts")
        # php-fpm's late response hit nginx's closed socket, which answered with a reset
        late_resets = ([(float(rst_ts[i]), int(close_row[i]) if close_row[i] == close_row[i] else None)
                        for i in nginx_end if rst_ts[i] == rst_ts[i]] or
                       [(_reset_time(ctx, int(close_row[i])), int(close_row[i])) for i in fpm_end
                        if kind[i] == "rst" and close_row[i] == close_row[i]])
        timeout = tc - q.ts
        fcgi_port = int(port[(fpm_end if len(fpm_end) else nginx_end)[0]])
        ev = [ctx.evidence(q.row, f"{q.sender_label} → {q.target_label}: SIGQUIT (graceful: in-flight requests "
                                  "may finish)")]
        ev += [dict(e, what=e["what"] + " (a request in flight)") for e in conn_ev(ctx, cut, limit=3)]
        for i in (nginx_end if len(nginx_end) else fpm_end)[:2]:
            p = ctx.procs.get(int(closer[i])) if closer[i] == closer[i] else None
            row = fin_row[i] if fin_row[i] == fin_row[i] else close_row[i]
            ev.append(ctx.evidence(int(row) if row == row else None, f"FastCGI connection to :{int(port[i])} closed by "
                                   f"{p.label if p else 'nginx'} before php-fpm answered", ts=float(end[i])))
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


def _reset_time(ctx: PodContext, row: int | None) -> float | None:
    return ctx.lookup.ts(row) if row is not None and ctx.lookup is not None else None


def _abandoned_by_calls(ctx: PodContext, m: Process, q: Signal, until: float) -> Finding | None:
    """strace: an nginx worker close()d FastCGI connections at QUIT + T while php-fpm still held their
    other end (it closed them later: its request was still running), and client connections at the
    same moment."""
    sc = ctx.socket_calls
    if not len(sc) or "sport" not in sc:
        return None
    ups = [li.port for li in ctx.listeners.values() if li.upstream]
    serving = serving_ports(ctx)
    workers = {p.pid for p in ctx.by_role(NGINX_WORKER) if p.container_id == m.container_id}
    fpm = {p.pid for p in ctx.procs.values() if p.role in (FPM_CHILD, FPM_MASTER)}
    closes = sc[(sc["kind"] == S.SOCK_CLOSE) & sc["pid"].isin(workers) & (sc["ts"] >= q.ts + MIN_SHUTDOWN_TIMEOUT_S)
                & (sc["ts"] < until) & (sc["reason"].astype("object") != "exit")]
    nginx_up = closes[closes["dport"].isin(ups)]
    if not len(nginx_up):
        return None
    fpm_closes = sc[(sc["kind"] == S.SOCK_CLOSE) & sc["pid"].isin(fpm) & sc["sport"].isin(ups)]
    # php-fpm's end of a connection is the one whose remote port is nginx's local port
    fpm_port = fpm_closes["dport"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    fpm_ts = fpm_closes["ts"].to_numpy(dtype=float)
    nginx_port = nginx_up["sport"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    nginx_ts = nginx_up["ts"].to_numpy(dtype=float)
    # php-fpm closes its end right after its response, so a request that ended has both closes within
    # a moment (whoever is first); one php-fpm closed only well after nginx was still running
    later = np.array([bool(((fpm_port == port) & (fpm_ts > ts + MIN_SHUTDOWN_TIMEOUT_S)).any())
                      for port, ts in zip(nginx_port, nginx_ts)], dtype=bool)
    abandoned = list(nginx_up[later].itertuples()) if later.any() else []
    if not abandoned:
        return None
    tc = min(r.ts for r in abandoned)
    clients = closes[closes["sport"].isin(serving) & (closes["ts"] >= tc - CLUSTER_S) & (closes["ts"] <= tc + CLUSTER_S)]
    if not len(clients):
        return None
    ev = [ctx.evidence(q.row, f"{q.sender_label} → {q.target_label}: SIGQUIT (graceful: in-flight requests may finish)")]
    ev += [ctx.evidence(int(r.Index), f"{r.comm}[{r.pid}] closed client connection {r.daddr}:{r.dport} → :{r.sport}")
           for r in clients.head(3).itertuples()]
    ev += [ctx.evidence(int(r.Index), f"{r.comm}[{r.pid}] closed FastCGI connection :{r.sport} → :{r.dport} while "
                                      "php-fpm still worked on it") for r in abandoned[:2]]
    return Finding(f"{m.label} got SIGQUIT; {tc - q.ts:.2f} s later (worker_shutdown_timeout) its workers closed "
                   f"{len(clients)} client connection(s) and {len(abandoned)} FastCGI connection(s) php-fpm was still "
                   "answering (seen in the processes' socket calls).", ev, about=m.pid,
                   marks=[{"kind": "span", "t0": ctx.rel(q.ts), "t1": ctx.rel(tc), "lane": f"pid:{m.pid}",
                           "label": f"worker_shutdown_timeout ≈ {tc - q.ts:.2f} s"}])

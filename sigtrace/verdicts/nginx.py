"""Verdicts about how nginx was stopped: fast shutdown by TERM/INT, and the preStop `nginx -s quit`
whose graceful drain the runtime's TERM cut short."""
from __future__ import annotations

import numpy as np

from ..correlate.pod import PodContext
from ..correlate.processes import EXEC, NGINX_MASTER, NGINX_WORKER, PRESTOP
from ..events import capabilities as C
from .base import Finding, Undecidable, rule

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

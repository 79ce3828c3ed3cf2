"""Verdicts about php-fpm under nginx: children killed mid-request, and fpm gone while nginx
still sends it requests."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..correlate.pod import PodContext
from ..correlate.processes import FPM_CHILD, FPM_MASTER, NGINX_MASTER
from ..events import capabilities as C
from ..events import schema as S
from .base import Finding, Undecidable, fmt_t, rule
from .nginx import closed_by_roles, conn_ev, cut_connections

STOPS = ("SIGTERM", "SIGINT", "SIGQUIT")


@rule("phpfpm-abrupt-stop", "php-fpm children were stopped with requests in flight",
      "Stop php-fpm with SIGQUIT (graceful) and set process_control_timeout to at least the longest request and "
      "below the grace period; keep it running until nginx has drained (preStop sleep).")
def phpfpm_abrupt_stop(ctx: PodContext) -> Finding | Undecidable | None:
    for m in ctx.by_role(FPM_MASTER):
        for s in ctx.signals_to(pid=m.pid):
            if s.sig not in STOPS or not s.reached:
                continue
            cut = cut_connections(ctx, s.ts, "upstream", (FPM_CHILD,))
            to_children = [x for x in ctx.signals if x.sender_pid == m.pid and x.ts >= s.ts and x.target is not None
                           and x.target.role == FPM_CHILD and x.sig in ("SIGTERM", "SIGKILL", "SIGINT")]
            killed = [p for p in ctx.by_role(FPM_CHILD) if p.container_id == m.container_id
                      and p.exit_signal is not None and p.exit_ts is not None and p.exit_ts >= s.ts]
            if not len(cut) and not ctx.has(C.TCP_STATES) and ctx.has(C.SOCKET_CALLS):
                cut_calls = fastcgi_cut_by_calls(ctx, s.ts)
                if len(cut_calls):
                    ev = [ctx.evidence(s.row, f"{s.sender_label} → {s.target_label}: {s.sig}")]
                    ev += [ctx.evidence(p.exit_row, f"{p.label} killed by {p.exit_signal}") for p in killed[:2]]
                    ev += call_ev(ctx, cut_calls)
                    # both ends of one connection may show (fpm died holding it, nginx read the reset)
                    n_conns = len(set(cut_calls["dport"].where(cut_calls["kind"] == S.SOCK_CLOSE, cut_calls["sport"])))
                    return Finding(f"{m.label} got {s.sig} and its children ended with requests in flight: "
                                   f"{n_conns} FastCGI connection(s) cut (seen in the processes' socket calls).",
                                   ev, about=m.pid)
            if not len(cut):
                if not ctx.has(C.TCP_STATES) and (killed or to_children):
                    return Undecidable([C.TCP_STATES], f"php-fpm children were terminated after {s.sig}; whether "
                                       "they had requests in flight needs TCP state transitions")
                continue
            ev = [ctx.evidence(s.row, f"{s.sender_label} → {s.target_label}: {s.sig}")]
            ev += [ctx.evidence(x.row, f"{x.sender_label} → {x.target_label}: {x.sig}") for x in to_children[:3]]
            ev += [ctx.evidence(p.exit_row, f"{p.label} killed by {p.exit_signal}") for p in killed[:2]]
            ev += conn_ev(ctx, cut)
            how = ("got SIGQUIT but its children were terminated before their requests ended "
                   "(process_control_timeout too small)" if s.sig == "SIGQUIT"
                   else f"got {s.sig}: children are terminated at once")
            return Finding(f"{m.label} {how}; {len(cut)} FastCGI connection(s) were cut mid-request.", ev, about=m.pid)
    return None


@rule("upstream-exited-first", "php-fpm stopped while nginx in the same pod still served",
      "Keep php-fpm up until nginx has drained: give php-fpm a preStop sleep longer than nginx's drain, or run "
      "it as a native sidecar (an initContainer with restartPolicy: Always) so it stops after nginx.")
def upstream_exited_first(ctx: PodContext) -> Finding | Undecidable | None:
    masters = ctx.by_role(FPM_MASTER)
    ups = [li for li in ctx.listeners.values() if li.upstream]
    gone = [li.close_ts for li in ups if li.close_ts is not None] + [m.exit_ts for m in masters if m.exit_ts is not None]
    if not gone or not ctx.stopped:
        return None
    gone_ts = min(gone)
    nginx = [m for m in ctx.by_role(NGINX_MASTER) if m.alive_at(gone_ts)]
    if not nginx:
        return None
    n = nginx[0]
    until = n.exit_ts if n.exit_ts is not None else float("inf")
    refused = late = backlog = np.zeros(0, dtype=np.intp)
    if ctx.size("refused"):
        ts = ctx.col("ts", "refused")
        refused = np.flatnonzero((ctx.col("port_class", "refused") == "upstream") & (ts >= gone_ts) & (ts <= until))
    if ctx.size("conns"):
        side, cls, kind = ctx.col("side"), ctx.col("port_class"), ctx.col("close_kind")
        est, end = ctx.col("est_ts"), ctx.col("end_ts")
        reset_upstream = (cls == "upstream") & (kind == "rst")
        # connections nginx opened after php-fpm was gone and that were reset (accepted by a dying listener)
        late = np.flatnonzero(reset_upstream & (side == "client") & (est >= gone_ts))
        # connections still in php-fpm's accept queue are reset by the master as it closes its listener:
        # nginx sent those requests to an upstream that was already going away
        queued = (reset_upstream & (side == "server") & (ctx.col("reset_by") == "pod") & (end >= gone_ts - 0.005)
                  & (end <= until))
        backlog = closed_by_roles(ctx, queued, (FPM_CHILD,), keep=False)
    found = len(refused) + len(late) + len(backlog)
    if not found and not ctx.has(C.TCP_STATES) and ctx.has(C.SOCKET_CALLS):
        # strace: nginx's own connect()/recv() to the FastCGI port failing after php-fpm was gone
        sc = ctx.socket_calls
        fails = sc[sc["kind"].isin((S.CONNECT_ERROR, S.TCP_RESET_RECEIVED)) & sc["dport"].isin(upstream_ports(ctx))
                   & (sc["ts"] >= gone_ts) & (sc["ts"] <= until)] if len(sc) else sc
        if len(fails):
            ev = [ctx.evidence(m.exit_row, f"{m.label} exited") for m in masters if m.exit_ts is not None][:1]
            ev.append(ctx.evidence(None, f"{n.label} still running", ts=gone_ts))
            ev += call_ev(ctx, fails)
            return Finding(f"php-fpm was gone at {fmt_t(ctx.rel(gone_ts))} while {n.label} still served: "
                           f"{len(fails)} FastCGI connect/read(s) failed (502 for the client).", ev)
    if not found:
        if not ctx.has(C.KERNEL_RESETS) and not ctx.has(C.TCP_STATES):
            return Undecidable([C.KERNEL_RESETS, C.TCP_STATES], f"php-fpm was gone at {fmt_t(ctx.rel(gone_ts))} "
                               f"while {n.label} still ran; refused FastCGI connects need kernel resets")
        return None
    li = next((li for li in ups if li.close_ts is not None), None)
    ev = []
    if li is not None:
        ev.append(ctx.evidence(li.close_row, f"php-fpm's listener :{li.port} closed"))
    ev += [ctx.evidence(m.exit_row, f"{m.label} exited") for m in masters if m.exit_ts is not None][:1]
    ev.append(ctx.evidence(None, f"{n.label} still running", ts=gone_ts))
    row, port = ctx.col("row", "refused"), ctx.col("port", "refused")
    ev += [ctx.evidence(int(row[i]), f"FastCGI connect to :{int(port[i])} refused") for i in refused[:4]]
    if len(refused) > 4:
        ev.append({"t": None, "ts": None, "kind": None, "what": f"... and {len(refused) - 4} more", "event": None})
    if len(backlog):
        ev += [dict(e, what=e["what"] + " (queued, never accepted)") for e in conn_ev(ctx, backlog, limit=3)]
    return Finding(f"php-fpm was gone at {fmt_t(ctx.rel(gone_ts))} while {n.label} still served: "
                   f"{found} FastCGI connection(s) refused or reset "
                   "(502 for the client).", ev)


def upstream_ports(ctx: PodContext) -> list[int]:
    return [li.port for li in ctx.listeners.values() if li.upstream]


def fastcgi_cut_by_calls(ctx: PodContext, since: float) -> pd.DataFrame:
    """FastCGI connections cut as the pod's processes saw them (strace): nginx's read got ECONNRESET,
    or an fpm child still held its connection when it died."""
    sc = ctx.socket_calls
    if sc.empty:
        return sc
    ports = upstream_ports(ctx)
    reset_seen = (sc["kind"] == S.TCP_RESET_RECEIVED) & sc["dport"].isin(ports)
    held_at_death = (sc["kind"] == S.SOCK_CLOSE) & (sc["reason"].astype("object") == "exit") & sc["sport"].isin(ports)
    return sc[(reset_seen | held_at_death) & (sc["ts"] >= since)]


def call_ev(ctx: PodContext, calls: pd.DataFrame, limit: int = 4) -> list[dict]:
    what = {S.TCP_RESET_RECEIVED: "reset seen by {comm}[{pid}] on {saddr}:{sport} → :{dport}",
            S.CONNECT_ERROR: "connect by {comm}[{pid}] to :{dport} failed ({reason})",
            S.SOCK_CLOSE: "{comm}[{pid}] died holding {daddr}:{dport} → :{sport}"}
    ev = [ctx.evidence(int(i), what[r["kind"]].format(**{k: r[k] for k in ("comm", "pid", "saddr", "sport", "daddr",
                                                                            "dport", "reason")}))
          for i, r in calls.head(limit).iterrows()]
    if len(calls) > limit:
        ev.append({"t": None, "ts": None, "kind": None, "what": f"... and {len(calls) - limit} more", "event": None})
    return ev

"""Verdicts about php-fpm under nginx: children killed mid-request, and fpm gone while nginx
still sends it requests."""
from __future__ import annotations

from ..correlate.facts import SocketCalls
from ..correlate.pod import PodContext, Signal
from ..correlate.processes import FPM_CHILD, FPM_MASTER, NGINX_MASTER, Process
from ..events import capabilities as C
from ..events import schema as S
from .base import Finding, Undecidable, fmt_t, more, rule, shown, upstream_ports
from .nginx import conn_ev, cut_connections

STOPS = ("SIGTERM", "SIGINT", "SIGQUIT")


@rule("phpfpm-abrupt-stop", "php-fpm children were stopped with requests in flight",
      "Stop php-fpm with SIGQUIT (graceful) and set process_control_timeout to at least the longest request and "
      "below the grace period; keep it running until nginx has drained (preStop sleep).")
def phpfpm_abrupt_stop(ctx: PodContext) -> Finding | Undecidable | None:
    for m in ctx.by_role(FPM_MASTER):
        for s in ctx.signals_to(pid=m.pid):
            if s.sig not in STOPS or not s.reached:
                continue
            cut = cut_connections(ctx.conns.open_at(s.ts, "upstream"), (FPM_CHILD,))
            to_children = [x for x in ctx.signals if x.sender_pid == m.pid and x.ts >= s.ts and x.target is not None
                           and x.target.role == FPM_CHILD and x.sig in ("SIGTERM", "SIGKILL", "SIGINT")]
            killed = [p for p in ctx.by_role(FPM_CHILD) if p.container_id == m.container_id
                      and p.exit_signal is not None and p.exit_ts is not None and p.exit_ts >= s.ts]
            if not cut and not ctx.has(C.TCP_STATES) and ctx.has(C.SOCKET_CALLS):
                cut_calls = fastcgi_cut_by_calls(ctx, s.ts)
                if cut_calls:
                    ev = [ctx.evidence(s.row, f"{s.sender_label} → {s.target_label}: {s.sig}")]
                    ev += [ctx.evidence(p.exit_row, f"{p.label} killed by {p.exit_signal}") for p in killed[:2]]
                    ev += call_ev(ctx, cut_calls)
                    # both ends of one connection may show (fpm died holding it, nginx read the reset)
                    n_conns = len({c.dport if c.is_close else c.sport for c in cut_calls})
                    return Finding(f"{m.label} got {s.sig} and its children ended with requests in flight: "
                                   f"{n_conns} FastCGI connection(s) cut (seen in the processes' socket calls).",
                                   ev, about=m.pid)
            if not cut:
                if not ctx.has(C.TCP_STATES) and (killed or to_children):
                    return Undecidable([C.TCP_STATES], f"php-fpm children were terminated after {s.sig}; whether "
                                       "they had requests in flight needs TCP state transitions")
                continue
            ev = [ctx.evidence(s.row, f"{s.sender_label} → {s.target_label}: {s.sig}")]
            ev += [ctx.evidence(x.row, f"{x.sender_label} → {x.target_label}: {x.sig}") for x in to_children[:3]]
            ev += [ctx.evidence(p.exit_row, f"{p.label} killed by {p.exit_signal}") for p in killed[:2]]
            ev += conn_ev(ctx, cut)
            if s.sig != "SIGQUIT":
                how = f"got {s.sig}: children are terminated at once"
            elif _escalated(ctx, m, to_children):
                how = ("got SIGQUIT but its children were terminated before their requests ended "
                       "(process_control_timeout too small)")
            else:
                # the master never escalated: the runtime's SIGKILL at the grace deadline cut the drain
                how = ("got SIGQUIT and its children were still draining when the grace period ran out "
                       "and the runtime SIGKILLed them")
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
    refused = ctx.refused.upstream().at(since=gone_ts, until=until)
    reset_upstream = ctx.conns.upstream().reset()
    # connections nginx opened after php-fpm was gone and that were reset (accepted by a dying listener)
    late = reset_upstream.client_side().established(since=gone_ts)
    # connections still in php-fpm's accept queue are reset by the master as it closes its listener:
    # nginx sent those requests to an upstream that was already going away
    backlog = (reset_upstream.server_side().reset_by_pod().ended(since=gone_ts - 0.005, until=until)
               .not_closed_by_roles((FPM_CHILD,)))
    found = len(refused) + len(late) + len(backlog)
    if not found and not ctx.has(C.TCP_STATES) and ctx.has(C.SOCKET_CALLS):
        # strace: nginx's own connect()/recv() to the FastCGI port failing after php-fpm was gone
        fails = ctx.calls.failures().to_ports(upstream_ports(ctx)).at(since=gone_ts, until=until)
        if fails:
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
    ev += [ctx.evidence(r.row, f"FastCGI connect to :{r.port} refused") for r in refused.first(4)]
    if len(refused) > 4:
        ev.append(more(len(refused) - 4))
    if backlog:
        ev += [dict(e, what=e["what"] + " (queued, never accepted)") for e in conn_ev(ctx, backlog, limit=3)]
    return Finding(f"php-fpm was gone at {fmt_t(ctx.rel(gone_ts))} while {n.label} still served: "
                   f"{found} FastCGI connection(s) refused or reset "
                   "(502 for the client).", ev)


def _escalated(ctx: PodContext, master: Process, to_children: list[Signal]) -> bool:
    """The master itself sent TERM/KILL to its children (process_control_timeout expired), before
    the runtime's SIGKILL at the grace deadline (after which the namespace teardown also shows as
    signals from the dying master)."""
    grace_kill = min((x.ts for x in ctx.signals if x.sig == "SIGKILL" and x.from_outside and x.target is not None
                      and x.target.container_id == master.container_id), default=None)
    return any(x.sig in ("SIGTERM", "SIGKILL") and (grace_kill is None or x.ts < grace_kill) for x in to_children)


def fastcgi_cut_by_calls(ctx: PodContext, since: float) -> SocketCalls:
    """FastCGI connections cut as the pod's processes saw them (strace): nginx's read got ECONNRESET,
    or an fpm child still held its connection when it died."""
    ports = upstream_ports(ctx)
    reset_seen = ctx.calls.resets_seen().to_ports(ports)
    held_at_death = ctx.calls.closes().at_exit().from_ports(ports)
    return (reset_seen | held_at_death).at(since=since)


CALL_TEXT = {S.TCP_RESET_RECEIVED: "reset seen by {comm}[{pid}] on {saddr}:{sport} → :{dport}",
             S.CONNECT_ERROR: "connect by {comm}[{pid}] to :{dport} failed ({reason})",
             S.SOCK_CLOSE: "{comm}[{pid}] died holding {daddr}:{dport} → :{sport}"}


def call_ev(ctx: PodContext, calls: SocketCalls, limit: int = 4) -> list[dict]:
    ev = [ctx.evidence(c.row, CALL_TEXT[c.kind].format(
        comm=shown(c.comm), pid=shown(c.pid), saddr=shown(c.saddr), sport=shown(c.sport), daddr=shown(c.daddr),
        dport=shown(c.dport), reason=shown(c.reason))) for c in calls.first(limit)]
    if len(calls) > limit:
        ev.append(more(len(calls) - limit))
    return ev

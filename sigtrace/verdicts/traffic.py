"""Verdicts about traffic that reached a pod that no longer listened."""
from __future__ import annotations

import numpy as np

from ..correlate.pod import PodContext
from ..events import capabilities as C
from ..events import lifecycle as L
from .base import Finding, Undecidable, fmt_t, rule


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

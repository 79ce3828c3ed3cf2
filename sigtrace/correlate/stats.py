"""Per-pod numbers: were clients hurt, and how long did the shutdown take."""
from __future__ import annotations

from typing import Any

from .pod import PodContext


def build_stats(ctx: PodContext) -> dict[str, Any]:
    c, r = ctx.conns, ctx.refused
    t0 = ctx.t0
    srv = c[c["side"] == "server"] if len(c) else c

    def count(df, **eq) -> int:
        if not len(df):
            return 0
        m = None
        for k, v in eq.items():
            x = df[k] == v
            m = x if m is None else (m & x)
        return int(m.sum()) if m is not None else len(df)

    serving = srv[srv["port_class"] == "serving"] if len(srv) else srv
    upstream = srv[srv["port_class"] == "upstream"] if len(srv) else srv
    last_exit = ctx.last_exit_ts()
    killed = [p for p in ctx.procs.values() if p.exit_signal == "SIGKILL" and not p.external]
    closes = [li.close_ts for li in ctx.listeners.values() if li.close_ts is not None and not li.upstream]
    return {
        "client_connections": len(serving),
        "client_open_at_trigger": len(ctx.conns_open_at(t0, "serving")) if t0 is not None else None,
        "client_resets": count(serving, close_kind="rst", reset_by="pod"),
        "client_cut_at_exit": int(((serving["close_kind"] == "fin") & serving["at_exit"] & (serving["closed_by"] == "pod")).sum()) if len(serving) else 0,
        "refused_attempts": count(r, port_class="serving"),
        "upstream_connections": len(upstream),
        "upstream_resets": count(upstream, close_kind="rst"),
        "upstream_cut_at_exit": int(((upstream["close_kind"] == "fin") & upstream["at_exit"] & (upstream["closed_by"] == "pod")).sum()) if len(upstream) else 0,
        "upstream_refused": count(r, port_class="upstream"),
        "signals": len(ctx.signals),
        "killed_by_sigkill": len(killed),
        "listener_close_t": ctx.rel(min(closes)) if closes else None,
        "trigger_to_last_exit_s": round(last_exit - t0, 3) if (last_exit is not None and t0 is not None and last_exit >= t0) else None,
        "grace_period_s": ctx.grace_s,
    }

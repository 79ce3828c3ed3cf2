"""Per-pod numbers: were clients hurt, and how long did the shutdown take. The connection counts
are taken for all pods at once (conn_stats); the rest comes from each pod's processes."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .pod import STOP_PRE_S, PodContext

CONN_STATS = ("client_connections", "client_open_at_trigger", "client_resets", "client_cut_at_exit",
              "refused_attempts", "upstream_connections", "upstream_resets", "upstream_cut_at_exit",
              "upstream_refused")


def conn_stats(conns: pd.DataFrame, refused: pd.DataFrame, t0: dict[str, float | None]) -> dict[str, dict[str, int]]:
    """pod uid -> its connection counts (CONN_STATS); conns and refused: every pod's, with a pod column.
    Of a pod that stopped, resets, cuts and refusals count only from its stop on: earlier ones
    (keep-alive expiry, php-fpm recycling its children) are no stop's doing (correlate.outside)."""
    cols: dict[str, np.ndarray] = {}
    if len(conns):
        server = (conns["side"] == "server").to_numpy(dtype=bool)
        serving = server & (conns["port_class"] == "serving").to_numpy(dtype=bool)
        upstream = server & (conns["port_class"] == "upstream").to_numpy(dtype=bool)
        kind = conns["close_kind"].to_numpy(dtype=object)
        cut = ((kind == "fin") & conns["at_exit"].to_numpy(dtype=bool)
               & (conns["closed_by"] == "pod").to_numpy(dtype=bool))
        pod_t0 = conns["pod"].map(t0).astype(float).to_numpy()
        est, end = conns["est_ts"].to_numpy(dtype=float), conns["end_ts"].to_numpy(dtype=float)
        open_at = ~np.isnan(est) & (est <= pod_t0) & (np.isnan(end) | (end > pod_t0))
        in_stop = np.isnan(pod_t0) | ~(end < pod_t0 - STOP_PRE_S)
        cols = {"client_connections": serving, "client_open_at_trigger": serving & open_at,
                "client_resets": serving & (kind == "rst") & (conns["reset_by"] == "pod").to_numpy(dtype=bool) & in_stop,
                "client_cut_at_exit": serving & cut & in_stop, "upstream_connections": upstream,
                "upstream_resets": upstream & (kind == "rst") & in_stop, "upstream_cut_at_exit": upstream & cut & in_stop}
    out: dict[str, dict[str, int]] = {}
    if cols:
        for u, r in zip(*_sum_by(pd.DataFrame(cols), conns["pod"])):
            out[u] = {k: int(v) for k, v in r.items()}
    if len(refused):
        cls = refused["port_class"].to_numpy(dtype=object)
        pod_t0 = refused["pod"].map(t0).astype(float).to_numpy()
        in_stop = np.isnan(pod_t0) | ~(refused["ts"].to_numpy(dtype=float) < pod_t0 - STOP_PRE_S)
        ref = pd.DataFrame({"refused_attempts": (cls == "serving") & in_stop, "upstream_refused": (cls == "upstream") & in_stop})
        for u, r in zip(*_sum_by(ref, refused["pod"])):
            out.setdefault(u, {}).update({k: int(v) for k, v in r.items()})
    return out


def _sum_by(frame: pd.DataFrame, key: pd.Series) -> tuple[list[str], list[dict[str, Any]]]:
    sums = frame.groupby(key.to_numpy(dtype=object), sort=False).sum()
    return list(sums.index), sums.to_dict("records")


def build_stats(ctx: PodContext) -> dict[str, Any]:
    counts = ctx.display.stats
    t0 = ctx.t0
    last_exit = ctx.last_exit_ts()
    killed = [p for p in ctx.procs.values() if p.exit_signal == "SIGKILL" and not p.external]
    closes = [li.close_ts for li in ctx.listeners.values() if li.close_ts is not None and not li.upstream]
    out: dict[str, Any] = {k: counts.get(k, 0) for k in CONN_STATS}
    if t0 is None:
        out["client_open_at_trigger"] = None
    if "closes_counted" in counts:      # routine closes the kernel counted (correlate.counted)
        out["closes_counted"] = counts["closes_counted"]
    out.update({
        "signals": len(ctx.signals),
        "killed_by_sigkill": len(killed),
        "listener_close_t": ctx.rel(min(closes)) if closes else None,
        "trigger_to_last_exit_s": round(last_exit - t0, 3) if (last_exit is not None and t0 is not None and last_exit >= t0) else None,
        "grace_period_s": ctx.grace_s,
    })
    return out

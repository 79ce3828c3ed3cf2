"""Closes the kernel counted instead of streaming (tcp_close_counts): a stopping pod's routine closes
of connections it accepted while stopping, per port and 100 ms. They add to the stats' connection
counts and to the timeline's "more like this" line, which then says that the closes it shows are a
sample. Recordings without the kind are left exactly as they were."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..events import schema as S
from .connections import PodSets


def counted_closes(tcp: pd.DataFrame, ports: PodSets, upstream: PodSets) -> pd.DataFrame:
    """One row per counted bucket of a pod's server side: pod, ts, port, port_class, count. Client
    sides (the pod's own connections to its ports) are counted in the kernel too, but the stats and
    the timeline count server sides only."""
    if "count" not in tcp.columns:
        return pd.DataFrame(columns=["pod", "ts", "port", "port_class", "count"])
    rows = tcp[(tcp["kind"] == S.TCP_CLOSE_COUNTS) & tcp["sport"].notna() & tcp["count"].notna()]
    pod = rows["pod_uid"].astype("object").to_numpy(dtype=object)
    port = rows["sport"].to_numpy(dtype=np.int64)
    cls = [("upstream" if p in upstream.get(u, ()) else "serving" if p in ports.get(u, ()) else "other")
           for u, p in zip(pod, port.tolist())]
    return pd.DataFrame({"pod": pod, "ts": rows["ts"].to_numpy(dtype=float), "port": port, "port_class": cls,
                         "count": rows["count"].to_numpy(dtype=np.int64)})


def add_to_stats(stats: dict[str, dict[str, int]], counted: pd.DataFrame) -> None:
    """Counted closes are connections too: serving ones clients', upstream ones FastCGI's."""
    for (uid, cls), n in counted.groupby(["pod", "port_class"])["count"].sum().items():
        key = {"serving": "client_connections", "upstream": "upstream_connections"}.get(cls)
        pod = stats.setdefault(uid, {})
        if key is not None:
            pod[key] = pod.get(key, 0) + int(n)
        pod["closes_counted"] = pod.get("closes_counted", 0) + int(n)


def add_to_timeline(lines: dict[str, list[dict[str, Any]]], counted: pd.DataFrame, starts: dict[str, float]) -> None:
    """The counted closes from each pod's timeline start join its "more like this" line of closes
    (one is made when the streamed ones needed none), marked as counted."""
    start = counted["pod"].map(starts).astype(float).to_numpy()
    shown = counted[counted["ts"].to_numpy(dtype=float) >= start]
    for uid, g in shown.groupby("pod"):
        n, first = int(g["count"].sum()), float(g["ts"].min())
        pod = lines.setdefault(uid, [])
        more = next((x for x in pod if x["type"] == "conn_close" and "more" in x), None)
        if more is None:
            pod.append({"type": "conn_close", "more": n, "ts": first, "counted": n})
        else:
            more.update(more=more["more"] + n, counted=n)

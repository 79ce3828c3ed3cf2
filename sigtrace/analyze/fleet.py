"""Per-pod summary and fleet aggregates, from the reports build_reports produced per node.

Input is the ReportSet.to_dict() shape (one per node); everything after the dicts are
flattened is vectorised pandas (a fleet can have thousands of pods).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import pandas as pd

# Kubernetes names a Deployment's pods <deployment>-<pod-template-hash>-<5 chars>, both hashes
# from this alphabet (k8s.io/apimachinery rand.SafeEncodeString: no vowels, no 0/1/3).
_SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
DEPLOYMENT_POD = re.compile(rf"^(?P<deployment>.+)-{_SAFE}{{6,10}}-{_SAFE}{{5}}$")

# A verdict that the backend could not decide (strace cannot see kernel RSTs) is shown, but
# does not count as a pod hurt.
UNDECIDED = frozenset({"undecidable", "undecided", "unknown"})

# stats keys of the report, first match wins (the report names them; older names kept working)
STAT_KEYS = {
    "shutdown_s": ("trigger_to_last_exit_s", "shutdown_s", "time_to_last_exit_s"),
    "resets": ("client_resets", "client_connections_reset", "resets"),
    "refused": ("refused_attempts", "refused"),
    "upstream_resets": ("upstream_resets", "fastcgi_resets"),
}

POD_COLUMNS = ["node", "pod_uid", "pod", "namespace", "deployment", "stopped", "verdicts", "undecided", "shutdown_s",
               "resets", "refused", "upstream_resets", "lost_events"]


def _stat(stats: dict[str, Any], name: str) -> Any:
    for key in STAT_KEYS[name]:
        if stats.get(key) is not None:
            return stats[key]
    return None


@dataclass
class Fleet:
    pods: pd.DataFrame                 # one row per pod (POD_COLUMNS)
    verdicts: pd.DataFrame             # one row per (pod, verdict): node, pod_uid, id, status, summary, fix
    nodes: dict[str, dict[str, Any]]   # node -> {"lost_events", "backend", "incomplete"}
    incomplete: list[str] = field(default_factory=list)

    # ---- aggregates -----------------------------------------------------------------
    def hurt(self) -> pd.Series:
        """Per pod: has at least one decided verdict."""
        # by node and uid: a uid is unique in a cluster, but an export may come from elsewhere
        decided = self.verdicts[~self.verdicts["status"].isin(UNDECIDED)]
        hurt = pd.MultiIndex.from_arrays([decided["node"].astype(object), decided["pod_uid"].astype(object)])
        mine = pd.MultiIndex.from_arrays([self.pods["node"].astype(object), self.pods["pod_uid"].astype(object)])
        return pd.Series(mine.isin(hurt), index=self.pods.index)

    def stopped(self) -> pd.DataFrame:
        """The pods that stopped while recorded: the population the shares are of."""
        return self.pods[self.pods["stopped"].astype(bool)]

    def verdict_counts(self) -> pd.DataFrame:
        n = max(len(self.stopped()), 1)
        v = self.verdicts
        if v.empty:
            return pd.DataFrame(columns=["id", "pods", "share", "undecided"])
        # pods as (node, uid): one uid on two nodes (an export from elsewhere) is two pods
        open_ = v["status"].isin(UNDECIDED)
        decided = v[~open_].drop_duplicates(["id", "node", "pod_uid"]).groupby("id", observed=True).size()
        undecided = v[open_].drop_duplicates(["id", "node", "pod_uid"]).groupby("id", observed=True).size()
        out = pd.DataFrame({"pods": decided, "undecided": undecided}).fillna(0).astype("int64")
        out["share"] = out["pods"] / n
        out = out.reset_index(names="id").sort_values(["pods", "id"], ascending=[False, True])
        return out[["id", "pods", "share", "undecided"]].reset_index(drop=True)

    def shutdown_times(self) -> dict[str, Any]:
        s = pd.to_numeric(self.stopped()["shutdown_s"], errors="coerce").dropna()
        if s.empty:
            return {"pods": 0, "p50_s": None, "p95_s": None, "max_s": None}
        return {"pods": int(s.size), "p50_s": float(s.quantile(0.5)), "p95_s": float(s.quantile(0.95)),
                "max_s": float(s.max())}

    def hurt_by(self, column: str) -> pd.DataFrame:
        """Pods and pods hurt per namespace or deployment (rows where it is known)."""
        df = self.pods.assign(hurt=self.hurt())
        df = df[df[column].notna() & df["stopped"].astype(bool)]
        if df.empty:
            return pd.DataFrame(columns=[column, "pods", "hurt", "share"])
        g = df.groupby(column, observed=True, sort=True)["hurt"].agg(pods="size", hurt="sum")
        g["share"] = g["hurt"] / g["pods"]
        return g.reset_index().sort_values(["hurt", column], ascending=[False, True], ignore_index=True)

    def summary(self) -> dict[str, Any]:
        hurt = self.hurt()[self.pods["stopped"].astype(bool)]
        return {
            "pods": int(len(self.pods)),
            "pods_stopped": int(len(hurt)),
            "pods_hurt": int(hurt.sum()),
            "share_hurt": float(hurt.mean()) if len(hurt) else 0.0,
            "nodes": len(self.nodes),
            "lost_events": int(sum(n.get("lost_events") or 0 for n in self.nodes.values())),
            "verdicts": self.verdict_counts().to_dict("records"),
            "shutdown": self.shutdown_times(),
            "by_namespace": self.hurt_by("namespace").to_dict("records"),
            "by_deployment": self.hurt_by("deployment").to_dict("records"),
        }

    def to_dict(self) -> dict[str, Any]:
        pods = self.pods.astype(object).where(self.pods.notna(), None).to_dict("records")
        verdicts = self.verdicts.astype(object).where(self.verdicts.notna(), None)
        by_pod: dict[tuple, list] = {}
        for row in verdicts.to_dict("records"):
            by_pod.setdefault((row["node"], row["pod_uid"]), []).append(
                {k: row[k] for k in ("id", "status", "summary", "fix")})
        for pod in pods:
            pod["verdicts"] = by_pod.get((pod["node"], pod["pod_uid"]), [])
            pod["undecided"] = list(pod["undecided"] or [])
        return {"fleet": _plain(self.summary()), "pods": _plain(pods), "nodes": _plain(self.nodes),
                "incomplete": list(self.incomplete)}


def _plain(obj: Any) -> Any:
    """numpy scalars -> Python, so json.dumps works and the output is stable."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def deployments(pod_names: pd.Series, template_hash: pd.Series | None = None) -> pd.Series:
    """Deployment per pod: exact when the pod-template-hash label is known, else by the name pattern."""
    names = pod_names.astype("string")
    guessed = names.str.extract(DEPLOYMENT_POD)["deployment"].astype("string")
    if template_hash is None or names.dropna().empty:
        return guessed
    parts = names.str.rsplit("-", n=2, expand=True)
    if parts.shape[1] < 3:
        return guessed
    # <deployment>-<pod-template-hash>-<suffix>: the label names the middle part exactly
    exact = parts[0].where(parts[1] == template_hash.astype("string")).astype("string")
    return exact.fillna(guessed)


def fleet_from_reports(per_node: Iterable[tuple[str, dict[str, Any]]], metas: dict[str, dict],
                       template_hashes: dict[str, str] | None = None,
                       incomplete: Iterable[str] = ()) -> Fleet:
    """Flatten {node: ReportSet.to_dict()} into the pod and verdict frames, nodes in name order
    whatever order per_node gives them in. per_node is read once, node by node (it may be a
    generator); template_hashes is read after it."""
    pods_of: dict[str, list[dict]] = {}
    verdicts_of: dict[str, list[dict]] = {}
    nodes_of: dict[str, dict] = {}
    for node, rs in per_node:
        meta = metas.get(node, {})
        lost = rs.get("lost_events")
        lost = meta.get("lost_events") if lost is None else lost
        nodes_of[node] = {"lost_events": lost, "backend": meta.get("backend"),
                          "incomplete": list(rs.get("incomplete") or [])}
        pod_rows = pods_of.setdefault(node, [])
        verdict_rows = verdicts_of.setdefault(node, [])
        for pod in rs.get("pods", []):
            stats = pod.get("stats") or {}
            verdicts = pod.get("verdicts") or []
            ids = [v.get("id") for v in verdicts if v.get("status") not in UNDECIDED]
            pod_rows.append({
                "node": node, "pod_uid": pod.get("pod_uid"),
                "pod_name": pod.get("pod_name"), "namespace": pod.get("namespace"),
                # reports without the flag (older shape) count every pod as stopped
                "stopped": bool(pod.get("stopped", True)),
                "verdicts": ", ".join(ids),
                "undecided": [v.get("id") for v in verdicts if v.get("status") in UNDECIDED],
                **{name: _stat(stats, name) for name in STAT_KEYS},
                "lost_events": lost,
            })
            for v in verdicts:
                verdict_rows.append({"node": node, "pod_uid": pod.get("pod_uid"), "id": v.get("id"),
                                     "status": v.get("status") or "confirmed", "summary": v.get("summary"),
                                     "fix": v.get("fix")})
    order = sorted(nodes_of)
    nodes = {node: nodes_of[node] for node in order}
    pod_rows = [row for node in order for row in pods_of[node]]
    verdict_rows = [row for node in order for row in verdicts_of[node]]
    pods = pd.DataFrame(pod_rows, columns=["node", "pod_uid", "pod_name", "namespace", "stopped", "verdicts", "undecided",
                                           *STAT_KEYS, "lost_events"])
    for col in ("node", "namespace"):
        pods[col] = pods[col].astype("category")
    names = pods["pod_name"].astype("string")
    hashes = pods["pod_uid"].map(template_hashes) if template_hashes else None
    pods["deployment"] = deployments(names, hashes).astype("category")
    label = (pods["namespace"].astype("string") + "/" + names).fillna(names).fillna(pods["pod_uid"].astype("string"))
    pods["pod"] = label
    for col in STAT_KEYS:
        pods[col] = pd.to_numeric(pods[col], errors="coerce")
    pods = pods[POD_COLUMNS].sort_values(["node", "pod"], ignore_index=True) if len(pods) else pods[POD_COLUMNS]
    verdicts = pd.DataFrame(verdict_rows, columns=["node", "pod_uid", "id", "status", "summary", "fix"])
    verdicts["id"] = verdicts["id"].astype("category")
    verdicts["status"] = verdicts["status"].astype("category")
    return Fleet(pods=pods, verdicts=verdicts, nodes=nodes, incomplete=list(incomplete))

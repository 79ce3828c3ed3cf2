"""`kubectl sigtrace status` for people: the lines printed from agents.agent_status (+ add_health)."""
from __future__ import annotations

import time
from typing import Any

from .units import human_age, human_size


def readiness_rows(st: dict[str, Any]) -> list[str]:
    """The table without health (--no-health): one line per node, readiness as the API reports it."""
    rows = [f"{'NODE':<24} {'POD':<32} {'READY':<6} {'PHASE':<10} RESTARTS"]
    for n in st["nodes"]:
        rows.append(f"{n['node'] or '-':<24} {n['pod']:<32} {'yes' if n['ready'] else 'no':<6} "
                    f"{n['phase'] or '-':<10} {n['restarts']}")
    return rows


def status_rows(st: dict[str, Any], namespace: str, now: float | None = None) -> list[str]:
    """The `status` table: one line per node, then one note per node whose health is not plain."""
    now = now if now is not None else time.time()
    rows = [f"{'NODE':<20} {'POD':<28} {'READY':<5} {'RESTARTS':>8} {'ARMED':>5} {'EVENTS/S':>9} "
            f"{'LOST':>6} {'DISK':>9}  LAST REPORT"]
    notes = []
    for n in st["nodes"]:
        h = n.get("health") or {}
        last = h.get("last_report")
        if last:
            ago = max(0.0, now - (last.get("at") or now))
            who = f"{last.get('namespace') or '?'}/{last.get('pod_name') or last.get('pod_uid') or '?'}"
            last_s = f"{human_age(ago)} ago {who} {','.join(last.get('verdicts') or []) or 'clean'}"
        else:
            last_s = "-" if "error" in h else "none yet"
        armed = h.get("armed_pods")
        rows.append(f"{n['node'] or '-':<20} {n['pod']:<28} {'yes' if n['ready'] else 'no':<5} {n['restarts']:>8} "
                    f"{'-' if armed is None else armed:>5} "
                    f"{'-' if 'events_per_s' not in h else format(h['events_per_s'], '.1f'):>9} "
                    f"{h.get('lost_events', '-'):>6} {human_size(h.get('disk_used_bytes')):>9}  {last_s}")
        notes += _health_notes(n, h, namespace)
    return rows + [f"note: {line}" for line in notes]


def _health_notes(n: dict[str, Any], h: dict[str, Any], namespace: str) -> list[str]:
    """Why one node's health is not plain, one line each."""
    node = n["node"] or n["pod"]
    if "error" in h:
        return [f"{node}: health unavailable: {h['error']}"]
    notes = []
    if h.get("stale"):
        notes.append(f"{node}: status.json is {human_age(h['age_s'])} old: the agent's recording loop is stuck "
                     f"or it stopped (see `kubectl logs -n {namespace} {n['pod']}`)")
    elif not h.get("recording"):
        notes.append(f"{node}: the agent is not recording (starting, or stopped)")
    for res, problem in ((h.get("kubernetes") or {}).get("problems") or {}).items():
        notes.append(f"{node}: API {res}: {problem}")
    if h.get("backend") == "kubernetes-api-only":
        notes.append(f"{node}: no kernel recorder (API events only): see the agent's log")
    return notes

"""The cluster's agents as a user sees them from outside: their pods, the DaemonSet's counts, and
each agent's health (its status.json, read over pods/exec: no port, Service or extra RBAC)."""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import SigtraceError, UsageProblem
from .client import api_error
from .exec import exec_read

AGENT_LABEL = "app.kubernetes.io/name=sigtrace-agent"
AGENT_OUTPUT = "/var/lib/sigtrace"
STATUS_PATH = f"{AGENT_OUTPUT}/status.json"      # written by the agent (sigtrace/k8s/health.py)
STALE_AFTER_S = 30.0        # status.json is rewritten every 5 s: older means the agent's loop is stuck
EXEC_WORKERS = 8            # agents asked at once (one pods/exec each)


def agent_pods(api: Any, namespace: str) -> list[dict]:
    """The agent pods in namespace, as the API returns them (plain dicts)."""
    from kubernetes import client
    try:
        resp = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=AGENT_LABEL,
                                                         _preload_content=False)
        return json.loads(resp.data)["items"]
    except Exception as exc:  # noqa: BLE001
        raise api_error(exc, f"listing agent pods in {namespace}") from None


def agent_status(api: Any, namespace: str) -> dict[str, Any]:
    """DaemonSet counts and, per node, the agent pod and whether it is ready."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    try:
        resp = client.AppsV1Api(api).read_namespaced_daemon_set("sigtrace-agent", namespace, _preload_content=False)
        ds = json.loads(resp.data)
    except ApiException as exc:
        if exc.status == 404:
            raise UsageProblem(f"no sigtrace agents in namespace {namespace}: run `kubectl sigtrace deploy`") from None
        raise api_error(exc, "reading the DaemonSet") from None
    except Exception as exc:  # noqa: BLE001
        raise api_error(exc, "reading the DaemonSet") from None
    st = ds.get("status") or {}
    nodes = []
    for p in agent_pods(api, namespace):
        nodes.append(_agent_row(p))
    nodes.sort(key=lambda n: n["node"] or "")
    st = st if isinstance(st, dict) else {}
    return {"desired": _number(st.get("desiredNumberScheduled")) or 0, "ready": _number(st.get("numberReady")) or 0,
            "nodes": nodes}


def _agent_row(p: Any) -> dict[str, Any]:
    """One agent pod as the status table shows it; a field of the wrong shape (API data) as unknown."""
    p = p if isinstance(p, dict) else {}
    status = p.get("status") if isinstance(p.get("status"), dict) else {}
    spec = p.get("spec") if isinstance(p.get("spec"), dict) else {}
    meta = p.get("metadata") if isinstance(p.get("metadata"), dict) else {}
    conds = {c.get("type"): c.get("status") for c in _dicts(status.get("conditions"))}
    restarts = sum(_number(c.get("restartCount")) or 0 for c in _dicts(status.get("containerStatuses")))
    node, name, phase = spec.get("nodeName"), meta.get("name"), status.get("phase")
    return {"node": node if isinstance(node, str) else None, "pod": name if isinstance(name, str) else "?",
            "ready": conds.get("Ready") == "True", "phase": phase if isinstance(phase, str) else None,
            "restarts": int(min(restarts, 1e9))}


def _dicts(v: Any) -> list[dict]:
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def add_health(api: Any, namespace: str, st: dict[str, Any]) -> dict[str, Any]:
    """Each running agent's status.json under nodes[].health, asked in parallel."""
    running = [n for n in st["nodes"] if n["phase"] == "Running"]
    with ThreadPoolExecutor(max_workers=EXEC_WORKERS) as pool:
        for n, h in zip(running, pool.map(lambda n: agent_health(api, namespace, n["pod"]), running)):
            n["health"] = h
    for n in st["nodes"]:
        n.setdefault("health", {"error": f"agent pod not running ({n['phase'] or 'no phase'})"})
    return st


def agent_health(api: Any, namespace: str, pod: str, now: float | None = None) -> dict[str, Any]:
    """One agent's status.json (see sigtrace/k8s/health.py), read over pods/exec, plus "stale"; or
    {"error": one line} when it cannot be had."""
    from kubernetes.client.exceptions import ApiException
    try:
        data = exec_read(api, namespace, pod, ["cat", STATUS_PATH])
        health = json.loads(data)
        if not isinstance(health, dict):
            raise ValueError("not a JSON object")
    except ApiException as exc:
        if exc.status == 403:
            return {"error": "pods/exec forbidden (403): your user lacks create on pods/exec"}
        return {"error": f"pods/exec failed: {exc.status} {exc.reason}"}
    except SigtraceError as exc:
        text = str(exc)
        if "No such file" in text or "exit code: 1" in text:
            return {"error": "no status.json yet (agent starting, or an older agent image)"}
        return {"error": text[:200]}
    except (ValueError, RecursionError) as exc:
        return {"error": f"status.json unreadable ({str(exc)[:120]})"}
    except Exception as exc:  # noqa: BLE001 - a connection problem for one node must not hide the others
        return {"error": f"pods/exec failed ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"}
    health = clean_health(health)
    age = (now if now is not None else time.time()) - (health.get("written_at") or 0.0)
    health["age_s"] = round(age, 1)
    health["stale"] = age > max(STALE_AFTER_S, 3 * (health.get("every_s") or 0.0))
    return health


NUMBERS = ("written_at", "every_s", "events_per_s", "armed_pods", "lost_events", "disk_used_bytes")


def _number(v: Any) -> float | int | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def clean_health(raw: dict[str, Any]) -> dict[str, Any]:
    """status.json with the fields the status table reads kept only when of their type (the file
    comes from a node: a number as text, a list for a dict must not be a traceback); the rest as is."""
    h = dict(raw)
    for key in NUMBERS:
        if key in h and _number(h[key]) is None:
            del h[key]
    if "recording" in h and not isinstance(h["recording"], bool):
        del h["recording"]
    if "backend" in h and not isinstance(h["backend"], str):
        del h["backend"]
    last = h.get("last_report")
    if last is not None:
        if isinstance(last, dict):
            verdicts = last.get("verdicts")
            h["last_report"] = {"at": _number(last.get("at")),
                                **{k: last.get(k) if isinstance(last.get(k), str) else None
                                   for k in ("namespace", "pod_name", "pod_uid")},
                                "verdicts": [v for v in verdicts if isinstance(v, str)] if isinstance(verdicts, list)
                                else []}
        else:
            del h["last_report"]
    k8s = h.get("kubernetes")
    if k8s is not None:
        problems = k8s.get("problems") if isinstance(k8s, dict) else None
        h["kubernetes"] = {**(k8s if isinstance(k8s, dict) else {}),
                           "problems": {str(r): p for r, p in problems.items() if isinstance(p, str)}
                           if isinstance(problems, dict) else {}}
    return h

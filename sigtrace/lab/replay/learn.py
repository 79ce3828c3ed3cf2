"""What a recording says about how one pod was stopped, as lab settings.

Everything is learned from the recording alone: the pod's report (containers, processes and their
roles, the stop signals and who sent them, the connections around the stop) and its pod_lifecycle
events (the API's pod data: preStop, stop signals, grace period; endpoint updates). Each setting
says where it came from; one the recording cannot tell takes the lab's documented default, and
says so. The learned settings become a lab Scenario that runs the pod "as recorded".
"""
from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ...errors import DataError
from ...events import capabilities as C
from ...events import lifecycle, schema
from ...events.source import Recording
from ...report.model import PodReport, ReportSet
from ..scenario import Scenario

NGINX, FPM = "nginx", "php-fpm"             # the lab's container names, by the app they run
DEFAULTS = Scenario()                       # the lab's documented defaults (README, `sigtrace lab --help`)
PARALLEL_S = 0.3                            # containers whose stops start closer than this stopped in parallel
MAX_CONCURRENCY = 32
MAX_WORKERS = 8


@dataclass
class Setting:
    value: Any
    source: str                             # how the recording showed it, or "default: why"

    @property
    def learned(self) -> bool:
        return not self.source.startswith("default")

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source}


@dataclass
class Learned:
    """One recorded pod's shutdown as lab settings, with the recording's own verdicts."""
    pod_uid: str
    pod_name: str | None
    containers: dict[str, str]              # lab container (nginx, php-fpm) -> recorded container name
    settings: dict[str, Setting]
    verdicts: list[str]                     # confirmed verdict ids of the recorded report
    notes: list[str] = field(default_factory=list)     # what could not be learned, and why

    @property
    def partial(self) -> bool:
        return any(not s.learned for k, s in self.settings.items() if k in KEY_SETTINGS)

    def value(self, name: str) -> Any:
        return self.settings[name].value

    def scenario(self, name: str, layout: str = "cgroupfs") -> Scenario:
        return scenario_of({k: s.value for k, s in self.settings.items()}, name, layout)


# the settings a replay cannot be trusted without: a default in one of them marks it partial
KEY_SETTINGS = ("stop_signal.nginx", "stop_signal.php-fpm", "grace_s", "lb_delay_s")


def scenario_of(values: dict[str, Any], name: str, layout: str = "cgroupfs") -> Scenario:
    """Lab settings (the flat names of Learned.settings) -> the lab's Scenario."""
    prestop = {c: values[f"prestop.{c}"] for c in (NGINX, FPM) if values.get(f"prestop.{c}")}
    return Scenario(
        name=name, layout=layout, workers=values["workers"], grace_s=values["grace_s"],
        stop_signal={c: values[f"stop_signal.{c}"] for c in (NGINX, FPM)}, prestop=prestop,
        wrapper=values["wrapper"], stop_order=values["stop_order"], stop_delay_s=values["stop_delay_s"],
        request_ms=values["request_ms"], concurrency=values["concurrency"], lb_delay_s=values["lb_delay_s"],
        process_control_timeout_s=values["process_control_timeout_s"],
        worker_shutdown_timeout_s=values["worker_shutdown_timeout_s"],
        keepalive_idle_ms=values["keepalive_idle_ms"])


def choose_pod(reports: ReportSet, pod: str | None, directory: str) -> PodReport:
    """The pod to replay: the one named, else the recording's only stopped pod."""
    if pod is not None:
        found = reports.pod(pod)
        if found is None:
            raise DataError(f"pod {pod!r} is not in {directory}: give a pod UID or name that "
                            f"`sigtrace report {directory}` lists")
        if not found.stopped:
            raise DataError(f"pod {found.title} was not stopped in {directory}: replay needs a recording of "
                            "the pod's shutdown")
        return found
    stopped = [p for p in reports.pods if p.stopped]
    if not stopped:
        raise DataError(f"no stopped pod in {directory}: replay needs a recording of a pod's shutdown "
                        "(record while the pod is deleted or rolled)")
    if len(stopped) > 1:
        names = ", ".join(p.title for p in stopped[:5]) + (" ..." if len(stopped) > 5 else "")
        raise DataError(f"{len(stopped)} stopped pods in {directory} ({names}): choose one with --pod")
    return stopped[0]


def learn(rec: Recording, reports: ReportSet, report: PodReport) -> Learned:
    by_app = _containers_by_app(report)
    if NGINX not in by_app and FPM not in by_app:
        apps = ", ".join(sorted({str(c.get("app")) for c in report.containers})) or "none seen"
        raise DataError(f"pod {report.title} runs neither nginx nor php-fpm (apps: {apps}): the lab replays "
                        "nginx + php-fpm pods only")
    lc = _lifecycle(rec.events, report.pod_uid)
    seen = lc.get(lifecycle.POD_SEEN, {})
    caps = set((rec.meta or {}).get("capabilities") or ())
    notes: list[str] = []
    if NGINX not in by_app:
        notes.append("no nginx container in the pod: the lab's nginx stands in as the php-fpm client")
    if FPM not in by_app:
        notes.append("no php-fpm container in the pod: the lab's php-fpm stands in as nginx's upstream")
    needed = {C.SIGNAL_SENDER, C.TCP_STATES, C.KERNEL_RESETS}
    if caps and not needed.issubset(caps):
        notes.append("recorded without " + ", ".join(sorted(needed - caps)) +
                     " (strace or an old kernel): settings that need them take the lab's defaults")
    s: dict[str, Setting] = {}
    for app in (NGINX, FPM):
        c = by_app.get(app)
        s[f"stop_signal.{app}"] = _stop_signal(report, c, seen)
        s[f"prestop.{app}"] = _prestop(report, c, seen)
    s["wrapper"] = _wrapper(report, by_app.get(NGINX))
    s["grace_s"] = _grace(report, lc)
    s["stop_order"], s["stop_delay_s"] = _stop_order(report, by_app)
    s["concurrency"] = _concurrency(report)
    s["workers"] = _workers(by_app)
    s["request_ms"] = _request_ms(report, s["workers"].value, s["concurrency"].value)
    s["lb_delay_s"] = _lb_delay(rec.events, report, lc, rec.meta)
    s["process_control_timeout_s"] = _process_control_timeout(report, by_app.get(FPM), s["request_ms"].value)
    s["worker_shutdown_timeout_s"] = _worker_shutdown_timeout(report, by_app.get(NGINX))
    s["keepalive_idle_ms"] = _keepalive(report)
    req = s["request_ms"]
    if not req.learned or "cut" in req.source:
        notes.append(f"the recording does not show how long a whole request takes: the replay uses "
                     f"{req.value} ms, so its fix is proven for requests up to that; check your longest request "
                     "(nginx's $request_time) before applying the drain limits")
    names = {app: c.get("name") or c["container_id"][:12] for app, c in by_app.items()}
    verdicts = [v.id for v in report.verdicts if v.status == "confirmed"]
    return Learned(report.pod_uid, report.pod_name, names, s, verdicts, notes)


# ---- the pieces ---------------------------------------------------------------------------------
def _containers_by_app(report: PodReport) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for c in report.containers:
        app = c.get("app")
        roles = {p.get("role") for p in c.get("processes") or ()}
        if app not in (NGINX, FPM):
            app = NGINX if roles & {"nginx-master", "nginx-worker"} else FPM if roles & {"fpm-master", "fpm-child"} else None
        if app and app not in out:
            out[app] = c
    return out


def _lifecycle(events: pd.DataFrame, uid: str) -> dict[str, dict[str, Any]]:
    """The pod's lifecycle events by name: the last pod_seen (the most complete), the first of the
    others; detail parsed, ts added. Tenant data: anything that is not a JSON object is ignored."""
    if "kind" not in events or not len(events):
        return {}
    rows = events[(events["kind"] == schema.POD_LIFECYCLE) & (events["pod_uid"] == uid)]
    out: dict[str, dict[str, Any]] = {}
    for ts, event, detail in zip(rows["ts"].tolist(), rows["event"].astype(object).tolist(),
                                 rows["detail"].astype(object).tolist()):
        d = lifecycle.detail_object(detail)
        if event == lifecycle.POD_SEEN or event not in out:
            out[str(event)] = dict(d, ts=ts)
    return out


def _timeline(report: PodReport, type_: str, container: str | None = None) -> list[dict[str, Any]]:
    return [e for e in report.timeline if e.get("type") == type_
            and (container is None or e.get("container") == container)]


def _name(c: dict[str, Any] | None) -> str | None:
    return c.get("name") if c else None


def _stop_signal(report: PodReport, c: dict[str, Any] | None, seen: dict[str, Any]) -> Setting:
    if c and c.get("stop_signal") and c["stop_signal"].get("sig"):
        sig = c["stop_signal"]
        return Setting(sig["sig"], f"recorded: {sig['sig']} from {sig.get('sender') or 'the runtime'} "
                                   f"at {_t(sig.get('t'))}")
    declared = seen.get("stop_signal")
    if isinstance(declared, dict) and isinstance(declared.get(_name(c)), str):
        return Setting(declared[_name(c)], "the API's pod data (lifecycle.stopSignal)")
    return Setting("SIGTERM", "default: no stop signal recorded (the runtime's default, SIGTERM)")


_SLEEP = re.compile(r"^sleep\s+(\d+(?:\.\d+)?)s?$")
# the only recorded preStop commands the lab runs as they are: anything else in a recording (tenant
# data, or a file copied from anywhere) would be a command run as root on this machine
_RUNNABLE = re.compile(r"^(?:nginx -s (?:quit|stop)|kill -(?:QUIT|TERM|INT|s (?:QUIT|TERM|INT)) 1)$")
MAX_PRESTOP_S = 300.0
MAX_GRACE_S = 600.0
MAX_REQUEST_MS = 60_000
MAX_LAG_S = 60.0


def _prestop(report: PodReport, c: dict[str, Any] | None, seen: dict[str, Any]) -> Setting:
    declared = seen.get("prestop")
    name = _name(c)
    if c is None:
        return Setting(None, "default: container not in the pod")
    if isinstance(declared, dict) and isinstance(declared.get(name), str) and declared[name].strip():
        cmd = " ".join(declared[name].split())
        m = _SLEEP.match(cmd)
        if m:                                          # the kubelet's sleep action, "sleep 5s"
            secs = min(float(m.group(1)), MAX_PRESTOP_S)
            return Setting(f"sleep {secs:g}", f"the API's pod data: preStop {cmd}" + _capped(secs, float(m.group(1))))
        if _RUNNABLE.match(cmd):
            return Setting(cmd, f"the API's pod data: preStop exec {cmd}")
        dur = _prestop_duration(report, name)
        secs = min(max(1, round(dur)), MAX_PRESTOP_S) if dur else None
        return Setting(f"sleep {secs:g}" if secs else None,
                       f"the API's pod data: preStop {cmd[:80]}; not run here (only sleep, nginx -s quit|stop and "
                       "kill -SIG 1 are), replayed as a sleep of its recorded length" if secs else
                       f"the API's pod data: preStop {cmd[:80]}; not run here and its length not recorded: left out")
    procs = [p for p in c.get("processes") or () if p.get("role") == "prestop"]
    if not procs:
        return Setting(None, "recorded: no preStop process")
    comm = str(procs[0].get("comm") or "")
    dur = _prestop_duration(report, name) or 0.0
    if comm == "nginx":
        return Setting("nginx -s quit", "recorded: a preStop exec of nginx that signalled the master "
                                        "(arguments are not recorded: taken as `nginx -s quit`)")
    secs = min(max(1, round(dur)), int(MAX_PRESTOP_S))
    if comm == "sleep":
        return Setting(f"sleep {secs}", f"recorded: preStop `sleep` ran {dur:.1f} s")
    return Setting(f"sleep {secs}", f"recorded: preStop {comm!r} ran {dur:.1f} s (replayed as a sleep of that length)")


def _capped(used: float, seen: float) -> str:
    return f" (capped from {seen:g} for the lab)" if used < seen else ""


def _prestop_duration(report: PodReport, container: str | None) -> float | None:
    c = next((c for c in report.containers if c.get("name") == container), None)
    procs = [p for p in (c or {}).get("processes") or () if p.get("role") == "prestop"]
    starts = [p["exec_t"] for p in procs if p.get("exec_t") is not None]
    ends = [p["exit_t"] for p in procs if p.get("exit_t") is not None]
    return max(ends) - min(starts) if starts and ends else None


def _wrapper(report: PodReport, c: dict[str, Any] | None) -> Setting:
    pid1 = (c or {}).get("pid1") or {}
    if pid1.get("role") != "shell":
        return Setting("none", f"recorded: PID 1 is {pid1.get('comm') or 'the app'} (exec form)" if pid1
                       else "default: PID 1 not recorded")
    caught = any(e.get("handler") == "handler" for e in _timeline(report, "stop_signal", _name(c)))
    if caught:
        return Setting("sh-trap", f"recorded: PID 1 is the shell {pid1.get('comm')}, which caught the stop signal")
    return Setting("sh", f"recorded: PID 1 is the shell {pid1.get('comm')}, the stop signal dropped")


def _grace(report: PodReport, lc: dict[str, dict[str, Any]]) -> Setting:
    for event, what in ((lifecycle.POD_DELETED, "the deletion's grace period (API)"),
                        (lifecycle.POD_SEEN, "terminationGracePeriodSeconds (API)")):
        g = lc.get(event, {}).get("grace_period_s")
        if isinstance(g, (int, float)) and not isinstance(g, bool) and 0 <= g <= 86400:
            return Setting(min(float(g), MAX_GRACE_S), what + _capped(min(float(g), MAX_GRACE_S), float(g)))
    kills = [e for e in report.timeline if e.get("sig") == "SIGKILL" and "runtime" in str(e.get("sender"))]
    deleted = _deleted_t(report)
    if kills and deleted is not None:
        g = max(0.0, round(kills[0]["t"] - deleted))
        return Setting(float(g), f"recorded: the runtime's SIGKILL at {_t(kills[0]['t'])}, {g:g} s after the deletion")
    return Setting(DEFAULTS.grace_s, "default: no grace period in the recording and no SIGKILL at its end "
                                     "(the API's default, 30 s)")


def _deleted_t(report: PodReport) -> float | None:
    return next((e["t"] for e in _timeline(report, "lifecycle") if e.get("text") == "pod deleted"), None)


def _stop_start(report: PodReport, c: dict[str, Any]) -> float | None:
    """When the kubelet began stopping the container: its preStop, else its stop signal."""
    starts = [p["exec_t"] for p in c.get("processes") or () if p.get("role") == "prestop" and p.get("exec_t") is not None]
    if starts:
        return min(starts)
    sig = c.get("stop_signal") or {}
    return sig.get("t")


def _stop_order(report: PodReport, by_app: dict[str, dict[str, Any]]) -> tuple[Setting, Setting]:
    starts = {app: _stop_start(report, c) for app, c in by_app.items()}
    known = {a: t for a, t in starts.items() if t is not None}
    if len(known) < 2:
        return (Setting(None, "default: in parallel, as the kubelet stops containers"),
                Setting(0.0, "default: in parallel"))
    first, second = sorted(known, key=known.get)
    gap = known[second] - known[first]
    if gap < PARALLEL_S:
        return (Setting(None, f"recorded: both containers' stops began within {gap:.2f} s (in parallel)"),
                Setting(0.0, "recorded: in parallel"))
    return (Setting([first, second], f"recorded: {first} stopped first, {second} {gap:.1f} s later"),
            Setting(min(round(gap, 1), MAX_GRACE_S), f"recorded: {gap:.1f} s between the containers' stops"))


def _request_ms(report: PodReport, workers: int, concurrency: int) -> Setting:
    """Request duration from connection lifetimes: FastCGI connections carry one request each
    (nginx opens one per request), so a whole one seen is a request; else client connections."""
    # a keep-alive connection carries many requests: its lifetime is not one request's
    keepalive = any(v.id == "keepalive-close-race" for v in report.verdicts)
    for cls in ("upstream",) if keepalive else ("upstream", "serving"):
        whole = [c["end_t"] - c["start_t"] for c in report.connections
                 if c.get("port_class") == cls and c.get("start_t") is not None and c.get("end_t") is not None
                 and c.get("close_kind") == "fin" and not c.get("at_exit")]
        if whole:
            ms = min(max(int(math.ceil(max(whole) * 10)) * 100, 100), MAX_REQUEST_MS)
            return Setting(ms, f"recorded: the longest of {len(whole)} whole {cls} connection(s) "
                               f"({max(whole):.2f} s)" + _capped(ms, max(whole) * 1000))
    # FastCGI requests in flight at the stop that then finished: the longest rest is most of a request
    rest = [c["end_t"] for c in report.connections if c.get("port_class") == "upstream" and c.get("start_t") is None
            and c.get("end_t") is not None and c["end_t"] > 0 and c.get("close_kind") == "fin" and not c.get("at_exit")]
    if rest:
        # more requests than children: they queued, and the last one waited for the ones before it
        share = min(1.0, workers / concurrency) if concurrency else 1.0
        ms = min(max(100, int(math.ceil(max(rest) * share * 10)) * 100), MAX_REQUEST_MS)
        queued = f", {concurrency} requests on {workers} child(ren) queued" if share < 1 else ""
        return Setting(ms, f"recorded: {len(rest)} FastCGI request(s) in flight at the stop finished up to "
                           f"{max(rest):.2f} s later{queued}")
    cut = [c["end_t"] - max(c["start_t"] or 0.0, 0.0) for c in report.connections
           if c.get("end_t") is not None and (c.get("close_kind") != "fin" or c.get("at_exit"))]
    floor = max(cut, default=0.0)
    if floor * 1000 * 2 > DEFAULTS.request_ms:
        # cut ones had run at least `floor`; twice that keeps them in flight past the same deadline
        ms = min(int(math.ceil(floor * 2 * 10)) * 100, MAX_REQUEST_MS)
        return Setting(ms, f"recorded: requests were cut after at least {floor:.1f} s; replayed as twice that")
    return Setting(DEFAULTS.request_ms, "default: no whole request seen (the stop cut them), the lab's "
                                        f"{DEFAULTS.request_ms} ms")


def _concurrency(report: PodReport) -> Setting:
    """Requests in flight at the stop: FastCGI connections open then (one per request), else client
    connections (which also count ones queued behind a busy nginx)."""
    def open_at(cls: str) -> int:
        return sum(1 for c in report.connections if c.get("port_class") == cls
                   and (c.get("start_t") is None or c["start_t"] <= 0) and (c.get("end_t") is None or c["end_t"] >= 0))
    counts = [(n, cls) for cls in ("upstream", "serving") if (n := open_at(cls))]
    if counts:
        n, cls = min(counts)
        what = "FastCGI requests" if cls == "upstream" else "client connections"
        return Setting(min(n, MAX_CONCURRENCY), f"recorded: {n} {what} open at the stop")
    return Setting(DEFAULTS.concurrency, f"default: no client connection open at the stop was recorded "
                                         f"(the lab's {DEFAULTS.concurrency})")


def _workers(by_app: dict[str, dict[str, Any]]) -> Setting:
    counts = {role: sum(1 for c in by_app.values() for p in c.get("processes") or () if p.get("role") == role)
              for role in ("nginx-worker", "fpm-child")}
    n = max(counts.values())
    if n:
        return Setting(min(n, MAX_WORKERS), f"recorded: {counts['nginx-worker']} nginx worker(s), "
                                            f"{counts['fpm-child']} php-fpm child(ren)")
    return Setting(DEFAULTS.workers, f"default: no workers recorded (the lab's {DEFAULTS.workers})")


def _lb_delay(events: pd.DataFrame, report: PodReport, lc: dict[str, dict[str, Any]],
              meta: dict[str, Any] | None) -> Setting:
    """How long the balancer kept sending after the deletion: the last connection attempt the pod
    saw (accepted or refused) or, from the API, when the endpoint was taken out."""
    deleted = _deleted_t(report)
    origin = deleted if deleted is not None else 0.0
    seen: list[tuple[float, str]] = []
    starts = [c["start_t"] for c in report.connections if c.get("port_class") == "serving" and c.get("start_t") is not None]
    if starts:
        seen.append((max(starts), "the last client connection accepted"))
    refused = _last_refused(events, report)
    if refused is not None:
        seen.append((refused, "the last connection attempt refused"))
    if seen:
        t, what = max(seen)
        lag = min(max(0.1, round(t - origin + 0.05, 1)), MAX_LAG_S)
        return Setting(lag, f"recorded: {what} at {_t(t)}, {lag:g} s after the deletion")
    caps = set((meta or {}).get("capabilities") or ())
    if {C.TCP_STATES, C.KERNEL_RESETS} <= caps and deleted is not None:
        # the kernel shows every attempt, accepted or refused: none means the balancer had let go
        return Setting(0.0, "recorded: no connection attempt after the deletion, accepted or refused")
    ep = [d["ts"] for e, d in lc.items() if e in (lifecycle.ENDPOINTS_NOT_READY, lifecycle.ENDPOINTS_TERMINATING,
                                                   lifecycle.ENDPOINTS_REMOVED)]
    deleted_ts = lc.get(lifecycle.POD_DELETED, {}).get("ts")
    if ep and deleted_ts is not None:
        lag = min(max(0.1, round(min(ep) - deleted_ts, 1)), MAX_LAG_S)
        return Setting(lag, f"the API: the endpoint left the Service {lag:g} s after the deletion "
                            "(this node's view; cloud balancers may learn later)")
    return Setting(DEFAULTS.lb_delay_s, "default: no traffic after the deletion recorded (the lab's "
                                        f"{DEFAULTS.lb_delay_s:g} s; real balancers take 5-15 s)")


def _last_refused(events: pd.DataFrame, report: PodReport) -> float | None:
    """The last refused attempt on the pod's serving ports, relative to the report's t0 (the
    timeline lists only the first refusals; the events hold them all)."""
    ports = {e.get("port") for e in report.timeline if e.get("type") == "refused" and e.get("port_class") == "serving"}
    if not ports or report.t0 is None or "kind" not in events:
        return None
    r = events[(events["kind"] == schema.TCP_RESET_SENT) & (events["pod_uid"] == report.pod_uid)
               & events["old_state"].isna() & events["sport"].isin(list(ports))]
    return float(r["ts"].max()) - report.t0 if len(r) else None


def _signals_to(report: PodReport, container: str | None, sig: str, target: str) -> list[dict[str, Any]]:
    return [e for e in report.timeline if e.get("type") in ("signal", "stop_signal") and e.get("sig") == sig
            and e.get("container") == container and target in str(e.get("target"))]


def _process_control_timeout(report: PodReport, c: dict[str, Any] | None, request_ms: int) -> Setting:
    """php-fpm's process_control_timeout: after a QUIT, the master waits that long for its children
    and then sends them SIGTERM: the gap shows it."""
    name = _name(c)
    quits = _signals_to(report, name, "SIGQUIT", "php-fpm master")
    if not quits:
        return Setting(DEFAULTS.process_control_timeout_s,
                       "default: php-fpm got no QUIT, so its process_control_timeout never applied (0)")
    q = quits[0]["t"]
    # the runtime's SIGKILL at the grace deadline ends the wait whatever the timeout
    killed = min((e["t"] for e in report.timeline if e.get("sig") == "SIGKILL" and e.get("container") == name
                  and "runtime" in str(e.get("sender")) and e["t"] > q), default=None)
    later = [e["t"] for e in report.timeline if e.get("type") == "signal" and e.get("container") == name
             and "php-fpm master" in str(e.get("sender")) and e.get("sig") in ("SIGTERM", "SIGKILL") and e["t"] > q
             and (killed is None or e["t"] < killed - 0.05)]
    if later and min(later) - q >= 0.5:
        gap = min(max(1, round(min(later) - q)), int(MAX_GRACE_S))
        return Setting(gap, f"recorded: the master signalled its children {min(later) - q:.1f} s after the QUIT")
    # no escalation: the timeout was longer than the wait (0, php-fpm's default, escalates at once)
    if killed is not None:
        longer = min(int(math.ceil(killed - q)) + 1, int(MAX_GRACE_S))
        return Setting(longer, f"recorded: the children were still draining {killed - q:.1f} s after the QUIT, "
                               f"when the grace period's SIGKILL came: replayed as {longer} s")
    longer = int(math.ceil(request_ms / 1000)) + 1
    return Setting(longer, "recorded: after the QUIT the children finished on their own, so the timeout was "
                           f"longer than their requests: replayed as the longest request + 1 s ({longer} s)")


def _worker_shutdown_timeout(report: PodReport, c: dict[str, Any] | None) -> Setting:
    """nginx's worker_shutdown_timeout: the recorded verdict names the QUIT -> cut gap."""
    v = next((v for v in report.verdicts if v.id == "nginx-shutdown-timeout" and v.status == "confirmed"), None)
    quits = _signals_to(report, _name(c), "SIGQUIT", "nginx master")
    if v is None or not quits:
        return Setting(None, "default: no worker_shutdown_timeout fired (unset, nginx's default)")
    q = quits[-1]["t"]
    exits = [p["exit_t"] for p in (c or {}).get("processes") or ()
             if p.get("role") == "nginx-worker" and p.get("exit_t") is not None and p["exit_t"] > q]
    if exits:
        gap = min(max(0.5, round(max(exits) - q, 1)), MAX_GRACE_S)
        return Setting(gap, f"recorded: workers cut their connections and exited {gap:g} s after the QUIT")
    return Setting(None, "default: the timeout's length is not visible in the recording (unset)")


def _keepalive(report: PodReport) -> Setting:
    if any(v.id == "keepalive-close-race" and v.status == "confirmed" for v in report.verdicts):
        return Setting(300, "recorded: a balancer's keep-alive pool (keepalive-close-race); the idle time "
                            "between its requests is not recorded: 300 ms")
    return Setting(None, "recorded: clients opened a connection per request (no keep-alive race)")


def _t(t: Any) -> str:
    return f"{t:+.3f} s" if isinstance(t, (int, float)) else "?"


def as_argv(values: dict[str, Any]) -> str:
    """The `sigtrace lab` command line that runs these settings (for the text output)."""
    out = ["sigtrace lab"]
    for app in (NGINX, FPM):
        if values.get(f"prestop.{app}"):
            out.append(f"--prestop {app}={shlex.quote(values[f'prestop.{app}'])}")
        out.append(f"--stop-signal {app}={values[f'stop_signal.{app}']}")
    out.append(f"--grace {values['grace_s']:g}")
    if values["wrapper"] != "none":
        out.append(f"--wrapper {values['wrapper']}")
    if values["stop_order"]:
        out.append(f"--stop-order {','.join(values['stop_order'])} --stop-delay {values['stop_delay_s']:g}")
    if values["process_control_timeout_s"]:
        out.append(f"--process-control-timeout {values['process_control_timeout_s']}")
    if values["worker_shutdown_timeout_s"]:
        out.append(f"--worker-shutdown-timeout {values['worker_shutdown_timeout_s']:g}")
    if values["keepalive_idle_ms"]:
        out.append(f"--keepalive-idle-ms {values['keepalive_idle_ms']}")
    out.append(f"--request-ms {values['request_ms']} --concurrency {values['concurrency']} "
               f"--lb-delay {values['lb_delay_s']:g} --workers {values['workers']}")
    return " ".join(out)

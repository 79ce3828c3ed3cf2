"""The fixes the verdicts name, applied to the learned settings with the recording's own numbers.

Each verdict's fix (the catalog's `fix` text) becomes concrete: a preStop sleep longer than the
measured balancer lag, drain limits above the measured requests, a grace period that covers
preStop plus drain. Only what a verdict asks for changes, plus the grace period when the new
preStop and drain no longer fit in it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .learn import FPM, NGINX

MARGIN_S = 2          # kept beyond every measured time: the kubelet's own minimum after a preStop is 2 s


@dataclass
class Change:
    setting: str
    before: Any
    after: Any
    because: tuple[str, ...]        # verdict ids
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "before": self.before, "after": self.after,
                "because": list(self.because), "why": self.why}


def _sleep_s(cmd: str | None) -> float:
    m = re.match(r"^sleep\s+(\d+(?:\.\d+)?)s?$", (cmd or "").strip())
    return float(m.group(1)) if m else 0.0


def apply_fixes(values: dict[str, Any], verdicts: set[str]) -> tuple[dict[str, Any], list[Change]]:
    """(fixed settings, what changed and why) for the verdicts seen (recorded or replayed)."""
    fixed = dict(values)
    changes: list[Change] = []

    def change(setting: str, after: Any, because: tuple[str, ...], why: str) -> None:
        hit = tuple(v for v in because if v in verdicts)
        if not hit or fixed[setting] == after:
            return
        changes.append(Change(setting, fixed[setting], after, hit, why))
        fixed[setting] = after

    lag = float(values["lb_delay_s"])
    request_s = values["request_ms"] / 1000
    drain = int(math.ceil(request_s)) + 1                   # the longest request, and a second
    hold = int(math.ceil(lag)) + 1                          # outlast the balancer's lag

    # the app must get the signal: exec form instead of a wrapper
    change("wrapper", "none", ("pid1-signal-ignored", "signal-not-forwarded"),
           "exec form (the app is PID 1) so the stop signal reaches it")
    # nginx: graceful stop, and keep serving until the balancer has let go
    change("stop_signal.nginx", "SIGQUIT", ("nginx-fast-shutdown", "prestop-quit-superseded"),
           "SIGQUIT is nginx's graceful stop: in-flight requests finish")
    if _sleep_s(fixed["prestop.nginx"]) < hold:
        change("prestop.nginx", f"sleep {hold}", ("endpoint-race", "keepalive-close-race", "prestop-quit-superseded"),
               f"keep serving {hold} s, past the balancer's measured {lag:g} s lag, before nginx is told to stop")
    sleep_change = next((c for c in changes if c.setting == "prestop.nginx"), None)
    if sleep_change is not None and fixed["stop_signal.nginx"] != "SIGQUIT":
        # after the preStop sleep the runtime's signal stops nginx: it must be the graceful one
        changes.append(Change("stop_signal.nginx", fixed["stop_signal.nginx"], "SIGQUIT", sleep_change.because,
                              "after the preStop sleep, the stop signal must be nginx's graceful stop (SIGQUIT)"))
        fixed["stop_signal.nginx"] = "SIGQUIT"
    if fixed["worker_shutdown_timeout_s"] is not None and fixed["worker_shutdown_timeout_s"] < drain:
        change("worker_shutdown_timeout_s", float(drain), ("nginx-shutdown-timeout",),
               f"above the longest request ({request_s:g} s)")
    # php-fpm: graceful stop with a drain limit, and up until nginx has drained
    change("stop_signal.php-fpm", "SIGQUIT", ("phpfpm-abrupt-stop",),
           "SIGQUIT is php-fpm's graceful stop: children finish their request")
    if fixed["stop_signal.php-fpm"] == "SIGQUIT" and fixed["process_control_timeout_s"] < drain:
        change("process_control_timeout_s", drain, ("phpfpm-abrupt-stop",),
               f"children get the longest request ({request_s:g} s) and a second to finish")
    nginx_done = _sleep_s(fixed["prestop.nginx"]) + drain
    fpm_first = fixed["stop_order"] and fixed["stop_order"][0] == FPM
    fpm_hold = nginx_done + (fixed["stop_delay_s"] if fpm_first else 0.0)
    fpm_hold = int(math.ceil(fpm_hold)) if "upstream-exited-first" in verdicts else _sleep_s(fixed["prestop.nginx"])
    if _sleep_s(fixed["prestop.php-fpm"]) < fpm_hold:
        change("prestop.php-fpm", f"sleep {fpm_hold:g}",
               ("upstream-exited-first", "phpfpm-abrupt-stop", "endpoint-race", "keepalive-close-race"),
               "php-fpm stays up while nginx still sends it requests" if "upstream-exited-first" in verdicts
               else "php-fpm keeps serving as long as nginx does")
    # the grace period must hold the preStop, the drain and the kubelet's margin
    need = max(_sleep_s(fixed["prestop.nginx"]), _sleep_s(fixed["prestop.php-fpm"])) + drain + MARGIN_S
    need += fixed["stop_delay_s"] if fixed["stop_order"] else 0.0
    need = float(math.ceil(need))
    if fixed["grace_s"] < need:
        # asked for by a grace verdict, or needed because the fixes above made the stop longer
        because = ("killed-after-grace", "prestop-exceeds-grace") + tuple(v for c in changes for v in c.because)
        change("grace_s", need, tuple(dict.fromkeys(because)),
               f"covers the preStop, the drain ({drain} s) and {MARGIN_S} s of margin")
    return fixed, changes


def pod_patch(fixed: dict[str, Any], changes: list[Change], containers: dict[str, str]) -> dict[str, Any]:
    """A strategic-merge patch for the pod template (`kubectl patch deployment NAME --patch-file`)."""
    changed = {c.setting for c in changes}
    spec: dict[str, Any] = {}
    if "grace_s" in changed:
        spec["terminationGracePeriodSeconds"] = int(math.ceil(fixed["grace_s"]))
    conts = []
    for app in (NGINX, FPM):
        entry: dict[str, Any] = {"name": containers.get(app, app)}
        lc: dict[str, Any] = {}
        if f"prestop.{app}" in changed:
            secs = _sleep_s(fixed[f"prestop.{app}"])
            lc["preStop"] = {"sleep": {"seconds": int(secs)}}
        if f"stop_signal.{app}" in changed:
            lc["stopSignal"] = fixed[f"stop_signal.{app}"]
        if lc:
            entry["lifecycle"] = lc
        if len(entry) > 1:
            conts.append(entry)
    if conts:
        spec["containers"] = conts
    return {"spec": {"template": {"spec": spec}}} if spec else {}


def config_lines(fixed: dict[str, Any], changes: list[Change]) -> dict[str, list[str]]:
    """What changes outside the manifest: nginx.conf, php-fpm.conf, the image."""
    changed = {c.setting for c in changes}
    out: dict[str, list[str]] = {}
    if "worker_shutdown_timeout_s" in changed:
        out.setdefault("nginx.conf (main context)", []).append(
            f"worker_shutdown_timeout {fixed['worker_shutdown_timeout_s']:g}s;")
    if "process_control_timeout_s" in changed:
        out.setdefault("php-fpm.conf ([global])", []).append(
            f"process_control_timeout = {fixed['process_control_timeout_s']}s")
    for app in (NGINX, FPM):
        if f"stop_signal.{app}" in changed:
            out.setdefault(f"{app} image (Dockerfile), where lifecycle.stopSignal is not available", []).append(
                f"STOPSIGNAL {fixed[f'stop_signal.{app}']}")
    if "wrapper" in changed:
        out.setdefault("nginx image (Dockerfile)", []).append(
            'CMD ["nginx", "-g", "daemon off;"]   # exec form: nginx is PID 1 (or `exec nginx ...` in the script)')
    return out

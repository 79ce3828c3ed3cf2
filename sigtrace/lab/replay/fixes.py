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


class _Fixer:
    """The settings being fixed and the list of what changed, each change with its verdicts."""

    def __init__(self, values: dict[str, Any], verdicts: set[str]):
        self.fixed = dict(values)
        self.verdicts = verdicts
        self.changes: list[Change] = []

    def set(self, setting: str, after: Any, because: tuple[str, ...], why: str) -> None:
        """Change a setting when one of `because` was seen (recorded or replayed)."""
        hit = tuple(dict.fromkeys(v for v in because if v in self.verdicts))
        if hit and self.fixed[setting] != after:
            self.changes.append(Change(setting, self.fixed[setting], after, hit, why))
            self.fixed[setting] = after

    def because(self, *settings: str) -> tuple[str, ...]:
        """The verdicts behind earlier changes of these settings (a change that follows from them)."""
        return tuple(dict.fromkeys(v for c in self.changes if c.setting in settings for v in c.because))


def apply_fixes(values: dict[str, Any], verdicts: set[str]) -> tuple[dict[str, Any], list[Change]]:
    """(fixed settings, what changed and why) for the verdicts seen (recorded or replayed).

    First what each verdict's fix names; then what those changes require to stay graceful (a
    signal that now reaches nginx must be its graceful one, php-fpm must outlive nginx's drain,
    the grace period must hold it all): the chain is only as good as its weakest step."""
    f = _Fixer(values, verdicts)
    lag = float(values["lb_delay_s"])
    request_s = values["request_ms"] / 1000
    drain = int(math.ceil(request_s)) + 1                   # the longest request, and a second
    # nginx drains what is in flight and what queued behind busy children
    rounds = max(1, math.ceil(values["concurrency"] / max(1, values["workers"])))
    drain_all = int(math.ceil(request_s * rounds)) + 1
    hold = int(math.ceil(lag)) + 1                          # outlast the balancer's lag
    all_seen = tuple(sorted(verdicts))

    # what the verdicts name
    f.set("wrapper", "none", ("pid1-signal-ignored", "signal-not-forwarded"),
          "exec form (the app is PID 1) so the stop signal reaches it")
    f.set("stop_signal.nginx", "SIGQUIT", ("nginx-fast-shutdown", "prestop-quit-superseded"),
          "SIGQUIT is nginx's graceful stop: in-flight requests finish")
    if _sleep_s(f.fixed["prestop.nginx"]) < hold:
        f.set("prestop.nginx", f"sleep {hold}", ("endpoint-race", "keepalive-close-race", "prestop-quit-superseded"),
              f"keep serving {hold} s, past the balancer's measured {lag:g} s lag, before nginx is told to stop")
    if f.fixed["worker_shutdown_timeout_s"] is not None and f.fixed["worker_shutdown_timeout_s"] < drain_all:
        f.set("worker_shutdown_timeout_s", float(drain_all), ("nginx-shutdown-timeout",),
              f"above the longest request ({request_s:g} s) and the ones queued behind it")
    f.set("stop_signal.php-fpm", "SIGQUIT", ("phpfpm-abrupt-stop",),
          "SIGQUIT is php-fpm's graceful stop: children finish their request")
    if "upstream-exited-first" in verdicts:
        fpm_first = bool(f.fixed["stop_order"]) and f.fixed["stop_order"][0] == FPM
        outlast = max(_sleep_s(f.fixed["prestop.nginx"]), hold) + drain_all + (f.fixed["stop_delay_s"] if fpm_first else 0)
        if _sleep_s(f.fixed["prestop.php-fpm"]) < outlast:
            f.set("prestop.php-fpm", f"sleep {int(math.ceil(outlast))}", ("upstream-exited-first",),
                  "php-fpm stays up until nginx has stopped sending it requests")

    # what those changes require
    reaches = f.because("wrapper")
    if reaches and _sleep_s(f.fixed["prestop.nginx"]) < hold:
        f.set("prestop.nginx", f"sleep {hold}", reaches,
              f"now that the signal reaches nginx, keep serving {hold} s past the balancer's {lag:g} s lag first")
    touched = f.because("wrapper", "prestop.nginx")
    if touched:
        f.set("stop_signal.nginx", "SIGQUIT", touched,
              "the signal that now stops nginx must be its graceful one (SIGQUIT)")
    nginx_done = _sleep_s(f.fixed["prestop.nginx"]) + drain_all
    if _sleep_s(f.fixed["prestop.php-fpm"]) < nginx_done:
        # phpfpm-abrupt-stop's own fix, and what any other fix needs: requests nginx drains go to php-fpm
        f.set("prestop.php-fpm", f"sleep {nginx_done:g}",
              ("phpfpm-abrupt-stop", "upstream-exited-first") + (all_seen if f.changes else ()),
              f"php-fpm keeps serving until nginx has drained (its preStop, then {drain_all} s of requests)")
    if f.changes:
        f.set("stop_signal.php-fpm", "SIGQUIT", all_seen,
              "requests nginx still passes on finish in php-fpm (graceful stop)")
    if f.fixed["stop_signal.php-fpm"] == "SIGQUIT" and f.fixed["process_control_timeout_s"] < drain:
        f.set("process_control_timeout_s", drain, f.because("stop_signal.php-fpm") or all_seen,
              f"children get the longest request ({request_s:g} s) and a second to finish")
    # the grace period must hold the preStop, the drain and the kubelet's margin
    need = max(_sleep_s(f.fixed["prestop.nginx"]), _sleep_s(f.fixed["prestop.php-fpm"])) + drain_all + MARGIN_S
    need = float(math.ceil(need + (f.fixed["stop_delay_s"] if f.fixed["stop_order"] else 0.0)))
    if f.fixed["grace_s"] < need:
        f.set("grace_s", need, ("killed-after-grace", "prestop-exceeds-grace") + (all_seen if f.changes else ()),
              f"covers the preStop, the drain ({drain_all} s) and {MARGIN_S} s of margin")
    return f.fixed, f.changes


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

"""A lab scenario: one pod (nginx + php-fpm), load through it, a deletion, and what happened.

run_scenario() is the library behind `sigtrace lab`: it validates the input, starts the pod,
drives load from inside the pod's netns, deletes the pod like kubelet + containerd (while
the "load balancer" keeps sending for lb_delay_s), and returns the client's view and each
container's stop outcome. Recording is pluggable (a Recorder: start/stop around the run),
so the scenario runs and tests without BPF too.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import LabError
from ..events import lifecycle, schema
from . import configs
from .load import LoadClient, LoadResult
from .pod import LocalPod, PodSpec, StopOutcome, normalize_signal

CONTAINERS = ("nginx", "php-fpm")
REQUIRED_TOOLS = ("runc", "nginx", configs.FPM_BIN, "ip")


@dataclass
class Scenario:
    """Everything a user can vary. Per-container maps are keyed by container name."""
    name: str = "lab"
    nginx_conf: Path | None = None            # a user's nginx.conf, else generated
    fpm_conf: Path | None = None              # a user's php-fpm.conf, else generated
    workers: int = 2                          # nginx worker_processes and fpm pm.max_children
    process_control_timeout_s: int = 0        # fpm (generated config only)
    worker_shutdown_timeout_s: float | None = None   # nginx (generated config only)
    keepalive_timeout_s: float = 65.0         # nginx keepalive_timeout (generated config only)
    prestop: dict[str, str] = field(default_factory=dict)        # name -> shell-like command line
    stop_signal: dict[str, str] = field(default_factory=dict)    # name -> SIGTERM/QUIT/...
    shell_wrapper: bool = False               # nginx as `sh -c 'nginx; exit $?'` (PID 1 = sh)
    wrapper: str = "none"                     # nginx PID 1: none, sh, sh-trap (configs.WRAPPERS)
    grace_s: float = 30.0
    stop_order: list[str] | None = None       # None: all containers in parallel (kubelet)
    stop_delay_s: float = 0.0                 # between containers when stop_order is given
    request_ms: int = 2000
    concurrency: int = 4
    lb_delay_s: float = 1.0                   # traffic keeps coming this long after deletion
    keepalive_idle_ms: int | None = None      # clients are a pool of keep-alive connections idling this long
    warmup_s: float = 1.0                     # load before the deletion, so requests are in flight
    layout: str = "cgroupfs"
    uid: str | None = None
    exec_probe_s: float | None = None         # an exec into every container this often (kubelet exec probes)

    def signal_of(self, container: str) -> str:
        return normalize_signal(self.stop_signal.get(container, "SIGTERM"))

    def prestop_of(self, container: str) -> list[str] | None:
        cmd = self.prestop.get(container)
        return shlex.split(cmd) if cmd else None

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["nginx_conf"] = str(self.nginx_conf) if self.nginx_conf else None
        d["fpm_conf"] = str(self.fpm_conf) if self.fpm_conf else None
        d["stop_signal"] = {c: self.signal_of(c) for c in CONTAINERS}
        return d


class Recorder(Protocol):
    """What the lab needs from a recorder. It starts before the pod (so it sees the containers'
    processes being made, which tells masters from workers), or once the pod runs when it
    needs_pids (strace attaches to processes); it stops after every container exited."""
    needs_pids: bool

    def start(self, out_dir: Path, pod: LocalPod | None) -> None: ...
    def stop(self) -> None: ...


@dataclass
class LabResult:
    scenario: Scenario
    pod_uid: str
    pod_name: str
    containers: dict[str, str]                # container id -> name
    deleted_at: float
    traffic_stopped_at: float | None
    outcomes: dict[str, StopOutcome]
    load: LoadResult
    out_dir: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario.describe(), "pod_uid": self.pod_uid, "pod_name": self.pod_name,
                "containers": self.containers, "deleted_at": self.deleted_at,
                "traffic_stopped_at": self.traffic_stopped_at,
                "outcomes": {k: v.as_dict() for k, v in self.outcomes.items()},
                "client": self.load.as_dict()}


def check_tools() -> None:
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found: sigtrace lab needs runc, nginx, php-fpm 8.2 and iproute2 "
                           "(make setup installs them)")


def validate(s: Scenario) -> None:
    """Reject bad input before anything is created."""
    for c in s.stop_signal:
        if c not in CONTAINERS:
            raise LabError(f"--stop-signal for unknown container {c!r}: use nginx=SIG or php-fpm=SIG")
        s.signal_of(c)
    for c in s.prestop:
        if c not in CONTAINERS:
            raise LabError(f"--prestop for unknown container {c!r}: use nginx='cmd' or php-fpm='cmd'")
        try:
            s.prestop_of(c)
        except ValueError as exc:
            raise LabError(f"--prestop {c}={s.prestop[c]!r} cannot be split into a command ({exc}): "
                           "check its quotes") from None
    for c in s.stop_order or []:
        if c not in CONTAINERS:
            raise LabError(f"--stop-order names unknown container {c!r}: use nginx,php-fpm")
    if s.wrapper not in configs.WRAPPERS:
        raise LabError(f"unknown --wrapper {s.wrapper!r}: use one of {', '.join(configs.WRAPPERS)}")
    if s.layout not in ("cgroupfs", "systemd"):
        raise LabError(f"unknown --layout {s.layout!r}: use cgroupfs or systemd")
    for label, value, low in (("--workers", s.workers, 1), ("--concurrency", s.concurrency, 1),
                              ("--grace", s.grace_s, 0), ("--request-ms", s.request_ms, 0),
                              ("--lb-delay", s.lb_delay_s, 0), ("--stop-delay", s.stop_delay_s, 0),
                              ("--keepalive-timeout", s.keepalive_timeout_s, 0),
                              ("--worker-shutdown-timeout", s.worker_shutdown_timeout_s or 0, 0),
                              ("--keepalive-idle-ms", s.keepalive_idle_ms or 0, 0),
                              ("--exec-probe", s.exec_probe_s if s.exec_probe_s is not None else 0.1, 0.1)):
        if value < low:
            raise LabError(f"{label} must be at least {low}, got {value}")
    for label, path in (("nginx config", s.nginx_conf), ("php-fpm config", s.fpm_conf)):
        if path is not None and not Path(path).is_file():
            raise LabError(f"{label} {path} not found: give an existing file")
    if s.uid is not None:
        try:
            uuid.UUID(s.uid)
        except ValueError:
            raise LabError(f"pod uid {s.uid!r} is not a UUID (like kubelet's): use e.g. {uuid.uuid4()}") from None
    if s.nginx_conf or s.fpm_conf:
        check_tools()
        _check_configs(s.nginx_conf, s.fpm_conf)


def _check_configs(nginx: Path | None, fpm: Path | None) -> None:
    """`nginx -t` / `php-fpm -t` on the config files the containers will use (run on the host:
    same binaries, same /etc)."""
    checks = []
    if nginx:
        checks.append(("nginx config", ["nginx", "-t", "-q", "-e", "stderr", "-c", str(Path(nginx).resolve())]))
    if fpm:
        checks.append(("php-fpm config", [configs.FPM_BIN, "-t", "-R", "-y", str(Path(fpm).resolve())]))
    for label, cmd in checks:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            lines = [l.strip() for l in (p.stderr + p.stdout).splitlines() if l.strip()]
            why = next((l for l in reversed(lines) if "emerg" in l or "ERROR" in l), lines[-1] if lines else "")
            raise LabError(f"{label} is invalid: {why}")


def build_pod_spec(s: Scenario, app: configs.AppFiles) -> PodSpec:
    containers = [
        configs.nginx_container(app, stop_signal=s.signal_of("nginx"), prestop=s.prestop_of("nginx"),
                                shell_wrapper=s.shell_wrapper, wrapper=s.wrapper),
        configs.fpm_container(app, stop_signal=s.signal_of("php-fpm"), prestop=s.prestop_of("php-fpm")),
    ]
    kw = {"uid": s.uid} if s.uid else {}
    return PodSpec(name=s.name, layout=s.layout, grace_period_s=s.grace_s, app_dir=app.root,
                   containers=containers, **kw)


def lifecycle_event(pod: LocalPod, event: str, ts: float, **detail: Any) -> dict:
    return schema.new_event(schema.POD_LIFECYCLE, ts, pod_uid=pod.uid, event=event, pod_name=pod.spec.name,
                            namespace=pod.spec.namespace, detail=json.dumps(detail, sort_keys=True))


def run_scenario(s: Scenario, out_dir: Path | None = None, recorder: Recorder | None = None,
                 on_event=None) -> LabResult:
    """Run one scenario end to end. on_event(dict) receives the lab's pod_lifecycle events
    (written by the caller into the recording). Nothing is left behind, even on failure."""
    validate(s)
    check_tools()
    with tempfile.TemporaryDirectory(prefix="sigtrace-lab-app-") as tmp:
        app = configs.write_app_dir(
            Path(tmp) / "app",
            nginx=Path(s.nginx_conf) if s.nginx_conf else configs.nginx_conf(
                workers=s.workers, worker_shutdown_timeout_s=s.worker_shutdown_timeout_s,
                keepalive_timeout_s=s.keepalive_timeout_s),
            fpm=Path(s.fpm_conf) if s.fpm_conf else configs.fpm_conf(
                children=s.workers, process_control_timeout_s=s.process_control_timeout_s))
        _check_configs(app.nginx_conf, app.fpm_conf)
        spec = build_pod_spec(s, app)
        emit = on_event or (lambda e: None)
        early = recorder is not None and not recorder.needs_pids
        if early:
            recorder.start(out_dir, None)
        try:
            with LocalPod(spec) as pod:
                emit(lifecycle_event(pod, lifecycle.POD_SEEN, time.time(), containers=pod.container_names(),
                                     grace_period_s=s.grace_s,
                                     prestop={c: s.prestop[c] for c in s.prestop if s.prestop[c]},
                                     stop_signal={c: s.signal_of(c) for c in CONTAINERS}, lab=True,
                                     # a bare pod (no controller), as the API watcher describes one
                                     owner=None, disruption=None))
                if recorder is not None and not early:
                    recorder.start(out_dir, pod)
                result = _drive(s, pod, emit)
                if recorder is not None:
                    recorder.stop()
        finally:
            if recorder is not None:
                recorder.stop()      # idempotent; after a failure too (then after the pod cleanup)
    result.out_dir = out_dir
    return result


class ExecProber:
    """What the kubelet does for `exec` liveness/readiness probes (and what `kubectl exec` does): a
    `runc exec` into every container every period_s, from before the deletion until the container
    is gone (readiness probes keep running while a pod terminates). A probe into a stopping
    container fails; like the kubelet, it tries again next period."""

    PROBE = ["true"]

    def __init__(self, pod: LocalPod, period_s: float):
        self.pod, self.period_s = pod, period_s
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kubelet-exec-probes", daemon=True)

    def __enter__(self) -> "ExecProber":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.period_s + 35)

    def _loop(self) -> None:
        while True:
            for name in self.pod.container_names().values():
                if self.pod.is_running(name):
                    self.pod.exec(name, self.PROBE, timeout=10)
                    self.runs += 1
            if self._stop.wait(self.period_s):
                return


def _drive(s: Scenario, pod: LocalPod, emit) -> LabResult:
    """Load on, delete (stop like the kubelet), keep load for lb_delay_s, then wait for the end."""
    if s.exec_probe_s:
        with ExecProber(pod, s.exec_probe_s):
            return _drive_load(s, pod, emit)
    return _drive_load(s, pod, emit)


def _drive_load(s: Scenario, pod: LocalPod, emit) -> LabResult:
    with LoadClient(pod.netns, request_ms=s.request_ms, concurrency=s.concurrency,
                    timeout_s=s.request_ms / 1000 + s.grace_s + 5,
                    max_duration_s=s.warmup_s + s.lb_delay_s + s.grace_s + 30, workdir=pod.workdir,
                    keepalive_idle_ms=s.keepalive_idle_ms) as load:
        load.start()
        time.sleep(s.warmup_s)
        deleted = time.time()
        emit(lifecycle_event(pod, lifecycle.POD_DELETED, deleted, grace_period_s=s.grace_s, lab=True, owner=None,
                             disruption=None))
        outcomes: dict[str, StopOutcome] = {}
        errors: list[BaseException] = []

        def stopper() -> None:
            try:
                outcomes.update(pod.stop(order=s.stop_order, delay_s=s.stop_delay_s))
            except BaseException as exc:   # surfaced in the main thread below
                errors.append(exc)

        t = threading.Thread(target=stopper, name="kubelet-stop")
        t.start()
        # The load balancer learns about the deletion lb_delay_s later, whatever the pod does
        # meanwhile: attempts on a pod that is already gone are the endpoint race.
        time.sleep(max(0.0, deleted + s.lb_delay_s - time.time()))
        stopped = load.stop_sending()
        emit(lifecycle_event(pod, lifecycle.TRAFFIC_STOPPED, stopped, lb_delay_s=s.lb_delay_s, lab=True))
        t.join()
        if errors:
            raise errors[0]
        client = load.wait()
    return LabResult(s, pod.uid, pod.spec.name, pod.container_names(), deleted, stopped, outcomes, client)

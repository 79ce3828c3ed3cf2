"""A local pod: real runc containers in kubelet-style cgroups, sharing one network namespace,
stopped exactly the way kubelet + containerd stop a pod.

    spec = PodSpec(name="web", containers=[ContainerSpec("nginx", ["nginx"], ready_ports=(8080,))])
    with LocalPod(spec) as pod:
        pod.container_id("nginx"), pod.pid1("nginx"), pod.netns
        outcomes = pod.stop()          # preStop, STOPSIGNAL, grace, KILL: like the kubelet

What is real and what is modelled:
- each container is `runc run -d` (Debian's runc) with its own PID/mount/IPC/UTS namespaces,
  all joined to one netns we create (`ip netns add`), like the pause container's;
- cgroupsPath is the kubelet's, cgroupfs or systemd layout (runc's cgroupfs driver creates
  the systemd-style path literally since systemd is not running);
- this process makes itself a child subreaper, so each container's init is re-parented to
  us when `runc run -d` exits: we play containerd-shim and collect its exit status;
- stop: preStop via `runc exec`, then `runc kill <id> <STOPSIGNAL>` (sender comm = runc, to
  PID 1 only), wait out the rest of the grace period, then `runc kill --all <id> KILL`.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import LabError
from ..pods.proc import children, is_alive, mountinfo, read_status, tcp_sockets
from ..pods.sockets import socket_inodes
from .netns import NETNS_DIR, in_netns

CGROUP_ROOT = Path("/sys/fs/cgroup")
WORK_PREFIX = "sigtrace-lab-"
MIN_GRACE_AFTER_PRESTOP_S = 2.0   # kubelet's minimumGracePeriodInSeconds
PR_SET_CHILD_SUBREAPER = 36

Layout = Literal["cgroupfs", "systemd"]

# Docker's default capability set: nginx/php-fpm masters need SETUID/SETGID to drop workers.
_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
         "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
         "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
_HOST_RO = ("usr", "etc", "lib", "lib64", "bin", "sbin")
_TMPFS = ("/tmp", "/run", "/var/lib/nginx", "/run/php")


@dataclass
class Mount:
    """A read-only bind mount of a host file or dir into a container."""
    source: str
    destination: str
    readonly: bool = True


@dataclass
class ContainerSpec:
    name: str
    args: list[str]
    stop_signal: str = "SIGTERM"
    prestop: list[str] | None = None
    ready_ports: tuple[int, ...] = ()          # TCP ports that must LISTEN in the pod netns
    mounts: list[Mount] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class PodSpec:
    name: str = "lab"
    containers: list[ContainerSpec] = field(default_factory=list)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    layout: Layout = "cgroupfs"
    qos: str = "burstable"
    namespace: str = "default"
    grace_period_s: float = 30.0
    app_dir: Path | None = None                # mounted read-only at /lab in every container
    ready_timeout_s: float = 15.0


@dataclass
class StopOutcome:
    """What happened to one container during stop(). Times are epoch seconds."""
    container: str
    container_id: str
    stop_signal: str
    prestop: list[str] | None = None
    prestop_start: float | None = None
    prestop_end: float | None = None
    prestop_rc: int | None = None
    stop_sent: float | None = None
    kill_sent: float | None = None             # runc kill --all KILL at grace end, if needed
    exited: float | None = None
    exit_code: int | None = None               # exit status, when it exited normally
    exit_signal: int | None = None             # fatal signal number, when killed by a signal

    @property
    def killed(self) -> bool:
        return self.kill_sent is not None

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["killed"] = self.killed
        return d


def _signum(name: str) -> int:
    name = name.upper()
    return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])


def normalize_signal(name: str) -> str:
    """'term', 'TERM', 'SIGTERM', '15' -> 'SIGTERM'; unknown -> LabError."""
    try:
        return signal.Signals(int(name)).name if name.isdigit() else signal.Signals(_signum(name)).name
    except (ValueError, KeyError):
        raise LabError(f"unknown signal {name!r}: use a name like SIGTERM, TERM or QUIT") from None


def cgroups_path(layout: Layout, pod_uid: str, container_id: str, qos: str = "burstable") -> str:
    """The kubelet's cgroup path for a container (what containerd passes to runc)."""
    if layout == "cgroupfs":
        return f"/kubepods/{qos}/pod{pod_uid}/{container_id}"
    if layout == "systemd":
        u = pod_uid.replace("-", "_")
        return (f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice"
                f"/cri-containerd-{container_id}.scope")
    raise LabError(f"unknown cgroup layout {layout!r}: use cgroupfs or systemd")


def _pod_cgroup(cg_path: str) -> str:
    return cg_path.rsplit("/", 1)[0]


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy root: v1 controllers (co-mounted ones once) and unified."""
    roots = []
    for entry in sorted(CGROUP_ROOT.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and (entry / "cgroup.procs").exists():
            roots.append(entry)
    if (CGROUP_ROOT / "cgroup.procs").exists():     # pure v2
        roots.append(CGROUP_ROOT)
    return roots


def _run(args: list[str], *, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise LabError(f"{args[0]} not found: install it (make setup) and retry") from None
    if check and p.returncode != 0:
        msg = (p.stderr or p.stdout).strip().splitlines()
        raise LabError(f"{' '.join(args[:3])} failed: {msg[-1] if msg else f'exit {p.returncode}'}")
    return p


def _set_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise LabError(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")


def listening_ports(pid: int, owners: list[int] | None = None) -> set[int]:
    """TCP ports in LISTEN in the network namespace of pid (read from its /proc/<pid>/net),
    only those whose socket is held by one of owners when given (a port bound by another
    container of the same netns does not make this one ready)."""
    inodes = set().union(*(socket_inodes(o) for o in owners)) if owners is not None else None
    return {port for _addr, port, ino in tcp_sockets(pid) if inodes is None or ino in inodes}


def _nspid_depth(pid: int) -> int | None:
    """How many PID namespaces pid is in (None when it is gone)."""
    st = read_status(pid)
    return None if st is None else len(st.nspid) or 1


def reap_container_orphans(skip: set[int]) -> list[int]:
    """Reap our children that live in a deeper PID namespace (container processes re-parented
    to us, the subreaper: e.g. a preStop's process whose `runc exec` was killed at the grace
    timeout). containerd-shim does the same. Unreaped, such a zombie blocks the container's
    PID 1 from finishing its exit (the kernel waits for the namespace to empty), so the
    container would never be seen to exit. Children in our own namespace (subprocess's) are
    left alone: their Popen waits for them."""
    me = os.getpid()
    mine = _nspid_depth(me) or 1
    reaped = []
    for pid in children(me):
        if pid in skip:
            continue
        depth = _nspid_depth(pid)
        if depth is None or depth <= mine:
            continue
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped.append(pid)
        except (OSError, ChildProcessError):
            continue
    return reaped


class _Container:
    """Runtime state of one container (the shim's view)."""

    def __init__(self, spec: ContainerSpec, cid: str, cg_path: str, bundle: Path):
        self.spec = spec
        self.id = cid
        self.cg_path = cg_path
        self.bundle = bundle
        self.pid1: int | None = None
        self.exited = threading.Event()
        self.exit_time: float | None = None
        self.status: int | None = None      # raw wait status
        self._reaper: threading.Thread | None = None

    def start_reaper(self) -> None:
        self._reaper = threading.Thread(target=self._reap, name=f"reap-{self.spec.name}", daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        assert self.pid1
        try:
            _, status = os.waitpid(self.pid1, 0)
            self.status = status
        except ChildProcessError:
            # Not our child (subreaper unavailable): poll, without an exit status.
            while is_alive(self.pid1):
                time.sleep(0.02)
        self.exit_time = time.time()
        self.exited.set()


class LocalPod:
    """Context manager: a running pod; everything it made is removed on exit, even half-made."""

    def __init__(self, spec: PodSpec, *, runc: str = "runc", keep_logs: bool = False):
        if not spec.containers:
            raise LabError("a pod needs at least one container")
        names = [c.name for c in spec.containers]
        if len(set(names)) != len(names):
            raise LabError(f"container names must be unique: {names}")
        self.spec = spec
        self.runc = runc
        self.keep_logs = keep_logs
        self.netns = f"sigtrace-{spec.uid[:8]}"
        # Made in _start, so a spec rejected here leaves nothing behind.
        self.workdir = Path(tempfile.gettempdir()) / f"{WORK_PREFIX}{spec.uid[:8]}-{secrets.token_hex(3)}"
        self._containers: dict[str, _Container] = {}
        for c in spec.containers:
            normalize_signal(c.stop_signal)
            cid = secrets.token_hex(32)   # 64 hex chars, like containerd's ids
            self._containers[c.name] = _Container(
                c, cid, cgroups_path(spec.layout, spec.uid, cid, spec.qos), self.workdir / c.name)
        self.stopped: dict[str, StopOutcome] = {}
        self._made_netns = False
        self._sweeping = threading.Event()
        self._sweeper: threading.Thread | None = None

    # --- public API -------------------------------------------------------------------
    @property
    def uid(self) -> str:
        return self.spec.uid

    @property
    def netns_path(self) -> str:
        return str(NETNS_DIR / self.netns)

    def container_id(self, name: str) -> str:
        return self._get(name).id

    def container_names(self) -> dict[str, str]:
        """container id -> name (for pod_seen events)."""
        return {c.id: name for name, c in self._containers.items()}

    def cgroup_path(self, name: str) -> str:
        return self._get(name).cg_path

    def pid1(self, name: str) -> int:
        c = self._get(name)
        if c.pid1 is None:
            raise LabError(f"container {name} is not running")
        return c.pid1

    def pids(self, name: str) -> list[int]:
        """Host pids of every process in the container (from its cgroup)."""
        c = self._get(name)
        for root in cgroup_hierarchies():
            procs = root / c.cg_path.lstrip("/") / "cgroup.procs"
            if procs.exists():
                return sorted(int(x) for x in procs.read_text().split())
        return []

    def log(self, name: str) -> str:
        """The container's stdout+stderr so far."""
        path = self._get(name).bundle / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def exec(self, name: str, args: list[str], *, timeout: float = 30) -> subprocess.CompletedProcess:
        """`runc exec` into a container (how the kubelet runs exec probes and hooks)."""
        return _run([self.runc, "exec", self.container_id(name), *args], timeout=timeout, check=False)

    def is_running(self, name: str) -> bool:
        return not self._get(name).exited.is_set()

    def __enter__(self) -> "LocalPod":
        try:
            self._start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        problems = self.cleanup()
        if problems:   # say what is left, so a leftover is never silent
            print(f"sigtrace lab: cleanup of pod {self.uid} left: {'; '.join(problems)}", file=sys.stderr)

    def stop(self, order: list[str] | None = None, delay_s: float = 0.0,
             grace_period_s: float | None = None) -> dict[str, StopOutcome]:
        """Stop like kubelet + containerd. Without order: all containers in parallel (what the
        kubelet does). With order: start each container's stop delay_s after the previous one's.
        Returns container name -> StopOutcome once every container has exited."""
        grace = self.spec.grace_period_s if grace_period_s is None else grace_period_s
        names = order or list(self._containers)
        unknown = set(names) - set(self._containers)
        if unknown:
            raise LabError(f"unknown container(s) in stop order: {sorted(unknown)}")
        names += [n for n in self._containers if n not in names]
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            futures = {}
            for i, name in enumerate(names):
                if order and i and delay_s > 0:
                    time.sleep(delay_s)
                futures[name] = pool.submit(self._stop_one, name, grace)
            self.stopped = {name: f.result() for name, f in futures.items()}
        return self.stopped

    # --- start --------------------------------------------------------------------------
    def _get(self, name: str) -> _Container:
        try:
            return self._containers[name]
        except KeyError:
            raise LabError(f"no container {name!r} in pod {self.spec.name}") from None

    def _start(self) -> None:
        if shutil.which(self.runc) is None:
            raise LabError(f"{self.runc} not found: install Debian's runc (make setup)")
        _set_subreaper()
        self.workdir.mkdir(mode=0o700)
        self._sweeper = threading.Thread(target=self._sweep, name="reap-orphans", daemon=True)
        self._sweeper.start()
        if (NETNS_DIR / self.netns).exists():
            raise LabError(f"network namespace {self.netns} already exists: another pod with this uid runs")
        _run(["ip", "netns", "add", self.netns])
        self._made_netns = True
        _run(in_netns(self.netns, ["ip", "link", "set", "lo", "up"]))
        for c in self._containers.values():
            self._write_bundle(c)
            log = open(c.bundle / "log", "ab")
            try:
                # Never a pipe as stdio: the container keeps it open and `runc run -d` blocks.
                p = subprocess.run([self.runc, "run", "-d", "--pid-file", str(c.bundle / "pid"),
                                    "-b", str(c.bundle), c.id],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=30)
            finally:
                log.close()
            if p.returncode != 0:
                why = self._last_line(c)
                if "error preparing rootfs: mount /" in why:
                    # runc makes / a slave mount first: impossible where / is no mount point (a chroot)
                    raise LabError(f"runc cannot start {c.spec.name}: / is not a mount point here (a chroot?); "
                                   "run sigtrace lab on a real root filesystem")
                raise LabError(f"runc run {c.spec.name} failed: {why}")
            c.pid1 = int((c.bundle / "pid").read_text())
            c.start_reaper()
        self._wait_ready()

    def _last_line(self, c: _Container) -> str:
        """The most telling line of a container's log: the last error with a cause, else the last line."""
        lines = [l.strip() for l in self.log(c.spec.name).splitlines() if l.strip()]
        with_errno = [l for l in lines if re.search(r"\(\d+\)|\(\d+: ", l)]   # "(98)", "(98: Address..."
        errors = [l for l in lines if ("ERROR:" in l or "[emerg]" in l) and "still could" not in l]
        return (with_errno or errors or lines or ["no output"])[-1]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.spec.ready_timeout_s
        while True:
            pending = []
            for c in self._containers.values():
                if c.exited.is_set():
                    raise LabError(f"container {c.spec.name} exited at start: {self._last_line(c)}")
                missing = set(c.spec.ready_ports) - listening_ports(c.pid1, self.pids(c.spec.name))
                if missing:
                    pending.append(f"{c.spec.name} port {sorted(missing)}")
            if not pending:
                return
            if time.monotonic() > deadline:
                raise LabError(f"pod not ready after {self.spec.ready_timeout_s:.0f}s: {', '.join(pending)} "
                               "not listening; see the container log")
            time.sleep(0.05)

    def _write_bundle(self, c: _Container) -> None:
        rootfs = c.bundle / "rootfs"
        rootfs.mkdir(parents=True)
        mounts: list[dict] = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        ]
        for d in _HOST_RO:
            host = Path("/") / d
            if host.is_symlink():   # merged /usr: replicate the symlink instead of mounting
                (rootfs / d).symlink_to(os.readlink(host))
            elif host.is_dir():
                mounts.append({"destination": f"/{d}", "type": "bind", "source": str(host),
                               "options": ["rbind", "ro", "nosuid", "nodev"]})
        for d in _TMPFS:
            mounts.append({"destination": d, "type": "tmpfs", "source": "tmpfs",
                           "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]})
        # /var/log writable and with nginx/ inside: Debian's default nginx.conf (read by
        # `nginx -s quit`) opens /var/log/nginx/error.log before anything else.
        varlog = c.bundle / "varlog"
        (varlog / "nginx").mkdir(parents=True)
        mounts.append({"destination": "/var/log", "type": "bind", "source": str(varlog), "options": ["rbind", "rw"]})
        if self.spec.app_dir is not None:
            mounts.append({"destination": "/lab", "type": "bind", "source": str(self.spec.app_dir),
                           "options": ["rbind", "ro"]})
        for m in c.spec.mounts:
            mounts.append({"destination": m.destination, "type": "bind", "source": m.source,
                           "options": ["rbind", "ro" if m.readonly else "rw"]})
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME": self.spec.name,
               **c.spec.env}
        config = {
            "ociVersion": "1.0.2-dev",
            "process": {
                "terminal": False, "user": {"uid": 0, "gid": 0}, "args": c.spec.args,
                "env": [f"{k}={v}" for k, v in env.items()], "cwd": "/",
                "capabilities": {k: _CAPS for k in ("bounding", "effective", "permitted")},
                "noNewPrivileges": True,
            },
            "root": {"path": "rootfs", "readonly": True},
            "hostname": self.spec.name,
            "mounts": mounts,
            "linux": {
                "cgroupsPath": c.cg_path,
                "resources": {"devices": [{"allow": False, "access": "rwm"}]},
                "namespaces": [{"type": "pid"}, {"type": "network", "path": self.netns_path},
                               {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                                "/proc/timer_list", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            },
        }
        (c.bundle / "config.json").write_text(json.dumps(config, indent=1))

    def _sweep(self) -> None:
        while not self._sweeping.wait(0.05):
            reap_container_orphans({c.pid1 for c in self._containers.values() if c.pid1})

    # --- stop -----------------------------------------------------------------------------
    def _stop_one(self, name: str, grace: float) -> StopOutcome:
        c = self._containers[name]
        sig = normalize_signal(c.spec.stop_signal)
        out = StopOutcome(name, c.id, sig, prestop=c.spec.prestop)
        start = time.time()
        if c.spec.prestop and not c.exited.is_set():
            out.prestop_start = time.time()
            try:
                # Log file, not pipe: a hook that leaves a child behind would hold a pipe open.
                with open(c.bundle / "prestop.log", "ab") as log:
                    p = subprocess.run([self.runc, "exec", c.id, *c.spec.prestop], stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=log, timeout=max(grace, 0.1))
                out.prestop_rc = p.returncode
            except subprocess.TimeoutExpired:
                out.prestop_rc = None
            out.prestop_end = time.time()
        # The kubelet gives the container what is left of the grace period, at least 2 s.
        remaining = grace - (time.time() - start)
        if c.spec.prestop:
            remaining = max(remaining, MIN_GRACE_AFTER_PRESTOP_S)
        if not c.exited.is_set():
            out.stop_sent = time.time()
            _run([self.runc, "kill", c.id, sig], check=False)
        if not c.exited.wait(max(remaining, 0)):
            out.kill_sent = time.time()
            _run([self.runc, "kill", "--all", c.id, "KILL"], check=False)
            c.exited.wait(10)
        out.exited = c.exit_time
        if c.status is not None:
            if os.WIFSIGNALED(c.status):
                out.exit_signal = os.WTERMSIG(c.status)
            elif os.WIFEXITED(c.status):
                out.exit_code = os.WEXITSTATUS(c.status)
        return out

    # --- cleanup --------------------------------------------------------------------------
    def cleanup(self) -> list[str]:
        """Remove containers, cgroups, netns and temp dirs. Idempotent; returns what failed."""
        problems = []
        for c in self._containers.values():
            if c.bundle.exists():
                _run([self.runc, "delete", "-f", c.id], check=False, timeout=30)
            if c.pid1 is not None:
                c.exited.wait(5)
        self._sweeping.set()
        if self._sweeper is not None:
            self._sweeper.join()
        reap_container_orphans({c.pid1 for c in self._containers.values() if c.pid1 and not c.exited.is_set()})
        for c in self._containers.values():
            problems += self._remove_cgroups(c.cg_path)
        for root in cgroup_hierarchies():
            pod_dir = root / _pod_cgroup(next(iter(self._containers.values())).cg_path).lstrip("/")
            problems += _rmdir_retry(pod_dir)
        if self._made_netns and (NETNS_DIR / self.netns).exists():
            p = _run(["ip", "netns", "del", self.netns], check=False)
            if p.returncode != 0:
                problems.append(f"netns {self.netns}: {p.stderr.strip()}")
        if self.workdir.exists() and not self.keep_logs:
            table = mountinfo()
            # never rm -rf through a bind mount of the host's /usr, nor when the mount table cannot tell
            if table is None or any(str(self.workdir) in line for line in table):
                problems.append(f"{self.workdir} still has mounts; left in place")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        return problems

    def _remove_cgroups(self, cg_path: str) -> list[str]:
        problems = []
        for root in cgroup_hierarchies():
            problems += _rmdir_retry(root / cg_path.lstrip("/"))
        return problems


def _rmdir_retry(path: Path, attempts: int = 50) -> list[str]:
    """rmdir a cgroup (children first); processes that just died may linger a moment."""
    if not path.exists():
        return []
    for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
        _rmdir_retry(child, attempts)
    for _ in range(attempts):
        try:
            path.rmdir()
            return []
        except FileNotFoundError:
            return []
        except OSError:
            time.sleep(0.02)
    return [f"cgroup {path} could not be removed"]

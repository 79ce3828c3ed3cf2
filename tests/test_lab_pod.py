"""The local pod runner on real runc, nginx and php-fpm: kubelet-style cgroups in both
layouts, a shared netns, and the kubelet + containerd stop sequence (preStop via runc exec,
STOPSIGNAL via runc kill, runc kill --all KILL at grace end). Everything must be gone after."""
from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import require_kernel
from sigtrace.errors import LabError
from sigtrace.lab import configs
from sigtrace.lab.load import LoadClient
from sigtrace.lab.pod import LocalPod, PodSpec, cgroup_hierarchies
from sigtrace.pods.cgroup import parse_proc_cgroup

TOOLS = ("runc", "nginx", "php-fpm8.2", "ip")


@pytest.fixture
def app(tmp_path: Path) -> configs.AppFiles:
    require_kernel(tools=TOOLS)
    return configs.write_app_dir(tmp_path / "app", nginx=configs.nginx_conf(workers=1),
                                 fpm=configs.fpm_conf(children=2))


def assert_gone(pod: LocalPod) -> None:
    listed = subprocess.run(["runc", "list", "-q"], capture_output=True, text=True).stdout.split()
    for cid in pod.container_names():
        assert cid not in listed
    pod_dir = pod.cgroup_path(next(iter(pod.container_names().values()))).rsplit("/", 1)[0].lstrip("/")
    for root in cgroup_hierarchies():
        assert not (root / pod_dir).exists(), root / pod_dir
    assert pod.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not pod.workdir.exists()


@pytest.mark.kernel
@pytest.mark.parametrize("layout", ["cgroupfs", "systemd"])
def test_pod_runs_in_kubelet_cgroups_and_stops_on_term(app, layout):
    spec = PodSpec(name="web", layout=layout, grace_period_s=10, app_dir=app.root,
                   containers=[configs.nginx_container(app), configs.fpm_container(app)])
    with LocalPod(spec) as pod:
        for name in ("nginx", "php-fpm"):
            pids = pod.pids(name)
            assert pod.pid1(name) in pids and len(pids) >= 2      # master + worker(s)
            for pid in pids:
                text = Path(f"/proc/{pid}/cgroup").read_text()
                assert parse_proc_cgroup(text) == (spec.uid, pod.container_id(name))
                # runc (cgroupfs driver, hybrid) also places the process in the unified hierarchy
                unified = [l for l in text.splitlines() if l.startswith("0::")]
                assert unified and unified[0].endswith(pod.container_id(name) + (".scope" if layout == "systemd" else ""))
        # one request through nginx -> FastCGI -> php-fpm, from inside the pod's netns
        with LoadClient(pod.netns, request_ms=50, concurrency=2, workdir=pod.workdir) as load:
            load.start()
            time.sleep(0.5)
            load.stop_sending()
            result = load.wait()
        assert result.counts()["ok"] >= 2 and result.failures() == 0
        t0 = time.time()
        out = pod.stop()
        for name in ("nginx", "php-fpm"):
            o = out[name]
            assert o.stop_signal == "SIGTERM" and o.stop_sent is not None
            assert o.exit_code == 0 and o.exit_signal is None and not o.killed
        assert time.time() - t0 < 5
    assert_gone(pod)


@pytest.mark.kernel
def test_shell_wrapper_pid1_drops_term_and_is_killed_after_grace(app):
    grace = 2.0
    spec = PodSpec(name="wrapped", grace_period_s=grace, app_dir=app.root,
                   containers=[configs.nginx_container(app, shell_wrapper=True)])
    with LocalPod(spec) as pod:
        pid1 = pod.pid1("nginx")
        assert Path(f"/proc/{pid1}/comm").read_text().strip() == "sh"
        nginx_master = [p for p in pod.pids("nginx") if Path(f"/proc/{p}/comm").read_text().strip() == "nginx"]
        assert nginx_master
        o = pod.stop()["nginx"]
    # TERM to a PID 1 without a handler is dropped: nothing exits until the grace period ends
    assert o.killed and o.kill_sent - o.stop_sent >= grace - 0.1
    assert o.exit_signal == signal.SIGKILL and o.exit_code is None
    assert o.exited >= o.kill_sent
    assert_gone(pod)


@pytest.mark.kernel
def test_prestop_nginx_quit_runs_through_runc_exec(app):
    spec = PodSpec(name="prestop", grace_period_s=10, app_dir=app.root,
                   containers=[configs.nginx_container(app, prestop=["nginx", "-s", "quit"]),
                               configs.fpm_container(app)])
    with LocalPod(spec) as pod:
        o = pod.stop()["nginx"]
        log = pod.log("nginx")
    # 137: an idle nginx exits on QUIT at once, and the PID 1 exit SIGKILLs whatever is left in
    # the namespace, the exiting `nginx -s quit` included (the kubelet then logs FailedPreStopHook)
    assert o.prestop_rc in (0, 137) and o.prestop_start <= o.prestop_end
    # the hook is a process exec'd inside the container: nginx sees its in-namespace pid (> 1)
    m = re.search(r"signal 3 \(SIGQUIT\) received from (\d+)", log)
    assert m and int(m.group(1)) > 1, log
    assert o.exit_code == 0 and not o.killed
    assert_gone(pod)


@pytest.mark.kernel
def test_port_in_use_fails_with_one_line_and_leaves_nothing(app):
    # two nginx containers in one netns: the second cannot bind 8080
    spec = PodSpec(name="clash", grace_period_s=2, app_dir=app.root, ready_timeout_s=5,
                   containers=[configs.nginx_container(app, name="a"), configs.nginx_container(app, name="b")])
    pod = LocalPod(spec)
    with pytest.raises(LabError, match="exited at start.*Address already in use"):
        with pod:
            pass
    assert_gone(pod)


def test_bad_signal_is_rejected_before_anything_is_made(tmp_path):
    spec = PodSpec(containers=[configs.ContainerSpec("x", ["true"], stop_signal="SIGNOPE")])
    with pytest.raises(LabError, match="unknown signal"):
        LocalPod(spec)


@pytest.mark.kernel
def test_prestop_longer_than_grace_still_stops_and_exit_is_seen(app):
    # the kubelet stops waiting for the hook at grace end and sends the stop signal anyway (2 s
    # minimum); the hook's process, orphaned to us, must be reaped or fpm's PID 1 never finishes exiting
    spec = PodSpec(name="slowhook", grace_period_s=1.5, app_dir=app.root,
                   containers=[configs.fpm_container(app, stop_signal="SIGQUIT", prestop=["sleep", "30"])])
    with LocalPod(spec) as pod:
        o = pod.stop()["php-fpm"]
    assert o.prestop_rc is None and o.stop_sent - o.prestop_start >= 1.4
    assert o.exit_code == 0 and not o.killed and o.exited - o.stop_sent < 2
    assert_gone(pod)


@pytest.mark.kernel
def test_quit_drains_in_flight_request_before_exit(tmp_path):
    require_kernel(tools=TOOLS)
    app = configs.write_app_dir(tmp_path / "app", nginx=configs.nginx_conf(workers=1),
                                fpm=configs.fpm_conf(children=2, process_control_timeout_s=10))
    spec = PodSpec(name="drain", grace_period_s=10, app_dir=app.root,
                   containers=[configs.nginx_container(app, stop_signal="SIGQUIT"),
                               configs.fpm_container(app, stop_signal="SIGQUIT")])
    with LocalPod(spec) as pod:
        with LoadClient(pod.netns, request_ms=1500, concurrency=1, workdir=pod.workdir) as load:
            load.start()
            time.sleep(0.5)
            load.stop_sending()           # one request in flight, no new ones
            out = pod.stop()
            result = load.wait()
    [req] = result.requests
    assert req.outcome == "ok"
    for o in out.values():              # both masters waited for the request, then exited cleanly
        assert o.stop_sent < req.end <= o.exited + 0.05 and o.exit_code == 0 and not o.killed
    assert_gone(pod)

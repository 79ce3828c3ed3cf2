"""`sigtrace lab` scenarios on real runc/nginx/php-fpm, judged from the client's side and from
the container outcomes (the recorder/report side is in test_lab_report.py)."""
from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import require_kernel
from sigtrace.events.reader import read_recording
from sigtrace.lab.driver import demo_scenarios
from sigtrace.lab.pod import cgroup_hierarchies
from sigtrace.lab.scenario import Scenario, run_scenario

TOOLS = ("runc", "nginx", "php-fpm8.2", "ip")
UID = "5a1b7e2c-0d9e-4f3a-8b6c-1e2f3a4b5c6d"


def no_leftovers(uid: str) -> None:
    """Nothing of pod uid is left: netns, work dir, runc state, cgroup dirs in any hierarchy.
    (Checked per uid: other suites may run their own pods at the same time.)"""
    assert f"sigtrace-{uid[:8]}" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not list(Path("/tmp").glob(f"sigtrace-lab-{uid[:8]}-*"))
    assert f"sigtrace-lab-{uid[:8]}" not in subprocess.run(["runc", "list"], capture_output=True, text=True).stdout
    for root in cgroup_hierarchies():
        assert not list(root.glob(f"kubepods*/*/*pod{uid}*")) and not list(root.glob(f"kubepods*/*/*pod{uid.replace('-', '_')}*"))


@pytest.fixture
def kernel():
    require_kernel(tools=TOOLS)


@pytest.mark.kernel
@pytest.mark.parametrize("layout", ["cgroupfs", "systemd"])
def test_article_case_fails_and_fixed_case_is_clean(kernel, layout):
    (_, article), (_, fixed) = demo_scenarios(layout=layout)
    bad = run_scenario(article)
    c = bad.load.counts()
    # fpm dies on TERM with requests in flight: nginx answers 502; once nginx is gone the
    # load balancer's requests are refused (endpoint race)
    assert c["http_502"] >= 1 and c["refused"] >= 1
    assert bad.outcomes["nginx"].prestop_rc in (0, 137)   # 137: killed as PID 1 exited (see test_lab_pod)
    assert bad.outcomes["php-fpm"].stop_signal == "SIGTERM"
    assert all(o.exited - bad.deleted_at < 2 for o in bad.outcomes.values())   # no drain at all
    good = run_scenario(fixed)
    assert good.load.failures() == 0 and good.load.counts()["ok"] >= 4
    for o in good.outcomes.values():
        assert o.stop_signal == "SIGQUIT" and o.exit_code == 0 and not o.killed
        assert o.stop_sent - good.deleted_at >= 3.0            # after the preStop sleep
    assert good.traffic_stopped_at < min(o.stop_sent for o in good.outcomes.values())
    no_leftovers(bad.pod_uid)
    no_leftovers(good.pod_uid)


@pytest.mark.kernel
def test_shell_wrapper_waits_out_grace_and_dies_by_sigkill(kernel):
    s = Scenario(name="wrapped", shell_wrapper=True, stop_signal={"php-fpm": "SIGQUIT"}, grace_s=2,
                 request_ms=300, concurrency=2, lb_delay_s=0.5, warmup_s=0.5, workers=1,
                 process_control_timeout_s=1)
    r = run_scenario(s)
    o = r.outcomes["nginx"]
    assert o.killed and o.exit_signal == signal.SIGKILL and o.kill_sent - o.stop_sent >= 1.9
    assert r.outcomes["php-fpm"].exit_code == 0 and not r.outcomes["php-fpm"].killed
    no_leftovers(r.pod_uid)


@pytest.mark.kernel
def test_lab_events_and_client_view_are_written(kernel, sigtrace_cli, tmp_path):
    out = tmp_path / "rec"
    p = sigtrace_cli("lab", "--backend", "none", "--output", str(out), "--grace", "5", "--request-ms", "200",
                     "--concurrency", "2", "--lb-delay", "0.3", "--workers", "1",
                     "--prestop", "nginx -s quit", "--stop-signal", "nginx=TERM", "--format", "json")
    assert p.returncode == 0, p.stderr
    run = json.loads(p.stdout)[0]
    assert set(run["outcomes"]) == {"nginx", "php-fpm"}
    rec = read_recording(out)
    life = rec.events[rec.events.kind == "pod_lifecycle"]
    assert list(life.event) == ["pod_seen", "pod_deleted", "traffic_stopped"]
    seen = json.loads(life.iloc[0].detail)
    assert seen["containers"] == run["containers"] and seen["prestop"] == {"nginx": "nginx -s quit"}
    assert seen["stop_signal"] == {"nginx": "SIGTERM", "php-fpm": "SIGTERM"} and seen["grace_period_s"] == 5
    assert set(life.pod_uid) == {run["pod_uid"]}
    assert json.loads((out / "lab.json").read_text())["client"]["counts"] == run["client"]["counts"]
    no_leftovers(run["pod_uid"])


@pytest.mark.kernel
@pytest.mark.parametrize("which,text,expect", [
    ("--nginx-conf", "events {}\nhttp { server { listen 8080; bogus_directive on; } }\n", "nginx config is invalid"),
    ("--fpm-conf", "[global]\n[www]\nlisten = 127.0.0.1:9000\npm = wrong\n", "php-fpm config is invalid"),
])
def test_bad_config_is_one_line_and_nothing_is_left(kernel, sigtrace_cli, tmp_path, which, text, expect):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    p = sigtrace_cli("lab", "--backend", "none", which, str(conf), "--output", str(tmp_path / "o"),
                     "--pod-uid", UID)
    assert p.returncode == 1 and expect in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()     # rejected before anything was made
    no_leftovers(UID)


@pytest.mark.kernel
def test_port_in_use_by_user_config_is_one_line(kernel, sigtrace_cli, tmp_path):
    # a user's php-fpm listening on nginx's port: the pod cannot start; one line, nothing left
    conf = tmp_path / "fpm.conf"
    conf.write_text("[global]\ndaemonize = no\nerror_log = /proc/self/fd/2\n[www]\nuser = root\ngroup = root\n"
                    "listen = 127.0.0.1:8080\npm = static\npm.max_children = 1\n")
    p = sigtrace_cli("lab", "--backend", "none", "--fpm-conf", str(conf), "--output", str(tmp_path / "o"),
                     "--pod-uid", UID)
    assert p.returncode == 1, p.stdout
    line = p.stderr.strip()
    assert line == ("sigtrace: error: container php-fpm exited at start: " + line.split("start: ", 1)[1])
    assert "\n" not in line and "Address already in use (98)" in line, line
    no_leftovers(UID)


def test_bad_options_fail_before_anything_runs(sigtrace_cli):
    p = sigtrace_cli("lab", "--backend", "none", "--stop-signal", "nginx=SIGNOPE")
    assert p.returncode == 1 and "unknown signal" in p.stderr
    p = sigtrace_cli("lab", "--backend", "none", "--stop-signal", "redis=TERM")
    assert p.returncode == 1 and "CONTAINER=VALUE" in p.stderr
    p = sigtrace_cli("lab", "--backend", "none", "--stop-order", "nginx,mysql")
    assert p.returncode == 1 and "unknown container" in p.stderr


def test_missing_runc_is_one_line(sigtrace_cli, tmp_path):
    p = sigtrace_cli("lab", "--backend", "none", env={"PATH": str(tmp_path)})
    assert p.returncode == 1 and p.stderr.strip() == ("sigtrace: error: runc not found: sigtrace lab needs runc, "
                                                      "nginx, php-fpm 8.2 and iproute2 (make setup installs them)")


@pytest.mark.kernel
def test_lab_with_strace_backend_sees_prestop_quit_then_runtime_term(sigtrace_cli, tmp_path):
    require_kernel(tools=TOOLS + ("strace",))
    out = tmp_path / "rec"
    # 5 s requests, started a second before the deletion: nginx still drains them when the runtime's
    # TERM follows the preStop (with 1 s requests a slow `runc exec` let nginx finish first: no TERM)
    p = sigtrace_cli("lab", "--backend", "strace", "--output", str(out), "--grace", "10", "--request-ms", "5000",
                     "--concurrency", "2", "--lb-delay", "0.3", "--workers", "1", "--prestop", "nginx -s quit",
                     "--stop-signal", "nginx=TERM", "--stop-signal", "php-fpm=QUIT", "--process-control-timeout", "10",
                     "--format", "json", timeout=180)
    assert p.returncode == 0, p.stderr
    run = json.loads(p.stdout)[0]
    nginx_id = next(cid for cid, name in run["containers"].items() if name == "nginx")
    ev = read_recording(out).events
    got = ev[(ev.kind == "signal_deliver") & (ev.container_id == nginx_id) & (ev.nspid == 1)
             & ev.sig.isin(["SIGQUIT", "SIGTERM"])]
    assert set(got.pod_uid) == {run["pod_uid"]}
    quit_, term = got[got.sig == "SIGQUIT"].iloc[0], got[got.sig == "SIGTERM"].iloc[0]
    # the preStop's `nginx -s quit` runs inside the container: si_pid is its in-namespace pid;
    # the runtime's TERM comes from outside the PID namespace: si_pid 0
    assert quit_.si_pid > 1 and term.si_pid == 0 and quit_.ts < term.ts
    no_leftovers(run["pod_uid"])

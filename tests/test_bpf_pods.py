"""The bpf recorder on real pods: runc containers in kubelet-style cgroups (sigtrace.lab.pod),
stopped the way containerd does it, recorded by ONE module-scoped recorder (bcc compiles cost
seconds) that sees three pods:

  A  nginx (preStop `nginx -s quit`) + php-fpm, cgroupfs layout, under load; php-fpm stopped
     first, nginx 1.5 s later: runtime TERM to fpm, fpm resets on FastCGI connections, the
     preStop's QUIT, refused connection attempts after nginx's listener closed.
  B  `sh -c 'nginx; exit $?'` as PID 1, systemd layout: the runtime's TERM is ignored, SIGKILL
     at grace end, exits by signal.
  C  nginx in exec form, no preStop: the runtime's TERM to the nginx master.
"""
from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import require_kernel

pytestmark = pytest.mark.kernel
TOOLS = ("runc", "nginx", "php-fpm8.2", "ip")


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    require_kernel(bpf=True, tools=TOOLS)
    from sigtrace.backends.bpf.backend import BpfBackend
    from sigtrace.lab import configs
    from sigtrace.lab.load import LoadClient
    from sigtrace.lab.pod import LocalPod, PodSpec
    from sigtrace.record import RecordSession

    tmp = tmp_path_factory.mktemp("bpfpods")
    out = tmp / "rec"
    session = RecordSession(BpfBackend(), out, live=False)
    stop = threading.Event()
    result: dict = {}
    recorder = threading.Thread(target=lambda: result.update(r=session.run(stop=stop)), daemon=True)
    recorder.start()
    facts: dict = {}
    try:
        deadline = time.monotonic() + 60
        while getattr(session.backend, "startup_s", None) is None:      # probes attached
            assert recorder.is_alive() and time.monotonic() < deadline, "recorder did not start"
            time.sleep(0.05)
        facts["startup_s"] = session.backend.startup_s

        # -- pod A
        app = configs.write_app_dir(tmp / "app-a", nginx=configs.nginx_conf(workers=1),
                                    fpm=configs.fpm_conf(children=2, process_control_timeout_s=0))
        spec = PodSpec(name="a", layout="cgroupfs", grace_period_s=4, app_dir=app.root, containers=[
            configs.nginx_container(app, stop_signal="SIGTERM", prestop=["nginx", "-s", "quit"]),
            configs.fpm_container(app)])
        with LocalPod(spec) as pod:
            facts["a"] = dict(uid=pod.uid, nginx=pod.container_id("nginx"), fpm=pod.container_id("php-fpm"),
                              nginx_pid1=pod.pid1("nginx"), fpm_pid1=pod.pid1("php-fpm"))
            # a thread-safe injection, as the lab driver / Kubernetes watcher do
            from sigtrace.events import schema
            threading.Thread(target=session.add_event, args=(schema.new_event(
                "pod_lifecycle", time.time(), pod_uid=pod.uid, event="pod_deleted", pod_name="a"),)).start()
            time.sleep(1.5)     # the recorder's periodic scan learns the pod's listeners
            with LoadClient(pod.netns, request_ms=3000, concurrency=3, workdir=pod.workdir) as load:
                load.start()
                time.sleep(1.0)      # requests in flight at php-fpm
                facts["a_stop"] = pod.stop(order=["php-fpm", "nginx"], delay_s=1.5)
                time.sleep(0.5)      # the "load balancer" still sends: refused attempts
                load.stop_sending()
                facts["a_load"] = load.wait().counts()

        # -- pod B
        app_b = configs.write_app_dir(tmp / "app-b", nginx=configs.nginx_conf(workers=1))
        spec = PodSpec(name="b", layout="systemd", grace_period_s=2, app_dir=app_b.root,
                       containers=[configs.nginx_container(app_b, shell_wrapper=True)])
        with LocalPod(spec) as pod:
            facts["b"] = dict(uid=pod.uid, nginx=pod.container_id("nginx"), pid1=pod.pid1("nginx"),
                              pids=pod.pids("nginx"))
            facts["b_stop"] = pod.stop()

        # -- pod C
        spec = PodSpec(name="c", layout="cgroupfs", grace_period_s=3, app_dir=app_b.root,
                       containers=[configs.nginx_container(app_b)])
        with LocalPod(spec) as pod:
            facts["c"] = dict(uid=pod.uid, nginx=pod.container_id("nginx"), pid1=pod.pid1("nginx"))
            facts["c_stop"] = pod.stop()
        time.sleep(0.5)
    finally:
        stop.set()
        recorder.join(30)
    assert "r" in result, "the recorder thread failed"
    events = _events(out / "events.jsonl")
    meta = json.loads((out / "meta.json").read_text())
    return dict(facts=facts, events=events, meta=meta, result=result["r"], out=out)


def _find(events, **want):
    return [e for e in events if all(e.get(k) == v for k, v in want.items())]


def test_runtime_sigterm_names_sender_runc_and_the_target_pod(recording):
    a, c = recording["facts"]["a"], recording["facts"]["c"]
    ev = recording["events"]
    for pod, cid, pid1, comm in ((a, a["fpm"], a["fpm_pid1"], "php-fpm8.2"), (c, c["nginx"], c["pid1"], "nginx")):
        term = _find(ev, kind="signal_generate", sig="SIGTERM", comm="runc", target_pid=pid1)
        assert term, f"no SIGTERM from runc to {comm}"
        e = term[0]
        assert e["target_pod_uid"] == pod["uid"] and e["target_container_id"] == cid
        assert e["target_nspid"] == 1 and e["target_comm"] == comm and e["result"] == "delivered"
        assert e["pod_uid"] is None if "pod_uid" in e else True       # the sender is outside the pod
        deliver = _find(ev, kind="signal_deliver", sig="SIGTERM", pid=pid1)
        assert deliver and deliver[0]["handler"] == "handler" and deliver[0]["pod_uid"] == pod["uid"]
        assert deliver[0]["container_id"] == cid and deliver[0]["nspid"] == 1


def test_prestop_quit_comes_from_a_process_exec_d_in_the_container(recording):
    a = recording["facts"]["a"]
    ev = recording["events"]
    quit_ = _find(ev, kind="signal_generate", sig="SIGQUIT", target_pid=a["nginx_pid1"])
    assert quit_, "no SIGQUIT to the nginx master"
    e = quit_[0]
    assert e["comm"] == "nginx" and e["pid"] != a["nginx_pid1"]
    assert (e["pod_uid"], e["container_id"]) == (a["uid"], a["nginx"])       # exec'd into the container
    assert e["nspid"] not in (None, 1) and e["target_nspid"] == 1
    execs = _find(ev, kind="process_exec", pid=e["pid"])
    assert execs and execs[0]["filename"].endswith("nginx") and execs[0]["container_id"] == a["nginx"]


def test_shell_as_pid1_ignores_sigterm_then_dies_by_sigkill(recording):
    b = recording["facts"]["b"]
    ev = recording["events"]
    term = _find(ev, kind="signal_generate", sig="SIGTERM", comm="runc", target_pid=b["pid1"])
    assert term and term[0]["result"] == "ignored" and term[0]["target_comm"] == "sh"
    assert term[0]["target_pod_uid"] == b["uid"] and term[0]["target_nspid"] == 1
    kills = _find(ev, kind="signal_generate", sig="SIGKILL", comm="runc", target_pod_uid=b["uid"])
    assert kills and all(k["result"] == "delivered" for k in kills)
    assert recording["facts"]["b_stop"]["nginx"].killed
    exits = {e["pid"]: e for e in _find(ev, kind="process_exit", pod_uid=b["uid"])}
    assert exits[b["pid1"]].get("exit_signal") == "SIGKILL" and exits[b["pid1"]].get("exit_code") is None
    for pid in b["pids"]:        # the nginx master and worker died by SIGKILL too
        assert exits[pid].get("exit_signal") == "SIGKILL", exits.get(pid)


def test_exit_codes_and_signals(recording):
    a, c = recording["facts"]["a"], recording["facts"]["c"]
    ev = recording["events"]
    fpm_master = _find(ev, kind="process_exit", pid=a["fpm_pid1"])
    assert fpm_master and fpm_master[0].get("exit_code") == 0 and fpm_master[0]["nspid"] == 1
    master = _find(ev, kind="process_exit", pid=c["pid1"])
    assert master and master[0].get("exit_code") == recording["facts"]["c_stop"]["nginx"].exit_code == 0
    fpm_children = [e for e in _find(ev, kind="process_exit", container_id=a["fpm"], comm="php-fpm8.2")
                    if e["pid"] != a["fpm_pid1"]]
    # process_control_timeout=0: the children were TERMed then KILLed by the master
    assert fpm_children and all(e.get("exit_signal") in ("SIGTERM", "SIGKILL") for e in fpm_children)


def test_php_fpm_resets_its_fastcgi_connections(recording):
    a = recording["facts"]["a"]
    resets = [e for e in _find(recording["events"], kind="tcp_reset_sent", pod_uid=a["uid"], sport=9000)
              if e.get("sock")]
    assert resets, "no reset sent on the FastCGI port"
    by_fpm = [e for e in resets if e["comm"].startswith("php-fpm")]
    assert by_fpm and by_fpm[0]["container_id"] == a["fpm"] and by_fpm[0]["saddr"] == "127.0.0.1"
    assert by_fpm[0]["reason"]               # the kernel's reason, e.g. TCP_ABORT_ON_CLOSE


def test_refused_attempts_after_the_listener_closed_are_tied_to_the_pod(recording):
    a = recording["facts"]["a"]
    ev = recording["events"]
    closed = _find(ev, kind="tcp_state", pod_uid=a["uid"], sport=8080, old_state="LISTEN", new_state="CLOSE")
    assert closed, "nginx's listener close was not recorded"
    refused = [e for e in _find(ev, kind="tcp_reset_sent", pod_uid=a["uid"], sport=8080) if not e.get("sock")]
    assert refused, "no refused connection attempt to 8080 recorded"
    assert all(e["ts"] >= closed[0]["ts"] for e in refused)
    assert refused[0]["saddr"] == "127.0.0.1" and refused[0]["dport"] not in (8080, 9000)
    assert recording["facts"]["a_load"]["refused"] > 0          # the client saw them too


def test_meta_and_injected_events(recording):
    meta, ev = recording["meta"], recording["events"]
    a = recording["facts"]["a"]
    assert meta["backend"] == "bpf" and meta["end"] and meta["end"] >= meta["start"]
    assert "signal_sender" in meta["capabilities"] and "kernel_resets" in meta["capabilities"]
    assert meta["header_source"]
    assert meta["lost_events"] == sum(meta["lost_by_probe"].values())
    assert set(meta["lost_by_probe"]) >= {"signal:signal_generate", "tcp:tcp_send_reset"}
    assert "127.0.0.1:9000" in meta["pod_endpoints"][a["uid"]]
    assert _find(ev, kind="pod_lifecycle", pod_uid=a["uid"], event="pod_deleted")
    assert meta["events"] == len(ev) == recording["result"].events
    print(f"recorder startup {recording['facts']['startup_s']:.2f}s, {len(ev)} events, lost {meta['lost_events']}")


def test_live_reports_are_written_while_recording(recording):
    """sigtrace.record.live_reports.LiveReporter gets every event: a stopped pod's report appears."""
    pytest.importorskip("sigtrace.record.live_reports")
    reports = recording["out"] / "reports"
    for pod in ("a", "c"):
        path = reports / f"{recording['facts'][pod]['uid']}.json"
        assert path.exists(), sorted(p.name for p in reports.glob("*")) if reports.exists() else "no reports dir"
        assert json.loads(path.read_text())


def test_no_containers_left_behind(recording):
    ids = {recording["facts"][p]["nginx"] for p in "abc"} | {recording["facts"]["a"]["fpm"]}
    listed = subprocess.run(["runc", "list", "-q"], capture_output=True, text=True).stdout.split()
    assert not ids & set(listed)

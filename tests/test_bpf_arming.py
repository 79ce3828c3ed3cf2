"""What arms a pod (streams its TCP detail) on a real node: a stop, never an exec probe or a reload.

One recorder, one running lab pod (nginx + php-fpm, kubelet-style cgroups) under connection churn:
  1. exec probes into both containers every 0.2 s, an nginx reload (HUP, then QUIT to the old
     workers from the master), a php-fpm reload (USR2), a `kubectl exec`-like shell: the pod stays
     unarmed, its connections are counted in the kernel, none is streamed;
  2. the agent learns the deletion from the API (arm_pod): TCP detail streams from then on;
  3. the stop itself (runtime TERM): the usual events.
"""
from __future__ import annotations

import json
import time

import pytest

from conftest import ThreadRecorder, require_kernel

pytestmark = pytest.mark.kernel
TOOLS = ("runc", "nginx", "php-fpm8.2", "ip")


def _events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    require_kernel(bpf=True, tools=TOOLS)
    from sigtrace.backends.bpf.backend import BpfBackend
    from sigtrace.lab import configs
    from sigtrace.lab.load import LoadClient
    from sigtrace.lab.pod import LocalPod, PodSpec
    from sigtrace.lab.scenario import ExecProber

    tmp = tmp_path_factory.mktemp("arming")
    out = tmp / "rec"
    backend = BpfBackend()
    recorder = ThreadRecorder(backend, out).start()
    facts: dict = {}
    try:
        app = configs.write_app_dir(tmp / "app", nginx=configs.nginx_conf(workers=2),
                                    fpm=configs.fpm_conf(children=2, process_control_timeout_s=5))
        spec = PodSpec(name="running", layout="cgroupfs", grace_period_s=5, app_dir=app.root, containers=[
            configs.nginx_container(app, stop_signal="SIGQUIT"), configs.fpm_container(app, stop_signal="SIGQUIT")])
        with LocalPod(spec) as pod:
            facts.update(uid=pod.uid, nginx_pid1=pod.pid1("nginx"))
            time.sleep(1.5)                                  # the recorder's scan found the pod
            before = backend.counters()["tcp_pod_not_stopping"]
            with LoadClient(pod.netns, request_ms=20, concurrency=4, workdir=pod.workdir) as load:
                load.start()
                facts["quiet_from"] = time.time()
                with ExecProber(pod, 0.2) as prober:
                    time.sleep(1.0)
                    pod.exec("nginx", ["nginx", "-s", "reload"])       # HUP; the master QUITs old workers
                    pod.exec("php-fpm", ["sh", "-c", "kill -USR2 1"])  # php-fpm's graceful reload
                    pod.exec("nginx", ["sh", "-c", "ls / >/dev/null; sleep 0.2"])   # kubectl exec
                    time.sleep(2.0)
                facts["probes"] = prober.runs
                facts["quiet_to"] = time.time()
                facts["armed_while_running"] = backend.armed_pod_uids()
                facts["counted"] = backend.counters()["tcp_pod_not_stopping"] - before
                time.sleep(0.3)
                facts["api_armed"] = backend.arm_pod(pod.uid)         # the agent saw pod_deleted
                facts["api_armed_at"] = time.time()
                time.sleep(1.5)
                facts["armed_after_api"] = backend.armed_pod_uids()
                facts["stop"] = pod.stop()
                load.stop_sending()
                facts["load"] = load.wait().counts()
        time.sleep(0.5)
    finally:
        recorder.stop()
    return dict(facts=facts, events=_events(out / "events.jsonl"), meta=json.loads((out / "meta.json").read_text()))


def test_exec_probes_reloads_and_exec_do_not_arm_a_running_pod(run):
    f, ev = run["facts"], run["events"]
    assert f["probes"] >= 20 and f["load"]["ok"] > 50
    execs = [e for e in ev if e["kind"] == "process_exec" and e.get("pod_uid") == f["uid"]
             and f["quiet_from"] <= e["ts"] <= f["quiet_to"]]
    assert len(execs) >= 20                                # the probes ran and were recorded as execs
    hups = [e for e in ev if e["kind"] == "signal_generate" and e.get("sig") == "SIGHUP"
            and e.get("target_pid") == f["nginx_pid1"]]
    assert hups, "the reload's HUP was not recorded"
    streamed = [e for e in ev if e["kind"] in ("tcp_state", "tcp_reset_sent", "tcp_reset_received")
                and e.get("pod_uid") == f["uid"] and f["quiet_from"] <= e["ts"] <= f["quiet_to"]]
    assert streamed == [], streamed[:3]
    assert f["uid"] not in f["armed_while_running"]
    assert f["counted"] > 100                              # the connections were counted in the kernel


def test_the_api_deletion_arms_before_any_signal(run):
    f, ev = run["facts"], run["events"]
    assert f["api_armed"] and f["uid"] in f["armed_after_api"]
    first_signal = min(e["ts"] for e in ev if e["kind"] == "signal_generate" and e.get("sig") == "SIGQUIT"
                       and e.get("target_pid") == f["nginx_pid1"])
    closes = [e for e in ev if e["kind"] == "tcp_state" and e.get("pod_uid") == f["uid"]
              and f["api_armed_at"] <= e["ts"] < first_signal]
    assert closes, "no TCP detail between the API's deletion and the stop signal"


def test_meta_says_what_is_armed_and_forgotten(run):
    meta = run["meta"]
    assert meta["tcp_detail"] == "stopping" and isinstance(meta["armed_pods"], list)
    assert set(meta["forgotten"]) == {"containers", "pods", "tasks"}

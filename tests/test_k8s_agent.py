"""`sigtrace agent`: the record session and the API watcher into one stream (real CLI subprocess,
fake API server on 127.0.0.1). With real BPF when the kernel allows it."""
from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import require_kernel
from k8s_fake_api import FakeApi, fake_api  # noqa: F401 (the fixture)
from sigtrace.events.reader import read_recording

DATA = json.loads((Path(__file__).parent / "data/k8s/rolling-update.json").read_text())
EXP = DATA["expect"]


def write_kubeconfig(path: Path, url: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "sigtrace"}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}]}))
    return path


def replay_when_watching(api: FakeApi, delay: float = 0.1) -> threading.Thread:
    def go():
        deadline = time.monotonic() + 60
        while api.watch_count("endpointslices") < 1 or api.watch_count("pods") < 1:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        for step in DATA["steps"]:
            api.apply(step["type"], step["object"])
            time.sleep(delay)
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def only_recording(root: Path) -> Path:
    (d,) = [p for p in root.iterdir() if p.is_dir()]
    assert d.name.startswith("node-a-")
    return d


def test_agent_api_only_records_lifecycle_events_and_notes_api_state(fake_api, tmp_path, sigtrace_cli):
    for obj in DATA["initial"]:
        fake_api.apply("ADDED", obj)
    kc = write_kubeconfig(tmp_path / "kubeconfig", fake_api.url)
    t = replay_when_watching(fake_api)
    ready = tmp_path / "ready"
    r = sigtrace_cli("agent", "--node", "node-a", "--kubeconfig", str(kc), "--no-kernel", "--duration", "4",
                     "--output", str(tmp_path / "out"), "--ready-file", str(ready), timeout=60)
    t.join(timeout=5)
    assert r.returncode == 0, r.stderr
    assert ready.exists()
    assert r.stdout == ""                 # stdout carries report lines only, the log is on stderr
    rec = read_recording(only_recording(tmp_path / "out"))
    ev = rec.events[rec.events["kind"] == "pod_lifecycle"]
    got = list(zip(ev["event"].astype(str), ev["pod_name"].astype(str)))
    old, new = "web-7d9c5b8f6d-x2x4q", "web-5f6b7c9d8e-k8m2n"
    for want in [("pod_seen", old), ("pod_seen", new), ("pod_deleted", old), ("endpoints_not_ready", old),
                 ("endpoints_terminating", old), ("endpoints_removed", old), ("pod_removed", old)]:
        assert want in got, (want, got)
    assert rec.meta["backend"] == "kubernetes-api-only"
    k8s = rec.meta["kubernetes"]
    assert k8s["node"] == "node-a" and k8s["problems"] == {} and k8s["api_events"] == len(ev)
    assert rec.meta["end"] is not None


def test_agent_without_api_access_still_runs_and_says_so_once(tmp_path, sigtrace_cli):
    # a kubeconfig pointing at a port nobody listens on
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    kc = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")
    r = sigtrace_cli("agent", "--node", "node-a", "--kubeconfig", str(kc), "--no-kernel", "--duration", "3",
                     "--output", str(tmp_path / "out"), "--ready-file", str(tmp_path / "ready"), timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "cannot reach the API server" in ln]
    assert len(lines) == 2 and "Traceback" not in r.stderr      # one line per stream (pods, endpointslices)
    meta = json.loads((only_recording(tmp_path / "out") / "meta.json").read_text())
    assert set(meta["kubernetes"]["problems"]) == {"pods", "endpointslices"}


def test_agent_without_node_name_is_a_usage_error(sigtrace_cli, tmp_path, monkeypatch):
    monkeypatch.delenv("NODE_NAME", raising=False)
    r = sigtrace_cli("agent", "--output", str(tmp_path), "--duration", "1")
    assert r.returncode == 2 and "NODE_NAME" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.kernel
def test_agent_with_bpf_merges_kernel_and_api_events(fake_api, tmp_path, sigtrace_cli):
    require_kernel(bpf=True)
    for obj in DATA["initial"]:
        fake_api.apply("ADDED", obj)
    kc = write_kubeconfig(tmp_path / "kubeconfig", fake_api.url)
    t = replay_when_watching(fake_api)
    ready, done = tmp_path / "ready", threading.Event()
    marker = "sigtrace-agent-test-marker"

    def node_activity() -> None:
        # kernel events of our own making once the agent is ready: a quiet node may have none
        while not done.is_set() and not ready.exists():
            time.sleep(0.1)
        while not done.is_set():
            subprocess.run(["sh", "-c", f"exec -a {marker} sleep 0.01"], check=False)
            time.sleep(0.2)
    activity = threading.Thread(target=node_activity, daemon=True)
    activity.start()
    try:
        r = sigtrace_cli("agent", "--node", "node-a", "--kubeconfig", str(kc), "--all", "--duration", "8",
                         "--output", str(tmp_path / "out"), "--ready-file", str(ready), timeout=120)
    finally:
        done.set()
        activity.join(timeout=5)
    t.join(timeout=5)
    assert r.returncode == 0, r.stderr
    rec = read_recording(only_recording(tmp_path / "out"))
    assert rec.meta["backend"] == "bpf"
    kinds = set(rec.events["kind"].astype(str))
    assert "pod_lifecycle" in kinds and kinds - {"pod_lifecycle"}, kinds    # both halves in one file
    assert "process_exec" in kinds and "process_exit" in kinds, kinds       # our own sleeps, from the kernel
    ev = rec.events[rec.events["event"].astype(str) == "endpoints_not_ready"]
    assert list(ev["pod_uid"]) == [EXP["old_uid"]]
    # the health the plugin reads: the kernel recorder's figures through the backend's accessor
    st = json.loads((tmp_path / "out" / "status.json").read_text())
    assert st["backend"] == "bpf" and st["armed_pods"] == 0 and st["recording"] is False
    assert st["events"] >= len(rec.events) and st["events_by_kind"]["process_exec"] >= 1
    assert set(st["lost_by_probe"]) and st["lost_events"] == sum(st["lost_by_probe"].values())


# ---- report lines on stdout, status.json, metrics ---------------------------------------------
def scrape(port: int, method: str = "GET") -> tuple[int, str]:
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus text exposition, parsed by prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_live_reports_are_one_json_line_each_and_feed_status_and_metrics(tmp_path):
    """The agent's path in-process: events from a recorded pod stop (tests/data/article) go through the
    WatcherBackend's queue into a real RecordSession; its LiveReporter writes the report, the session's
    on_report hook hands it to AgentHealth, which prints the line and updates status.json and metrics."""
    import io
    from sigtrace.k8s.health import STATUS_FILE, AgentHealth
    from sigtrace.k8s.metrics import MetricsServer
    from sigtrace.k8s.stream import WatcherBackend
    from sigtrace.record import RecordSession

    lines = [json.loads(x) for x in (Path(__file__).parent / "data/article/events.jsonl").read_text().splitlines()]
    root, stdout = tmp_path / "root", io.BytesIO()
    rec = root / "node-a-20261129T091000Z"
    root.mkdir()
    health = AgentHealth(root, "node-a", rec, out=stdout, status_every_s=0.2, refresh_every_s=0.0)
    proxy = WatcherBackend(None, health=health)
    metrics = MetricsServer("127.0.0.1:0", health).start()
    try:
        for ev in lines:
            proxy.put(ev)
        session = RecordSession(proxy, rec, console=None, live=False, on_report=health.report_written)
        session.run(duration=2.0, handle_signals=False)
        health.stopped(proxy)
        code, text = scrape(metrics.port)
        assert code == 200
        assert scrape(metrics.port, "POST")[0] == 405                          # read-only
    finally:
        metrics.close()

    out = stdout.getvalue().decode()
    assert out.endswith("\n") and out.count("\n") == 1                        # one line per report
    line = json.loads(out)
    assert list(line) == ["sigtrace_report", "node", "pod_uid", "pod_name", "namespace", "verdicts", "report"]
    assert (line["sigtrace_report"], line["node"], line["pod_name"], line["namespace"]) == (1, "node-a", "web-7d9f", "shop")
    assert line["verdicts"] == ["prestop-quit-superseded"]
    on_disk = json.loads((rec / "reports" / f"{line['pod_uid']}.json").read_text())
    assert line["report"] == {**on_disk["pods"][0], "incomplete": on_disk["incomplete"],
                              "lost_events": on_disk["lost_events"]}

    st = json.loads((root / STATUS_FILE).read_text())
    assert st["recording"] is False and st["node"] == "node-a" and st["events"] == len(lines)
    assert st["reports"] == 1 and st["reports_by_verdict"] == {"prestop-quit-superseded": 1}
    assert {k: st["last_report"][k] for k in ("pod_name", "namespace", "verdicts")} == {
        "pod_name": "web-7d9f", "namespace": "shop", "verdicts": ["prestop-quit-superseded"]}
    assert st["disk_used_bytes"] >= (rec / "events.jsonl").stat().st_size
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]

    kinds: dict[str, int] = {}
    for ev in lines:
        kinds[ev["kind"]] = kinds.get(ev["kind"], 0) + 1
    for kind, n in kinds.items():
        assert sample(text, "sigtrace_events_total", kind=kind) == n, kind
    assert sample(text, "sigtrace_reports_written_total", verdict="prestop-quit-superseded") == 1
    assert sample(text, "sigtrace_last_report_timestamp_seconds") == st["last_report"]["at"]
    assert sample(text, "sigtrace_disk_used_bytes") == st["disk_used_bytes"]
    assert sample(text, "sigtrace_build_info", version="0.1.0", backend="kubernetes-api-only") == 1
    assert sample(text, "process_resident_memory_bytes") > 0


def test_report_line_leaves_out_the_timeline_when_too_long(tmp_path):
    from sigtrace.k8s.health import report_line
    report = {"incomplete": [], "lost_events": 0, "pods": [{
        "pod_uid": "u1", "pod_name": "web", "namespace": "shop", "stopped": True, "t0": 1.0,
        "verdicts": [{"id": "killed-after-grace", "status": "confirmed", "summary": "s", "fix": "f",
                      "evidence": [{"what": "x" * 100}] * 10}],
        "timeline": [{"t": i, "what": "y" * 200} for i in range(2000)]}]}
    line = report_line(report, "node-a", tmp_path / "u1.json", max_bytes=16 * 1024)
    assert len(line) <= 16 * 1024 and b"\n" not in line
    d = json.loads(line)
    assert d["truncated"] == ["timeline"] and d["report_file"] == str(tmp_path / "u1.json")
    assert d["verdicts"] == ["killed-after-grace"] and d["report"]["verdicts"][0]["evidence"]
    d = json.loads(report_line(report, "node-a", max_bytes=1024))      # evidence too: the verdicts' words stay
    assert d["report"]["verdicts"] == [{"id": "killed-after-grace", "status": "confirmed", "summary": "s", "fix": "f"}]
    assert "timeline" in d["truncated"] and "verdicts" not in d["truncated"]


def free_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_agent_serves_metrics_and_status_while_it_runs(fake_api, tmp_path):
    import sys
    for obj in DATA["initial"]:
        fake_api.apply("ADDED", obj)
    kc = write_kubeconfig(tmp_path / "kubeconfig", fake_api.url)
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "sigtrace", "agent", "--node", "node-a", "--kubeconfig", str(kc),
                          "--no-kernel", "--duration", "30", "--output", str(tmp_path / "out"),
                          "--ready-file", str(tmp_path / "ready"), "--metrics-address", f"127.0.0.1:{port}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "out" / "status.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        replay_when_watching(fake_api, delay=0.05).join(timeout=10)
        text = ""
        while time.monotonic() < deadline:
            code, text = scrape(port)
            if (sample(text, "sigtrace_events_total", kind="pod_lifecycle") or 0) >= 8:
                break
            time.sleep(0.3)
        assert code == 200
        assert sample(text, "sigtrace_recording") == 1
        assert sample(text, "sigtrace_api_relists_total", resource="pods") == 1
        assert sample(text, "sigtrace_api_up", resource="endpointslices") == 1
        assert sample(text, "sigtrace_api_cached_objects", cache="endpointslices") == 1
        assert sample(text, "sigtrace_armed_pods") is None                 # no kernel recorder, no figure
        st = json.loads((tmp_path / "out" / "status.json").read_text())
        assert st["recording"] is True and st["backend"] == "kubernetes-api-only"
        assert st["kubernetes"]["lists"] == {"pods": 1, "endpointslices": 1}
        fake_api.go_down()                                                 # the API server goes away
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            code, text = scrape(port)
            if sample(text, "sigtrace_api_up", resource="pods") == 0:
                break
            time.sleep(0.3)
        assert sample(text, "sigtrace_api_up", resource="pods") == 0
        assert (sample(text, "sigtrace_api_errors_total", resource="pods", kind="refused") or 0) + \
            (sample(text, "sigtrace_api_errors_total", resource="pods", kind="stream_broken") or 0) >= 1
        p.terminate()
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    assert out == ""                      # stdout is for report lines only; no pod stopped here
    assert "Traceback" not in err
    st = json.loads((tmp_path / "out" / "status.json").read_text())
    assert st["recording"] is False and st["kubernetes"]["problems"]


def test_bad_metrics_address_is_one_line(tmp_path, sigtrace_cli):
    r = sigtrace_cli("agent", "--node", "node-a", "--no-kernel", "--no-api", "--output", str(tmp_path),
                     "--metrics-address", "localhost", "--duration", "1")
    assert r.returncode == 2 and "HOST:PORT" in r.stderr and r.stderr.count("\n") == 1
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        r = sigtrace_cli("agent", "--node", "node-a", "--no-kernel", "--no-api", "--output", str(tmp_path),
                         "--metrics-address", f"127.0.0.1:{s.getsockname()[1]}", "--duration", "1")
    finally:
        s.close()
    assert r.returncode == 2 and "cannot listen" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.kernel
def test_agent_prints_a_stopped_pods_report_on_stdout(tmp_path):
    """End to end on the kernel: a runc pod in kubelet cgroups whose shell PID 1 drops SIGTERM stops
    while the agent records (BPF, no API); its report arrives on the agent's stdout as one JSON line."""
    import sys
    from sigtrace.lab import configs
    from sigtrace.lab.pod import LocalPod, PodSpec
    require_kernel(bpf=True, tools=("runc", "nginx", "ip"))
    app = configs.write_app_dir(tmp_path / "app", nginx=configs.nginx_conf(workers=1), fpm=configs.fpm_conf(children=1))
    ready = tmp_path / "ready"
    p = subprocess.Popen([sys.executable, "-m", "sigtrace", "agent", "--node", "node-a", "--no-api", "--duration", "90",
                          "--output", str(tmp_path / "out"), "--ready-file", str(ready)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "the agent did not become ready"
        spec = PodSpec(name="wrapped", grace_period_s=2.0, app_dir=app.root,
                       containers=[configs.nginx_container(app, shell_wrapper=True)])
        with LocalPod(spec) as pod:
            time.sleep(1.5)                       # the agent's pod scan (1 s) finds the new cgroups
            pod.stop()
        deadline = time.monotonic() + 30
        while not lines and time.monotonic() < deadline:
            time.sleep(0.2)
        p.terminate()
        _, err = p.communicate(timeout=30)
        reader.join(timeout=5)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    (line,) = lines                                # one report, one line, nothing else on stdout
    d = json.loads(line)
    assert d["sigtrace_report"] == 1 and d["node"] == "node-a" and d["pod_uid"] == spec.uid
    assert "pid1-signal-ignored" in d["verdicts"] and d["verdicts"] == [v["id"] for v in d["report"]["verdicts"]]
    st = json.loads((tmp_path / "out" / "status.json").read_text())
    assert st["reports"] == 1 and st["last_report"]["pod_uid"] == spec.uid
    assert st["last_report"]["verdicts"] == d["verdicts"]


def test_watcher_backend_takes_its_recorder_and_the_watchers_state_through_public_methods():
    """What `sigtrace agent` sets on the proxy once the watcher and the kernel recorder exist."""
    from sigtrace.k8s.stream import WatcherBackend

    class Kernel:
        name = "bpf"

        def meta(self) -> dict:
            return {"capabilities": ["signals"]}
    proxy = WatcherBackend(None)
    assert proxy.name == "kubernetes-api-only"
    proxy.follow(lambda: {"problems": {"pods": "watching pods: 403"}})
    proxy.set_recorder(Kernel(), "using the image's headers")
    meta = proxy.meta()
    assert proxy.name == "bpf" and meta["capabilities"] == ["signals"]
    assert meta["kubernetes"]["problems"] == {"pods": "watching pods: 403"}
    assert meta["kubernetes"]["note"] == "using the image's headers"
    proxy.set_recorder(None, "no BTF")                  # the kernel half failed: API events only
    assert proxy.name == "kubernetes-api-only" and proxy.meta()["kubernetes"]["note"] == "no BTF"

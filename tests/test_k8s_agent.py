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

"""The recorder learns listening endpoints from the probes' listener events (listen() runs in the
owner's context), not from a periodic /proc/<pid>/net/tcp scan: that scan lists every TIME_WAIT
socket of a churning pod and was most of the recorder's CPU. Listener events stream for user
space's knowledge even when the pod is not stopping, without entering the recording."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from conftest import require_kernel

CHILD = r"""
import socket, sys
sys.stdin.readline()
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
s.close()
print("closed", flush=True)
sys.stdin.readline()
"""


@pytest.mark.kernel
def test_listen_after_start_is_learned_from_the_probes_without_rescanning(tmp_path):
    require_kernel(bpf=True)
    from sigtrace.backends.bpf import pods
    from sigtrace.backends.bpf.backend import BpfBackend
    from sigtrace.record.session import RecordSession

    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    stop = threading.Event()
    try:
        backend = BpfBackend(pids=(child.pid,), refresh_s=3600)     # no periodic rescan during the test
        scans: list[list[int]] = []
        learn = backend.registry.learn_endpoints
        backend.registry.learn_endpoints = lambda found: (scans.append(sorted(p for v in found.values() for p in v)),
                                                          learn(found))[1]
        session = RecordSession(backend, tmp_path / "rec", live=False, live_reports=False)
        recorder = threading.Thread(target=lambda: session.run(stop=stop), daemon=True)
        recorder.start()
        deadline = time.monotonic() + 60
        while backend.startup_s is None:
            assert recorder.is_alive() and time.monotonic() < deadline, "recorder did not start"
            time.sleep(0.05)
        assert scans == [[child.pid]]             # the start-up scan read the child's listeners once
        child.stdin.write("listen\n"); child.stdin.flush()
        port = int(child.stdout.readline())
        key = (b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1]), port)
        deadline = time.monotonic() + 5
        while key not in backend.registry.endpoints:
            assert time.monotonic() < deadline, "the listen() was not learned from the probes"
            time.sleep(0.05)
        assert backend.registry.endpoints[key] == {pods.SELECTED_PIDX}
        assert scans == [[child.pid]]             # learned without another /proc scan
        child.stdin.write("close\n"); child.stdin.flush()
        assert child.stdout.readline().strip() == "closed"
        time.sleep(0.5)
        assert key in backend.registry.endpoints   # remembered after the close (refusals name the pod)
    finally:
        stop.set()
        child.stdin.write("exit\n"); child.stdin.flush()
        child.wait(timeout=10)
    recorder.join(timeout=30)
    meta = json.loads((tmp_path / "rec" / "meta.json").read_text())
    assert f"127.0.0.1:{port}" in meta["pod_endpoints"]["selected"]
    events = [json.loads(line) for line in (tmp_path / "rec" / "events.jsonl").read_text().splitlines()]
    # not stopping: the listener events taught user space but are not part of the recording
    assert not [e for e in events if e["kind"] == "tcp_state"]
    assert [e for e in events if e["kind"] == "process_exit" and e["pid"] == child.pid]

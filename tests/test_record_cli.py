"""`sigtrace record` as users run it: stop paths (SIGINT, SIGKILL), bad input, dry run, the
lost-events counter, and the session's status line."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, require_kernel


def _start(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sigtrace", "record", "--output", str(out), "--no-live", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"recorder exited early: {proc.communicate()[1]}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture
def target():
    """A process to record with --pid (ours, ended by its pid)."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.kernel
def test_sigint_stops_cleanly_and_sigkill_leaves_a_readable_file(tmp_path, target):
    require_kernel(bpf=True)
    from sigtrace.events.reader import read_recording
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    # two recorders at once: one bcc compile each, in parallel
    procs = {d: _start(d, "--pid", str(target.pid)) for d in (clean, killed)}
    for d, p in procs.items():
        _wait_for(d / "meta.json", p)
    os.kill(target.pid, signal.SIGCONT)          # a signal to the recorded process
    time.sleep(1.6)                              # > the 1 s flush interval
    procs[killed].kill()                         # SIGKILL: no chance to flush or write meta
    procs[clean].send_signal(signal.SIGINT)
    out, err = procs[clean].communicate(timeout=30)
    procs[killed].communicate(timeout=30)
    assert procs[clean].returncode == 0, err
    assert "Traceback" not in err

    meta = json.loads((clean / "meta.json").read_text())
    assert meta["end"] and meta["end"] >= meta["start"] and meta["lost_events"] == 0
    rec = read_recording(clean)
    sent = rec.events[(rec.events.kind == "signal_generate") & (rec.events.target_pid == target.pid)]
    assert list(sent.sig) == ["SIGCONT"] and sent.iloc[0].pid == os.getpid()
    assert not any("did not stop cleanly" in line for line in rec.incomplete)

    lines = (killed / "events.jsonl").read_text().splitlines()
    assert lines and all(json.loads(line) for line in lines)
    rec = read_recording(killed)
    assert "SIGCONT" in set(rec.events.sig.dropna())
    assert any("did not stop cleanly" in line for line in rec.incomplete)


@pytest.mark.kernel
def test_dry_run_compiles_attaches_and_exits(tmp_path, sigtrace_cli):
    require_kernel(bpf=True)
    t0 = time.monotonic()
    r = sigtrace_cli("record", "--output", str(tmp_path / "d"), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "probes compiled and attached" in r.stdout
    print(f"dry run (python start + compile + attach) {time.monotonic() - t0:.2f}s: {r.stdout.strip()}")


def test_dead_pid_is_one_line(tmp_path, sigtrace_cli):
    proc = subprocess.Popen(["true"])
    proc.wait()                                  # reaped: the pid is gone
    r = sigtrace_cli("record", "--output", str(tmp_path / "d"), "--pid", str(proc.pid))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"sigtrace: error: --pid {proc.pid}: no such process; "
                                             f"pass the pid of a running process"]


def test_unwritable_output_dir_is_one_line(tmp_path, sigtrace_cli):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = sigtrace_cli("record", "--output", str(blocker / "sub"))
    assert r.returncode == 73 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot write to output dir" in r.stderr


def test_strace_backend_is_wired(tmp_path, sigtrace_cli):
    """--backend strace reaches the strace backend; until it exists, one clean line."""
    r = sigtrace_cli("record", "--output", str(tmp_path / "d"), "--backend", "strace", "--dry-run",
                     "--pid", str(os.getpid()), timeout=60)
    assert "Traceback" not in r.stderr
    try:
        import sigtrace.backends.strace.backend  # noqa: F401
    except ImportError:
        assert r.returncode != 0 and "strace backend is not available" in r.stderr
    else:
        if shutil.which("strace") and os.geteuid() == 0:
            assert r.returncode == 0 and r.stdout.startswith("strace: attached"), r.stderr


def test_not_root_is_one_line(tmp_path, sigtrace_cli):
    if os.geteuid() != 0:
        r = sigtrace_cli("record", "--output", str(tmp_path / "d"), "--dry-run")
    else:      # root without capabilities (as in a locked-down container): the real check, not a mock
        r = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable,
                            "-m", "sigtrace", "record", "--output", str(tmp_path / "d"), "--dry-run"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 77 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("sigtrace: error: loading eBPF probes needs root")


@pytest.mark.kernel
def test_lost_events_are_counted_per_probe(tmp_path):
    """A one-page ring buffer and a burst of signals before any poll: reserve failures are
    counted per probe, and the session writes them to meta.json."""
    require_kernel(bpf=True)
    from sigtrace.backends.bpf.backend import BpfBackend
    from sigtrace.record import RecordSession
    child = subprocess.Popen(["sleep", "60"])
    try:
        backend = BpfBackend(pids=(child.pid,), ringbuf_pages=1)
        session = RecordSession(backend, tmp_path / "rec", live=False)
        orig_open = backend.open

        def open_then_flood(sink):
            orig_open(sink)
            for _ in range(400):                 # ~800 events (generate + deliver) into a 4 KiB ring
                os.kill(child.pid, signal.SIGCONT)
        backend.open = open_then_flood
        result = session.run(duration=1.0)
    finally:
        child.kill()
        child.wait()
    meta = json.loads((tmp_path / "rec" / "meta.json").read_text())
    assert result.lost_events > 0 and meta["lost_events"] == result.lost_events
    assert meta["lost_by_probe"]["signal:signal_generate"] > 0
    events = [json.loads(line) for line in (tmp_path / "rec" / "events.jsonl").read_text().splitlines()]
    got = sum(1 for e in events if e["kind"] == "signal_generate" and e.get("target_pid") == child.pid)
    assert got + meta["lost_by_probe"]["signal:signal_generate"] >= 400     # nothing vanished uncounted


def test_status_line_shows_rates_and_lost():
    from sigtrace.record.live import Rates, status_line
    rates = Rates(window_s=2.0)
    for _ in range(4):
        rates.add({"pod_uid": "p1"}, now=10.0)
    rates.add({"target_pod_uid": "p2"}, now=10.5)
    per_s = rates.per_second(now=11.0)
    assert per_s == {"p1": 2.0, "p2": 0.5}
    assert status_line(3.0, 5, per_s, 7) == "sigtrace: recording 3s, 5 events (2.5/s), 2 pods, lost 7"


def test_live_table_shows_pods_and_lost_per_probe():
    from rich.console import Console
    from sigtrace.record.live import Rates, render_table
    rates = Rates()
    rates.add({"pod_uid": "pod-a"})
    console = Console(record=True, width=120)
    console.print(render_table(3.0, 1, rates, {"tcp:tcp_send_reset": 2, "signal:signal_generate": 0}, "/tmp/rec"))
    text = " ".join(console.export_text().split())
    assert "pod-a" in text and "lost events: 2 (tcp:tcp_send_reset 2)" in text

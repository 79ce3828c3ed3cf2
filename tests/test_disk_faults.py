"""Bad output and faults, for real: a full filesystem (a 1 MiB tmpfs mounted by the test), the
output directory removed while recording, planted symlinks. The recording goes on, what could not
be written is counted as lost and reported once, and every line on disk stays whole."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sigtrace.errors import UsageProblem

from conftest import missing_or_skip, require_kernel
from sigtrace.events import schema as S
from sigtrace.events.reader import read_recording
from sigtrace.events.segments import list_segments
from sigtrace.events.writer import EventWriter, prepare_output_dir, write_meta


def tcp(ts: float, pid: int = 7) -> dict:
    return S.new_event(S.TCP_STATE, ts, pid=pid, comm="nginx", pod_uid="pod-a", saddr="10.0.0.1", sport=8080,
                       daddr="10.0.0.2", dport=40000 + pid % 20000, old_state="ESTABLISHED", new_state="FIN_WAIT1",
                       sock=f"{pid:016x}")


def whole_lines(directory: Path) -> list[dict]:
    """Every line of every segment, asserting each is a complete JSON object."""
    out = []
    for _, p in list_segments(directory):
        data = p.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{p.name} ends in a partial line"
        for line in data.splitlines():
            out.append(json.loads(line))
    return out


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs of our own, unmounted whatever happens."""
    require_kernel(root=True)
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        missing_or_skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(fs: Path, leave: int = 0) -> Path:
    """Fill the filesystem (ENOSPC), then give `leave` bytes back."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    size = 0
    try:
        while True:
            size += os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    if leave:
        os.ftruncate(fd, size - leave)
    os.close(fd)
    return filler


@pytest.mark.kernel
def test_a_partial_write_on_a_full_disk_leaves_whole_lines_and_counts_the_rest(small_fs):
    warnings: list[str] = []
    rec = small_fs / "rec"
    w = EventWriter(rec, flush_interval=3600, warn=warnings.append)
    try:
        for i in range(10):
            w.write(tcp(1.0 + i, pid=i))
        w.flush()
        filler = fill(small_fs, leave=4096)            # one page left: the next batch fits partly
        for i in range(100):
            w.write(tcp(100.0 + i, pid=i))
        w.flush()
        lost = w.lost()["disk_full"]
        on_disk = whole_lines(rec)                     # the half line that reached the file was cut off
        kept = len(on_disk) - 10
        assert 0 < kept < 100 and lost == 100 - kept
        assert [e["ts"] for e in on_disk] == [1.0 + i for i in range(10)] + [100.0 + i for i in range(kept)]
        for i in range(50):                            # still full: counted, nothing half-written
            w.write(tcp(300.0 + i))
        w.maintain()
        assert w.lost()["disk_full"] == lost + 50 and len(whole_lines(rec)) == 10 + kept
        filler.unlink()                                # space again: writing resumes by itself
        for i in range(20):
            w.write(tcp(400.0 + i))
        w.maintain()
        meta = w.meta()["output"]
        assert meta["failing"] is None and meta["lost"]["disk_full"] == lost + 50
        (episode,) = meta["problems"]
        assert episode["cause"] == "disk_full" and episode["lost"] == lost + 50 and episode["to"] >= episode["from"]
    finally:
        w.close()
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert [e["ts"] for e in whole_lines(rec)][-20:] == [400.0 + i for i in range(20)]


class TickBackend:
    """A backend that hands the session `per_poll` TCP events per poll, stamped with the wall clock."""
    name = "test"

    def __init__(self, per_poll: int):
        self.per_poll, self.n = per_poll, 0

    def open(self, sink) -> None:
        self.sink = sink

    def poll(self, timeout_s: float) -> None:
        for _ in range(self.per_poll):
            self.n += 1
            self.sink(tcp(time.time(), pid=self.n))
        time.sleep(min(timeout_s, 0.01))

    def close(self) -> None:
        pass

    def lost(self) -> dict[str, int]:
        return {"tcp:tcp_send_reset": 0}

    def meta(self) -> dict:
        return {"capabilities": ["tcp_states"]}


@pytest.mark.kernel
def test_a_recording_goes_on_through_a_full_disk(small_fs, capsys, sigtrace_cli):
    from sigtrace.record import RecordSession
    rec = small_fs / "rec"
    session = RecordSession(TickBackend(per_poll=5), rec, live=False, live_reports=False)
    freed_at: list[float] = []

    def disk_trouble() -> None:
        time.sleep(0.7)
        filler = fill(small_fs)
        time.sleep(1.5)
        filler.unlink()
        freed_at.append(time.time())
    t = threading.Thread(target=disk_trouble)
    t.start()
    try:
        result = session.run(duration=4.0)
    finally:
        t.join()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sigtrace: warning: ") and "No space left on device" in err[0]
    meta = json.loads((rec / "meta.json").read_text())
    disk = meta["output"]["lost"]["disk_full"]
    assert disk > 100 and result.lost_events == disk == meta["lost_events"]
    assert result.lost_by_probe["disk_full"] == disk
    (episode,) = meta["output"]["problems"]
    assert episode["cause"] == "disk_full" and episode["to"] is not None and episode["lost"] == disk
    events = whole_lines(rec)                                    # every line whole
    assert len(events) == meta["events"] == result.events
    assert max(e["ts"] for e in events) > freed_at[0] + 1.0     # it went on after the space came back
    r = sigtrace_cli("report", str(rec), "--format", "json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["lost_events"] == disk
    assert f"{disk} events were lost by the recorder ({disk} not written: disk full)" in report["incomplete"]


def test_an_output_directory_removed_while_recording_is_recreated_and_counted(tmp_path):
    warnings: list[str] = []
    rec = tmp_path / "rec"
    w = EventWriter(rec, flush_interval=3600, warn=warnings.append)
    w.check_every_s = 0                                   # check at every tick (the timer's is 1 s)
    try:
        for i in range(5):
            w.write(tcp(1.0 + i))
        w.flush()
        w.maintain()                                      # checked: these 5 are safe on disk
        for i in range(7):
            w.write(tcp(10.0 + i))
        w.flush()                                         # these 7 reach the file...
        shutil.rmtree(rec)                                # ...which someone removes with its directory
        w.maintain()
        assert rec.is_dir() and rec.stat().st_uid == os.geteuid()
        for i in range(3):
            w.write(tcp(20.0 + i))
        w.flush()
        meta = w.meta()["output"]
        assert meta["lost"]["write_failed"] == 7 and meta["recreated"] == 1
        assert meta["problems"][0]["error"] == "the output directory was removed while recording"
        assert w.write_meta({"node": "n", "end": None, "lost_events": 7, "output": meta})
    finally:
        w.close()
    assert len(warnings) == 1 and "was removed while recording; re-created it" in warnings[0]
    assert [p.name for _, p in list_segments(rec)] == ["events-000002.jsonl"]
    got = read_recording(rec)
    assert list(got.events.ts) == [20.0, 21.0, 22.0]
    assert "segment 1 missing (removed?): what this recording held before its first kept segment is missing" \
        in got.incomplete
    assert "7 events were lost by the recorder (7 not written: output directory removed or not writable)" \
        in got.incomplete


def test_a_symlink_planted_where_the_directory_was_is_never_written_through(tmp_path):
    warnings: list[str] = []
    rec, elsewhere = tmp_path / "rec", tmp_path / "elsewhere"
    elsewhere.mkdir()
    w = EventWriter(rec, flush_interval=3600, warn=warnings.append)
    w.check_every_s = 0
    try:
        w.write(tcp(1.0))
        w.flush()
        w.maintain()
        shutil.rmtree(rec)
        os.symlink(elsewhere, rec)                        # planted in its place
        for i in range(4):
            w.write(tcp(2.0 + i))
        w.maintain()
        assert w.lost()["write_failed"] == 4 and w.meta()["output"]["failing"] == "write_failed"
        assert not w.write_meta({"node": "n"})            # meta.json is not written through it either
        os.unlink(rec)
        rec.mkdir()
        os.chown(rec, 65534, 65534)                       # a directory of someone else's in its place
        w.write(tcp(9.0))
        w.maintain()
        assert w.lost()["write_failed"] == 5
        rec.rmdir()                                       # gone for good: we re-create it ourselves
        w.write(tcp(10.0))
        w.maintain()
        assert w.meta()["output"]["failing"] is None
    finally:
        w.close()
    assert list(elsewhere.iterdir()) == []
    assert [e["ts"] for e in whole_lines(rec)] == [10.0]
    assert len(warnings) == 1 and "symlink or not a directory" in warnings[0]


def test_planted_names_in_a_shared_output_directory_are_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.symlink(victim, shared / ".sigtrace-write-test")    # the probe name older versions used
    os.symlink(victim, shared / "meta.json.tmp")
    os.symlink(victim, shared / "meta.json")
    # a directory holding files sigtrace did not make is refused as an output at all...
    with pytest.raises(UsageProblem, match="holds no sigtrace recording"):
        prepare_output_dir(shared)
    # ...and meta.json is still never written through a planted link
    write_meta(shared, {"node": "n"})
    assert victim.read_text() == "precious\n"
    assert not (shared / "meta.json").is_symlink() and json.loads((shared / "meta.json").read_text()) == {"node": "n"}
    assert sorted(p.name for p in shared.iterdir()) == [".sigtrace-write-test", "meta.json"]

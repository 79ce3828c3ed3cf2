"""Bounded disk: segment rotation (size, injected time), the disk budget across an agent's runs
(size, age, meta.json's pruned counts), and readers that read segments and runs as one recording.
Everything on real files; times come from an injected clock and os.utime, never from sleeping."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import REPO
from sigtrace.events import schema as S
from sigtrace.events.reader import read_recording
from sigtrace.events.segments import (DiskBudget, list_segments, parse_duration, parse_size, run_dirs_under,
                                      segment_name, segment_seq)
from sigtrace.events.writer import EventWriter
from sigtrace.export.write import have_pyarrow

DATA = Path(__file__).parent / "data"
DAY = 86400.0


class Clock:
    """Wall clock for the writer and the budget, moved by hand."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def tcp(ts: float, pid: int = 7) -> dict:
    return S.new_event(S.TCP_STATE, ts, pid=pid, comm="nginx", pod_uid="pod-a", saddr="10.0.0.1", sport=8080,
                       daddr="10.0.0.2", dport=40000 + pid, old_state="ESTABLISHED", new_state="FIN_WAIT1",
                       sock=f"{pid:016x}")


def lines_of(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path.name} does not end with a whole line"
    return [json.loads(line) for line in data.splitlines()]


def all_lines(directory: Path) -> list[dict]:
    """Every event of a run's segments, JSONL or columnar (a session compacts the closed ones)."""
    from sigtrace.events.columnar import is_columnar, read_tables
    out: list[dict] = []
    for _, p in list_segments(directory):
        if is_columnar(p):
            out += [{k: v for k, v in row.items() if v is not None} for t in read_tables(p) for row in t.to_pylist()]
        else:
            out += lines_of(p)
    return out


def our_meta(**kw) -> dict:
    return {"schema_version": 1, "node": "node-a", "backend": "bpf", "kernel": "6.1", "start": 1.0, "end": 2.0,
            "lost_events": 0, "capabilities": ["signal_sender"], **kw}


def make_run(root: Path, name: str, sizes: list[int], mtime: float, *, step: float = 60.0, meta: dict | None = None,
             reports: int = 0) -> Path:
    """A finished run: segments of the given sizes (whole lines), written `step` s apart from mtime."""
    run = root / name
    run.mkdir(parents=True)
    for i, size in enumerate(sizes, 1):
        line = json.dumps({"ts": mtime + i * step, "kind": "process_exit", "pid": i}).encode() + b"\n"
        body = line * max(1, size // len(line))
        p = run / segment_name(i)
        p.write_bytes(body)
        os.utime(p, (mtime + i * step, mtime + i * step))
    (run / "meta.json").write_text(json.dumps(meta if meta is not None else our_meta()))
    os.utime(run / "meta.json", (mtime + len(sizes) * step,) * 2)
    if reports:
        (run / "reports").mkdir()
        (run / "reports" / "pod.json").write_bytes(b"{}" + b" " * (reports - 2))
        os.utime(run / "reports" / "pod.json", (mtime,) * 2)
    return run


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# ---- names, sizes, durations ------------------------------------------------------------------------
def test_segment_names_sort_in_write_order():
    assert [segment_name(n) for n in (1, 2, 12)] == ["events.jsonl", "events-000002.jsonl", "events-000012.jsonl"]
    assert [segment_seq(n) for n in ("events.jsonl", "events-000002.jsonl", "events-1234567.jsonl")] == [1, 2, 1234567]
    assert segment_seq("events.jsonl.tmp") is None and segment_seq("meta.json") is None


@pytest.mark.parametrize("text, want", [("1Gi", 1 << 30), ("1GiB", 1 << 30), ("2G", 2 * 10**9), ("64MiB", 64 << 20),
                                        ("512 Mi", 512 << 20), ("1.5Ki", 1536), ("4096", 4096), ("none", None)])
def test_sizes_follow_kubernetes_units(text, want):
    assert parse_size(text) == want


@pytest.mark.parametrize("text, want", [("7d", 7 * DAY), ("12h", 43200), ("30m", 1800), ("90", 90), ("2w", 14 * DAY),
                                        ("unlimited", None)])
def test_durations(text, want):
    assert parse_duration(text) == want


@pytest.mark.parametrize("bad", ["1 parsec", "-1G", "0", "G", ""])
def test_bad_sizes_and_durations_are_refused(bad):
    with pytest.raises(ValueError):
        parse_size(bad)
    with pytest.raises(ValueError):
        parse_duration(bad.replace("G", "x"))


def test_cli_bad_caps_are_one_line(sigtrace_cli, tmp_path):
    r = sigtrace_cli("record", "--output", str(tmp_path / "d"), "--max-disk", "lots")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "'lots' is not a size" in r.stderr
    r = sigtrace_cli("record", "--output", str(tmp_path / "d"), "--max-disk", "10Ki")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "sigtrace: error: --max-disk 10240: too small to hold a recording; give at least 1MiB (or none)"]
    r = sigtrace_cli("agent", "--output", str(tmp_path / "a"), "--node", "n", "--max-age", "soon")
    assert r.returncode == 2 and "'soon' is not a duration" in r.stderr and "Traceback" not in r.stderr


# ---- rotation ---------------------------------------------------------------------------------------
def test_rotation_by_size_keeps_whole_lines_order_and_durability(tmp_path):
    w = EventWriter(tmp_path, flush_interval=3600, segment_bytes=4096)
    try:
        for i in range(300):
            w.write(tcp(1000.0 + i, pid=i))
            if i % 10 == 9:
                w.flush()                                  # a backend batch of 10
        segs = list_segments(tmp_path)
        assert len(segs) >= 6
        assert [p.name for _, p in segs[:3]] == ["events.jsonl", "events-000002.jsonl", "events-000003.jsonl"]
        line = len(json.dumps(tcp(1000.0)).encode())      # about: a batch may run over, never more
        for _, p in segs[:-1]:
            assert 4096 <= p.stat().st_size < 4096 + 10 * (line + 40)
        # in the newest segment too, a signal goes out at once with what was buffered before it
        w.write(tcp(2000.0))
        w.write(S.new_event(S.SIGNAL_DELIVER, 2001.0, pid=1, sig="SIGTERM"))
        assert [e["kind"] for e in lines_of(w.path)][-2:] == [S.TCP_STATE, S.SIGNAL_DELIVER]
    finally:
        w.close()
    got = all_lines(tmp_path)
    assert [e["ts"] for e in got] == [1000.0 + i for i in range(300)] + [2000.0, 2001.0]


def test_rotation_by_time_uses_the_injected_clock(tmp_path):
    clock = Clock()
    w = EventWriter(tmp_path, flush_interval=3600, segment_age_s=3600, clock=clock)
    try:
        w.write(tcp(1.0))
        w.flush()
        clock.now += 3599
        w.maintain()
        assert [p.name for _, p in list_segments(tmp_path)] == ["events.jsonl"]
        clock.now += 1
        w.maintain()
        assert [p.name for _, p in list_segments(tmp_path)] == ["events.jsonl", "events-000002.jsonl"]
        clock.now += 5 * 3600                               # idle: an empty segment is not rotated
        w.maintain()
        assert len(list_segments(tmp_path)) == 2
        w.write(tcp(2.0))
        w.maintain()                                        # flushed, then rotated: it is older than an hour
        assert len(list_segments(tmp_path)) == 3
    finally:
        w.close()
    assert [e["ts"] for e in all_lines(tmp_path)] == [1.0, 2.0]


def test_a_new_writer_continues_a_whole_segment_and_starts_after_a_cut_one(tmp_path):
    with EventWriter(tmp_path, flush_interval=3600) as w:
        w.write(tcp(1.0))
    with EventWriter(tmp_path, flush_interval=3600) as w:           # as `record` into the same DIR always did
        w.write(tcp(2.0))
    assert [p.name for _, p in list_segments(tmp_path)] == ["events.jsonl"]
    with open(tmp_path / "events.jsonl", "ab") as fh:
        fh.write(b'{"ts": 3.0, "kind": "process_ex')                  # a SIGKILLed recorder's last line
    with EventWriter(tmp_path, flush_interval=3600) as w:
        w.write(tcp(4.0))
    assert [p.name for _, p in list_segments(tmp_path)] == ["events.jsonl", "events-000002.jsonl"]
    rec = read_recording(tmp_path)
    assert list(rec.events.ts) == [1.0, 2.0, 4.0]
    assert "skipped 1 truncated last line (first at events.jsonl line 3)" in rec.incomplete


def test_a_planted_segment_name_is_skipped_not_opened(tmp_path):
    target = tmp_path / "victim"
    target.write_text("precious\n")
    d = tmp_path / "rec"
    d.mkdir()
    os.symlink(target, d / "events-000002.jsonl")                   # planted where the next segment goes
    w = EventWriter(d, flush_interval=3600, segment_bytes=100)
    try:
        for i in range(5):
            w.write(tcp(float(i)))
            w.flush()
    finally:
        w.close()
    assert target.read_text() == "precious\n"
    assert "events-000003.jsonl" in {p.name for _, p in list_segments(d)}


# ---- the disk budget ----------------------------------------------------------------------------------
def test_size_cap_removes_the_oldest_closed_segments_across_runs_never_the_current(tmp_path):
    root, clock, cap = tmp_path / "root", Clock(time.time()), 1_000_000
    old = make_run(root, "node-a-20260101T000000Z", [150_000] * 4, clock.now - DAY, reports=3000)
    mid = make_run(root, "node-a-20260102T000000Z", [150_000] * 3, clock.now - DAY / 2)
    (root / "status.json").write_text("{}")                         # another writer's file: counted, kept
    (root / "notes").mkdir()                                        # not a recording: never touched
    (root / "notes" / "keep.txt").write_text("x" * 50_000)
    current = root / "node-a-20260103T000000Z"
    budget = DiskBudget(root, current, max_bytes=cap, clock=clock)
    w = EventWriter(current, flush_interval=3600, segment_bytes=1 << 20, budget=budget, clock=clock)
    try:
        assert w.segment_bytes == cap // 8                          # a segment is at most 1/8 of the cap
        for i in range(2500):
            w.write(tcp(clock.now + i, pid=i))
            if i % 50 == 49:
                w.flush()
        assert len(list_segments(current)) >= 4
        w.maintain()
        runs_bytes = tree_bytes(root) - tree_bytes(root / "notes")
        assert runs_bytes <= cap
        # the old run went first (its segments in order, then the emptied directory with its reports),
        # then the oldest of the next run; this run's closed segments are younger and stay
        assert not old.exists()
        left = [p.name for _, p in list_segments(mid)]
        assert left and left[-1] == "events-000003.jsonl" and "events.jsonl" not in left
        assert (current / "events.jsonl").exists()
        assert (root / "notes" / "keep.txt").exists() and (root / "status.json").exists()
        assert w.path.exists()                                      # the segment being written stays
        meta = w.meta()
        pruned = meta["disk"]["pruned"]
        assert pruned["runs"] == 1 and pruned["segments"] == 4 + 3 - len(left)
        assert pruned["bytes"] >= 600_000
        first_kept = json.loads((mid / left[0]).read_bytes().split(b"\n")[0])["ts"]
        assert pruned["oldest_kept_ts"] == first_kept
        # used_bytes is from the scan: the mid run's meta.json grew by its `pruned` note since
        assert abs(meta["disk"]["used_bytes"] - runs_bytes) < 300
        # the partly pruned run's own meta.json says what it lost, and its report says so
        mid_meta = json.loads((mid / "meta.json").read_text())
        assert mid_meta["pruned"]["segments"] == 3 - len(left) and mid_meta["pruned"]["by"] == current.name
        assert any("removed by the recorder's disk cap" in n for n in read_recording(mid).incomplete)
    finally:
        w.close()


def test_age_cap_removes_old_segments_and_runs_but_keeps_the_current_segment(tmp_path):
    root, clock = tmp_path / "root", Clock(time.time())
    ancient = make_run(root, "node-a-1", [1000] * 2, clock.now - 10 * DAY, reports=100)
    straddling = make_run(root, "node-a-2", [1000] * 3, clock.now - 7 * DAY - 120, step=100)
    current = root / "node-a-3"
    budget = DiskBudget(root, current, max_age_s=7 * DAY, clock=clock)
    w = EventWriter(current, flush_interval=3600, segment_age_s=DAY, budget=budget, clock=clock)
    try:
        w.write(tcp(clock.now))
        w.maintain()
        assert not ancient.exists()                               # all older than 7 days, reports too
        # segment 1 was written 7 d + 20 s ago: gone; 2 and 3 (80 s and 180 s younger) stay
        assert [p.name for _, p in list_segments(straddling)] == ["events-000002.jsonl", "events-000003.jsonl"]
        clock.now += 8 * DAY                                      # a week later, nothing new was written
        w.maintain()                                              # the current segment rotates (a day old)...
        w.maintain()
        assert not straddling.exists()
        assert w.path.exists() and w.path.name == "events-000002.jsonl"
        assert not (current / "events.jsonl").exists()            # ...and the closed one ages out
        assert w.meta()["pruned"]["segments"] == 1                # this run's own loss, for its meta.json
    finally:
        w.close()


def test_a_run_recording_for_weeks_sheds_old_reports_by_age_and_rather_than_its_current_segment(tmp_path):
    root, clock = tmp_path / "root", Clock(time.time())
    current = root / "node-a-1"
    (current / "reports").mkdir(parents=True)
    for i in range(10):                                # reports of pods that stopped 10 days ago ... 1 day ago
        f = current / "reports" / f"pod-{i}.json"
        f.write_bytes(b"{}" + b" " * 29_998)
        os.utime(f, (clock.now - (10 - i) * DAY,) * 2)
    (current / "reports" / "pod-x.json.tmp").write_bytes(b"{")   # being written: never removed
    budget = DiskBudget(root, current, max_bytes=200_000, max_age_s=7 * DAY, clock=clock)
    w = EventWriter(current, flush_interval=3600, budget=budget, clock=clock)
    try:
        for i in range(60):                            # ~17 kB: below the 25 kB segment size, no closed segment
            w.write(tcp(clock.now + i, pid=i))
        w.maintain()
        # pod-0..2 are older than 7 days; then 7 x 30 kB + the events is over the cap and no closed
        # segment is left to remove: the oldest report goes, not the segment being written
        assert sorted(p.name for p in (current / "reports").iterdir()) == \
            [f"pod-{i}.json" for i in range(4, 10)] + ["pod-x.json.tmp"]
        assert tree_bytes(root) <= 200_000 and len(all_lines(current)) == 60
        assert w.meta()["disk"]["pruned"]["reports"] == 4
    finally:
        w.close()


def test_a_directory_with_a_foreign_meta_json_is_not_removed(tmp_path):
    root, clock = tmp_path / "root", Clock()
    other = root / "someone-elses"
    other.mkdir(parents=True)
    (other / "meta.json").write_text('{"title": "not a recording"}')
    os.utime(other / "meta.json", (clock.now - 100 * DAY,) * 2)
    current = root / "node-a-1"
    w = EventWriter(current, flush_interval=3600, clock=clock,
                    budget=DiskBudget(root, current, max_bytes=1 << 20, max_age_s=DAY, clock=clock))
    try:
        w.write(tcp(1.0))
        w.maintain()
    finally:
        w.close()
    assert (other / "meta.json").exists()


class TickBackend:
    """A backend that hands the session `per_poll` TCP events per poll (real time stamps)."""
    name = "test"

    def __init__(self, per_poll: int = 20, pause_s: float = 0.01):
        self.per_poll, self.pause_s, self.n = per_poll, pause_s, 0

    def open(self, sink) -> None:
        self.sink = sink

    def poll(self, timeout_s: float) -> None:
        for _ in range(self.per_poll):
            self.n += 1
            self.sink(tcp(time.time(), pid=self.n))
        time.sleep(min(timeout_s, self.pause_s))

    def close(self) -> None:
        pass

    def lost(self) -> dict[str, int]:
        return {"tcp": 0}

    def meta(self) -> dict:
        return {"capabilities": ["tcp_states"]}


def test_an_agent_restart_records_a_new_run_within_the_same_cap(tmp_path):
    """Two sessions as two agent starts: the second one's pruning sees the first one's run."""
    from sigtrace.record import RecordSession
    root = tmp_path / "root"
    cap = 1 << 20
    first = RecordSession(TickBackend(per_poll=100), root / "node-a-1", live=False, live_reports=False,
                          max_disk=cap, disk_root=root, segment_bytes=64 << 10)
    r1 = first.run(duration=2.0)
    assert r1.events > 5000 and r1.events * 200 > 2 * cap     # it had to prune
    assert tree_bytes(root) <= cap
    meta1 = json.loads((root / "node-a-1" / "meta.json").read_text())
    assert meta1["disk"]["max_bytes"] == cap and meta1["output"]["segments_started"] > 1
    assert meta1["pruned"]["segments"] > 0 and meta1["events"] == r1.events
    second = RecordSession(TickBackend(per_poll=100), root / "node-a-2", live=False, live_reports=False,
                           max_disk=cap, disk_root=root, segment_bytes=64 << 10)
    second.run(duration=2.0)
    assert tree_bytes(root) <= cap
    meta2 = json.loads((root / "node-a-2" / "meta.json").read_text())
    assert meta2["disk"]["pruned"]["segments"] > 0
    first_left = [s for s, _ in list_segments(root / "node-a-1")]
    assert not first_left or first_left[0] > 1      # the first run lost its oldest segments first
    # the whole root still reads as one recording, every line whole
    rec = read_recording(root)
    assert len(rec.events) == sum(len(all_lines(r)) for r in run_dirs_under(root))


# ---- readers: segments and runs read as one -------------------------------------------------------
def rewrite_segmented(src: Path, dst: Path, segment_bytes: int) -> int:
    """Write src's events again through the writer, rotating every segment_bytes; copy meta.json."""
    events = [json.loads(line) for line in (src / "events.jsonl").read_text().splitlines() if line.strip()]
    with EventWriter(dst, flush_interval=3600, segment_bytes=segment_bytes) as w:
        for i, e in enumerate(events):
            w.write(e)
            if i % 7 == 6:
                w.flush()
    shutil.copy(src / "meta.json", dst / "meta.json")
    return len(list_segments(dst))


def split_runs(src: Path, root: Path, at: float) -> None:
    """src as two runs of one agent, the second starting where the first ended (no gap)."""
    meta = json.loads((src / "meta.json").read_text())
    lines = [line for line in (src / "events.jsonl").read_text().splitlines() if line.strip()]
    a = [line for line in lines if json.loads(line)["ts"] < at]
    b = [line for line in lines if json.loads(line)["ts"] >= at]
    for name, part, m in (("n-1", a, {**meta, "end": at}), ("n-2", b, {**meta, "start": at})):
        (root / name).mkdir(parents=True)
        (root / name / "events.jsonl").write_text("".join(line + "\n" for line in part))
        (root / name / "meta.json").write_text(json.dumps(m))


CASES = sorted(p.parent.name for p in DATA.glob("*/events.jsonl"))


@pytest.mark.parametrize("case", CASES)
def test_segmented_and_multi_run_recordings_report_like_the_single_file(tmp_path, case):
    from sigtrace.report import build_reports
    from sigtrace.render.json import render_json

    def report(d: Path, fast: bool) -> str:
        rec = read_recording(d, fast=fast)
        return render_json(build_reports(rec.events, rec.meta, rec.incomplete, lanes=False))
    want = report(DATA / case, True)
    seg = tmp_path / "seg"
    assert rewrite_segmented(DATA / case, seg, max(300, (DATA / case / "events.jsonl").stat().st_size // 4)) >= 3
    runs = tmp_path / "root"
    ts = sorted(json.loads(line)["ts"] for line in (DATA / case / "events.jsonl").read_text().splitlines())
    split_runs(DATA / case, runs, ts[len(ts) // 2])
    for d in (seg, runs):
        for fast in ((True, False) if have_pyarrow() else (False,)):
            assert report(d, fast) == want, (d.name, fast)


def test_report_cli_on_a_generated_recording_segments_and_runs_byte_for_byte(tmp_path, sigtrace_cli):
    from bench.synth import generate
    single = tmp_path / "single"
    generate(single, 6000, events_per_pod=300)
    seg = tmp_path / "seg"
    assert rewrite_segmented(single, seg, 64 << 10) >= 5
    runs = tmp_path / "agent-root"
    ts = sorted(json.loads(line)["ts"] for line in (single / "events.jsonl").read_text().splitlines())
    split_runs(single, runs, ts[len(ts) // 3])
    want = sigtrace_cli("report", str(single), "--format", "json")
    assert want.returncode == 0, want.stderr
    assert len(json.loads(want.stdout)["pods"]) > 10
    for d in (seg, runs):
        got = sigtrace_cli("report", str(d), "--format", "json")
        assert got.returncode == 0, got.stderr
        assert got.stdout == want.stdout, d.name
    # export reads an agent root run by run: the same rows as the single file
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert sigtrace_cli("export", str(single), "--csv", str(a)).returncode == 0
    assert sigtrace_cli("export", str(runs), "--csv", str(b)).returncode == 0
    assert a.read_bytes() == b.read_bytes()


def test_runs_with_a_gap_and_of_two_nodes(tmp_path, sigtrace_cli):
    root = tmp_path / "root"
    split_runs(DATA / "article", root, 1020.0)
    meta = json.loads((root / "n-1" / "meta.json").read_text())
    (root / "n-1" / "meta.json").write_text(json.dumps({**meta, "end": None, "alive_at": 1015.0}))
    rec = read_recording(root)
    gap = [n for n in rec.incomplete if n.startswith("no recording from")]
    assert gap == ["no recording from 1970-01-01 00:16:55.000000 UTC to 1970-01-01 00:17:00.000000 UTC "
                   "(5.0 s; n-1 was killed (no end time), then n-2 started): events in between are missing"]
    assert rec.meta["runs"][0]["dir"] == "n-1" and rec.meta["start"] == meta["start"]
    m2 = json.loads((root / "n-2" / "meta.json").read_text())
    (root / "n-2" / "meta.json").write_text(json.dumps({**m2, "node": "node-9"}))
    r = sigtrace_cli("report", str(root))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "2 nodes (node-1, node-9)" in r.stderr


def test_kubectl_report_finds_runs_whose_first_segment_was_pruned(tmp_path):
    from sigtrace.events.segments import run_dirs_under as recordings_under   # what kubectl sigtrace report reads
    run = make_run(tmp_path / "node-a", "node-a-1", [100] * 3, 1000.0)
    (run / "events.jsonl").unlink()
    make_run(tmp_path / "node-b", "node-b-1", [100], 1000.0)
    assert recordings_under(tmp_path) == [run, tmp_path / "node-b" / "node-b-1"]


def test_readme_documents_the_disk_options():
    readme = (REPO / "README.md").read_text()
    for word in ("--max-disk", "--max-age", "--segment-size", "events-000002.jsonl", "disk_full", "write_failed"):
        assert word in readme, word

"""Reports in parts by pod (sigtrace.events.partition, report.build.report_recording): the same
reports, byte for byte, as the whole recording's. Every recording under tests/data is split into
many small parts (a few hundred bytes each), so a pod's report is made from its own events only,
and the node-wide parts (ReplicaSets, the last event, resets outside a stop) from the summaries."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import pytest

from sigtrace.events.partition import split_recording
from sigtrace.events.reader import read_recording
from sigtrace.events.source import plan_recording
from sigtrace.render import render
from sigtrace.render.json import render_json
from sigtrace.report import build_reports
from sigtrace.report import build, workers
from sigtrace.report.build import report_parts, report_recording

DATA = Path(__file__).parent / "data"
RECORDINGS = sorted(p.parent for p in DATA.rglob("events.jsonl"))


def whole(rec_dir: Path) -> str:
    rec = read_recording(rec_dir)
    return render_json(build_reports(rec.events, rec.meta, rec.incomplete))


@pytest.mark.parametrize("jobs", [1, 3])
@pytest.mark.parametrize("rec_dir", RECORDINGS, ids=lambda p: str(p.relative_to(DATA)))
def test_parts_give_the_whole_recordings_reports(rec_dir, jobs):
    """jobs 1: part after part in this process; 3: in worker processes, parts finishing in any order."""
    parts = split_recording(plan_recording(rec_dir), part_bytes=300)
    if parts is None:
        pytest.skip("not clean: read whole by the tolerant reader")
    try:
        assert parts.n_parts > 1
        assert render_json(report_parts(parts, jobs=jobs)) == whole(rec_dir)
    finally:
        parts.close()
    assert not multiprocessing.active_children()        # the workers are gone with the report


def test_many_pods_in_workers_are_the_whole_recordings_reports(tmp_path):
    """A node of many pods (the test recordings' pods cloned, as the benchmark's synthetic
    recordings are) split into parts that worker processes correlate side by side: the same
    document, byte for byte, as part after part in one process and as the whole recording."""
    from bench import synth
    synth.generate(tmp_path, 6000, events_per_pod=120, seed=11)
    expected = whole(tmp_path)
    for jobs in (1, 2, 4):
        parts = split_recording(plan_recording(tmp_path), part_bytes=100_000)
        assert parts is not None and len(parts.units()) >= 8
        try:
            assert render_json(report_parts(parts, jobs=jobs)) == expected, jobs
        finally:
            parts.close()
    assert not multiprocessing.active_children()


def test_a_bad_value_found_by_a_worker_reads_the_recording_whole(tmp_path):
    """One part of many holds a value the tolerant reader skips: the worker that finds it raises,
    the other workers are ended, and the recording is read whole as in one process."""
    from bench import synth
    synth.generate(tmp_path, 3000, events_per_pod=120, seed=13)
    path = tmp_path / "events.jsonl"
    lines = path.read_text().splitlines()
    at = next(i for i in range(len(lines) // 2, len(lines)) if '"pid"' in lines[i] and '"pod_uid"' in lines[i])
    lines[at] = json.dumps({**json.loads(lines[at]), "ts": -1.0})
    path.write_text("\n".join(lines) + "\n")
    rs = report_recording(tmp_path, lanes=True, part_bytes=50_000, jobs=3)
    assert any("ts out of range" in n for n in rs.incomplete), rs.incomplete
    assert render_json(rs) == whole(tmp_path)
    assert not multiprocessing.active_children()


def test_a_worker_killed_is_one_error(monkeypatch, tmp_path):
    """A worker that dies (the OOM killer's SIGKILL) ends the report with WorkerDied, whose one
    line says what to do; no worker is left behind."""
    def killed(job, unit):
        os.kill(os.getpid(), signal.SIGKILL)
    monkeypatch.setattr(workers, "report_unit", killed)       # what the forked workers run
    from bench import synth
    synth.generate(tmp_path, 2000, events_per_pod=120, seed=5)
    parts = split_recording(plan_recording(tmp_path), part_bytes=50_000)
    assert parts is not None and len(parts.units()) > 1
    try:
        with pytest.raises(workers.WorkerDied, match="--jobs 1"):
            report_parts(parts, jobs=2)
    finally:
        parts.close()
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("fmt", ["text", "html"])
@pytest.mark.parametrize("rec_dir", RECORDINGS, ids=lambda p: str(p.relative_to(DATA)))
def test_parts_render_as_the_whole_recording(rec_dir, fmt):
    """The reports of parts are kept compact (report.model.PodStore) and read back for text and
    HTML: the same document as from the reports of the whole recording."""
    parts = split_recording(plan_recording(rec_dir), part_bytes=300)
    if parts is None:
        pytest.skip("not clean: read whole by the tolerant reader")
    try:
        rs = report_parts(parts, lanes=True)
    finally:
        parts.close()
    rec = read_recording(rec_dir)
    assert render(rs, fmt) == render(build_reports(rec.events, rec.meta, rec.incomplete, lanes=True), fmt)


def article_with(tmp_path: Path, change) -> Path:
    """The article's recording in tmp_path, its lines (a list) changed by change."""
    src = DATA / "article"
    shutil.copy(src / "meta.json", tmp_path / "meta.json")
    lines = (src / "events.jsonl").read_text().splitlines()
    change(lines)
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_events_out_of_time_order_keep_their_rows(tmp_path):
    """Rows are labelled by their place in time order, as the whole frame numbers them."""
    def swap(lines: list[str]) -> None:
        lines[2], lines[5] = lines[5], lines[2]
    article_with(tmp_path, swap)
    parts = split_recording(plan_recording(tmp_path), part_bytes=500)
    assert parts is not None
    try:
        assert render_json(report_parts(parts)) == whole(tmp_path)
    finally:
        parts.close()


@pytest.mark.parametrize("jobs", [1, 3])
def test_a_bad_value_reads_the_recording_whole(tmp_path, jobs):
    """A value the tolerant reader skips sends the recording to it, with its note; found by a
    worker process (jobs 3), it is raised in the parent as in one process."""
    def negative_ts(lines: list[str]) -> None:
        lines[3] = json.dumps({**json.loads(lines[3]), "ts": -1.0})
    article_with(tmp_path, negative_ts)
    rs = report_recording(tmp_path, lanes=True, part_bytes=500, jobs=jobs)
    assert any("ts out of range" in n for n in rs.incomplete)
    assert render_json(rs) == whole(tmp_path)


def test_a_bad_value_on_a_host_row_reads_the_recording_whole(tmp_path):
    """A row of no pod is in no part: it is checked while splitting, as the whole read checks it."""
    def host_row(lines: list[str]) -> None:
        e = {k: v for k, v in json.loads(lines[3]).items() if k not in ("pod_uid", "target_pod_uid",
                                                                        "container_id", "target_container_id")}
        lines.insert(4, json.dumps({**e, "pid": -5}))
    article_with(tmp_path, host_row)
    rs = report_recording(tmp_path, lanes=True, part_bytes=500)
    assert any("pid" in n for n in rs.incomplete), rs.incomplete
    assert render_json(rs) == whole(tmp_path)


@pytest.mark.parametrize("rec_dir", RECORDINGS, ids=lambda p: str(p.relative_to(DATA)))
def test_a_big_frame_is_reported_in_parts_the_same(rec_dir, monkeypatch):
    """build_reports of a frame past PART_EVENTS (an export's node in `analyze`) goes part by part."""
    expected = whole(rec_dir)
    monkeypatch.setattr(build, "PART_EVENTS", 40)
    rec = read_recording(rec_dir)
    assert render_json(build_reports(rec.events, rec.meta, rec.incomplete)) == expected


def test_chunks_are_whole_lines(monkeypatch):
    """A file is read in chunks of whole lines, whatever the chunk size."""
    from sigtrace.events.jsonl_tables import json_chunks
    path = DATA / "article" / "events.jsonl"
    chunks = [c.read() for c, _ in json_chunks(path, path.stat().st_size, 1000)]
    assert len(chunks) > 2 and all(c.endswith(b"\n") for c in chunks)
    assert b"".join(chunks) == path.read_bytes()

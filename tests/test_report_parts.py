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


def test_a_part_a_worker_finds_not_clean_reads_the_recording_whole(tmp_path, monkeypatch):
    """A part whose frame a worker cannot make (NotClean: a value the checks in the split did not
    catch) raises in the parent, the other workers are ended, and the recording is read whole as in
    one process: the same document."""
    from bench import synth
    from sigtrace.events import partition
    synth.generate(tmp_path, 3000, events_per_pod=120, seed=13)
    real = partition.PodParts.frame

    def frame(self, i):
        if i == self.units()[len(self.units()) // 2]:
            raise partition.NotClean(f"part {i}")
        return real(self, i)
    monkeypatch.setattr(partition.PodParts, "frame", frame)        # what the forked workers run
    rs = report_recording(tmp_path, lanes=True, part_bytes=50_000, jobs=3)
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
def test_a_bad_value_is_skipped_as_the_whole_read_skips_it(tmp_path, jobs):
    """A value the tolerant reader skips is skipped while splitting, with its note, whether the parts
    are then reported in this process or in workers (jobs 3)."""
    def negative_ts(lines: list[str]) -> None:
        lines[3] = json.dumps({**json.loads(lines[3]), "ts": -1.0})
    article_with(tmp_path, negative_ts)
    rs = report_recording(tmp_path, lanes=True, part_bytes=500, jobs=jobs)
    assert any("ts out of range" in n for n in rs.incomplete)
    assert render_json(rs) == whole(tmp_path)


def test_a_bad_value_on_a_host_row_is_skipped_as_the_whole_read_skips_it(tmp_path):
    """A row of no pod is in no part: it is checked while splitting, as the whole read checks it,
    and its note is the whole read's."""
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


def test_lines_past_the_cap_are_given_alike_by_chunks_and_by_lines(monkeypatch):
    """json_chunks (the fast path, the parts) and capped_lines (the tolerant reader) cut the same
    lines, in the same places, whatever the chunk size: random files of short, long and endless
    lines, with and without a last newline."""
    import io
    import random
    from sigtrace.events import jsonl_tables as jt
    monkeypatch.setattr(jt, "MAX_LINE_BYTES", 64)
    rnd = random.Random(7)
    for _ in range(400):
        lines = [b"x" * rnd.choice([0, 1, 30, 63, 64, 65, 100, 400]) for _ in range(rnd.randint(1, 12))]
        data = b"\n".join(lines) + (b"\n" if rnd.random() < 0.5 else b"")
        want = b"".join(jt.capped_lines(io.BytesIO(data)))
        for chunk_bytes in (16, 64, 200):          # past the cap too: json_chunks clamps its blocks
            got = [(c.read(), n) for c, n, _ in jt.json_chunks(io.BytesIO(data), len(data), chunk_bytes)]
            assert b"".join(c for c, _ in got) == want, (data, chunk_bytes)
            assert sum(n for _, n in got) == len(list(jt.capped_lines(io.BytesIO(data))))
        assert want.count(jt.LONG_LINE.rstrip(b"\n")) == sum(len(x) > 64 for x in lines)


def test_chunks_are_whole_lines(monkeypatch):
    """A file is read in chunks of whole lines, whatever the chunk size."""
    from sigtrace.events.jsonl_tables import json_chunks
    path = DATA / "article" / "events.jsonl"
    chunks = [c.read() for c, _, _ in json_chunks(path, path.stat().st_size, 1000)]
    assert len(chunks) > 2 and all(c.endswith(b"\n") for c in chunks)
    assert b"".join(chunks) == path.read_bytes()


# ---- not clean: what the tolerant reader skips is skipped in the parts too ---------------------------------
def _segmented_synth(d: Path, n: int, per: int = 700) -> list[Path]:
    """A synthetic node of many pods (bench.synth) in JSONL segments of `per` lines each."""
    from bench import synth
    from sigtrace.events.segments import segment_name
    synth.generate(d, n, events_per_pod=120, seed=13)
    lines = (d / "events.jsonl").read_bytes().split(b"\n")[:-1]
    out = []
    for i in range(0, len(lines), per):
        path = d / segment_name(i // per + 1)
        path.write_bytes(b"".join(x + b"\n" for x in lines[i:i + per]))
        out.append(path)
    return out


def _synth_with(tmp_path: Path, change) -> Path:
    """A synthetic node of many pods in JSONL segments, the lines of one in the middle changed."""
    path = _segmented_synth(tmp_path, 3000)[2]
    path.write_bytes(change(path.read_bytes().split(b"\n")[:-1]))
    return tmp_path


def _joined(lines: list[bytes], tail: bytes = b"") -> bytes:
    return b"".join(x + b"\n" for x in lines) + tail


def _at_middle(lines: list[bytes], new: bytes) -> bytes:
    return _joined(lines[:len(lines) // 2] + [new] + lines[len(lines) // 2:])


def _with_field(lines: list[bytes], **fields) -> bytes:
    at = next(i for i in range(len(lines) // 2, len(lines)) if b'"pod_uid"' in lines[i] and b'"pid"' in lines[i])
    lines[at] = json.dumps({**json.loads(lines[at]), **fields}).encode()
    return _joined(lines)


def _in_parts(d: Path, part_bytes: int = 50_000):
    """The recording's reports split by pod (split_recording must take it), part after part."""
    parts = split_recording(plan_recording(d), part_bytes=part_bytes)
    assert parts is not None and len(parts.units()) > 1
    try:
        return report_parts(parts, jobs=1)
    finally:
        parts.close()


BAD_LINES = {
    "not json": lambda lines: _at_middle(lines, b"{garbage"),
    "blank line": lambda lines: _at_middle(lines, b""),
    "two events on a line": lambda lines: _at_middle(lines, lines[3] + lines[4]),
    "unknown field": lambda lines: _with_field(lines, shoe_size=44),
    "ts out of range": lambda lines: _with_field(lines, ts=-1.0),
    "pid out of range": lambda lines: _with_field(lines, pid=2 ** 40),
    "unknown kind": lambda lines: _with_field(lines, kind="signal_sent"),
    "not utf-8": lambda lines: _at_middle(lines, json.dumps({**json.loads(lines[5]), "comm": "@@"}).encode()
                                          .replace(b'"@@"', b'"\xff"')),
    "a signal name with a newline": lambda lines: _with_field(lines, kind="signal_generate", sig="SIGTERM\n"),
    # pyarrow makes no row of the blank line and two of the other: as many rows as lines
    "a blank line and two events on a line": lambda lines: _joined(lines[:10] + [b"  "] + [lines[11] + lines[12]]
                                                                   + lines[13:]),
    "nested past the stack": lambda lines: _at_middle(lines, b"[" * 100_000),
    # past MAX_LINE_BYTES (made 20 KB below): read past, never held, counted
    "a line longer than the cap": lambda lines: _at_middle(lines, b'{"ts": 1.0, "detail": "' + b"x" * 100_000 + b'"}'),
}


@pytest.mark.parametrize("what", list(BAD_LINES))
def test_a_bad_line_is_skipped_in_the_parts_as_the_whole_read_skips_it(tmp_path, monkeypatch, what):
    """A recording copied from elsewhere with one bad line is still split by pod (bounded memory):
    the chunk holding it is read line by line with the tolerant reader's checks, the rest as it is;
    the same reports and the same `incomplete` notes, in the same words and order, as read whole."""
    from sigtrace.events import jsonl_tables, partition
    monkeypatch.setattr(partition, "CHUNK_BYTES", 20_000)        # many chunks: the bad one among them
    monkeypatch.setattr(jsonl_tables, "MAX_LINE_BYTES", 20_000)
    d = _synth_with(tmp_path, BAD_LINES[what])
    assert read_recording(d).events.equals(read_recording(d, fast=False).events)
    got = _in_parts(d)
    assert render_json(got) == whole(d)
    assert got.incomplete == read_recording(d).incomplete
    assert got.incomplete or what == "blank line"          # skipped silently, as the tolerant reader does


@pytest.mark.parametrize("tail", [b'{"ts": 1760000100.5, "kind": "proc', b'{"ts": 1.0, "detail": "' + b"x" * 70_000])
def test_a_truncated_last_line_of_any_length_is_skipped_as_the_whole_read_skips_it(tmp_path, tail):
    """A SIGKILLed recorder's cut last line, short or longer than the 64 KB tail looked at first."""
    with open(_segmented_synth(tmp_path, 3000)[-1], "ab") as fh:
        fh.write(tail)
    got = _in_parts(tmp_path)
    assert render_json(got) == whole(tmp_path)
    assert any("truncated last line" in n for n in got.incomplete)


def test_a_blank_last_line_without_its_newline_is_skipped_without_a_word(tmp_path):
    with open(_segmented_synth(tmp_path, 3000)[-1], "ab") as fh:
        fh.write(b"  \t")
    got = _in_parts(tmp_path)
    assert render_json(got) == whole(tmp_path) and got.incomplete == []


def test_a_damaged_or_bad_columnar_segment_is_read_as_the_whole_read_reads_it(tmp_path):
    """Compacted segments, one cut short (its rows up to the damage kept), one holding a value out
    of range (that row skipped), one a symlink (not followed: unreadable): the parts give the whole
    tolerant read's reports and notes."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    from sigtrace.events.columnar import COMPRESSION, read_tables
    from sigtrace.events.segments import list_segments
    from test_columnar import compact_in_place
    for path in _segmented_synth(tmp_path, 6000, per=1500)[:-1]:
        compact_in_place(tmp_path, path.name)
    arrows = [p for _, p in list_segments(tmp_path) if p.suffix == ".arrow"]
    assert len(arrows) >= 3
    cut = arrows[0]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 2 // 3])
    bad = arrows[1]
    table = pa.concat_tables(list(read_tables(bad)))
    meta = ipc.open_file(bad).schema.metadata
    ts = table.column("ts").to_pylist()
    ts[len(ts) // 2] = -1.0
    table = table.set_column(0, "ts", pa.array(ts, pa.float64())).replace_schema_metadata(meta)
    with ipc.new_file(str(bad), table.schema, options=ipc.IpcWriteOptions(compression=COMPRESSION)) as w:
        w.write_table(table, max_chunksize=1000)
    linked = arrows[2]
    linked.rename(tmp_path / "elsewhere.arrow")
    linked.symlink_to(tmp_path / "elsewhere.arrow")
    got = _in_parts(tmp_path)
    assert render_json(got) == whole(tmp_path)
    assert any("unreadable columnar" in n for n in got.incomplete) and any("ts out of range" in n for n in got.incomplete)
    assert any("symbolic links" in n for n in got.incomplete)


def test_a_segment_written_while_it_is_read_loses_no_event(tmp_path, monkeypatch):
    """The recorder appends a line (not yet whole) between the reader's size and its look at the
    tail: only the bytes up to that size count, so no complete event is cut and nothing is noted."""
    from sigtrace.events import jsonl_tables, partition
    from sigtrace.events.partition import CleanChunks
    last = _segmented_synth(tmp_path, 3000)[-1]
    before = read_recording(tmp_path)
    real = jsonl_tables.complete_part

    def racing(path, size):
        if path == last:
            with open(path, "ab") as fh:
                fh.write(b'{"ts": 1760000999.0, "kind": "process_exec", "pid": 4')
        return real(path, size)
    monkeypatch.setattr(partition, "complete_part", racing)
    chunks = CleanChunks(plan_recording(tmp_path), tolerant=True)
    assert sum(t.num_rows for t, _ in chunks) == len(before.events) and chunks.notes() == before.incomplete == []

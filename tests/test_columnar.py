"""Columnar segments: the recorder's closed segments compacted to Arrow IPC files, read by every
reader as the JSONL they came from; what the fast reader would not take stays JSONL; a damaged or
planted columnar file is counted, never trusted and never a traceback. Real files, a real child
process (python -m sigtrace.events.compact) and the real writer."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, no_waiting
from sigtrace.events import columnar
from sigtrace.events.compact import Compacted, compact_at
from sigtrace.events.compactor import Compactor
from sigtrace.events.partition import split_recording
from sigtrace.events.reader import read_recording
from sigtrace.events.segments import DiskBudget, list_segments, run_dirs_under, segment_seq
from sigtrace.events.source import plan_recording
from sigtrace.events.writer import EventWriter
from sigtrace.export import export_recordings
from sigtrace.render.json import render_json
from sigtrace.report.build import report_parts, report_recording

DATA = Path(__file__).parent / "data"
RECORDINGS = sorted(p.parent for p in DATA.rglob("events.jsonl") if p.parent.name not in ("fleet", "fleet_export"))


def events_of(src: Path) -> list[dict]:
    return [json.loads(line) for line in (src / "events.jsonl").read_text().splitlines() if line.strip()]


def rewrite(src: Path, dst: Path, segment_bytes: int, compact: bool = True) -> EventWriter:
    """src's events written again by the writer, rotating every segment_bytes, with compaction;
    the timer thread's ticks are run by hand until every closed segment is done."""
    w = EventWriter(dst, flush_interval=3600, segment_bytes=segment_bytes, compact=compact)
    for i, e in enumerate(events_of(src)):
        w.write(e)
        if i % 5 == 4:
            w.flush()
            w.maintain()
    settle(w)
    w.close()
    shutil.copy(src / "meta.json", dst / "meta.json")
    return w


def settle(w: EventWriter) -> None:
    """Tick until the compactor has nothing waiting or running."""
    for _ in range(600):
        w.maintain()
        stats = w._compactor.meta() if w._compactor else {}
        if not stats.get("pending") and not stats.get("earlier_runs", {}).get("pending"):
            return
        w._compactor._child and w._compactor._child.wait(timeout=60)
    raise AssertionError("compaction did not finish")


def compact_in_place(d: Path, name: str = "events.jsonl") -> Compacted:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return compact_at(fd, name)
    finally:
        os.close(fd)


@pytest.mark.parametrize("rec_dir", RECORDINGS, ids=lambda p: str(p.relative_to(DATA)))
def test_compacted_recordings_give_the_same_reports(rec_dir, tmp_path):
    """Every test recording written by the writer with compaction on: closed segments are columnar,
    the last one JSONL, and the fast reader, the tolerant reader, the parts and the report all give
    what the JSONL recording gives, byte for byte."""
    size = (rec_dir / "events.jsonl").stat().st_size
    w = rewrite(rec_dir, tmp_path, segment_bytes=max(300, size // 4))
    names = [p.name for _, p in list_segments(tmp_path)]
    assert len(names) > 1 and all(n.endswith(".arrow") for n in names[:-1]) and names[-1].endswith(".jsonl")
    stats = w.meta()["output"]["compaction"]
    assert stats["segments"] == len(names) - 1 and stats["kept_jsonl"] == 0 and stats["pending"] == 0
    assert stats["events"] + len(columnar_free_lines(tmp_path / names[-1])) == len(events_of(rec_dir))

    want, got = read_recording(rec_dir), read_recording(tmp_path)
    assert got.events.equals(want.events) and got.incomplete == want.incomplete
    tolerant = read_recording(tmp_path, fast=False)
    assert tolerant.events.equals(read_recording(rec_dir, fast=False).events)
    expected = render_json(report_recording(rec_dir, lanes=True))
    assert render_json(report_recording(tmp_path, lanes=True)) == expected
    parts = split_recording(plan_recording(tmp_path), part_bytes=300)
    if parts is not None:
        try:
            assert render_json(report_parts(parts, lanes=True)) == expected
        finally:
            parts.close()


def columnar_free_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_a_lying_size_does_not_make_a_big_file_small(tmp_path):
    """The JSONL size in the header is the file's word: a columnar segment is sized at least by its
    rows (from the batch headers), so a lie cannot send a big recording to the whole read."""
    import pyarrow.ipc as ipc
    d = tmp_path / "r"
    shutil.copytree(DATA / "article", d)
    compact_in_place(d)
    table = columnar.read_table(d / "events.arrow")
    schema = columnar.arrow_schema().with_metadata({columnar.JSON_BYTES_KEY: b"0"})
    with ipc.new_file(str(d / "events.arrow"), schema) as fw:
        fw.write_table(table.replace_schema_metadata(schema.metadata))
    assert columnar.recorded_bytes(d / "events.arrow") == table.num_rows * columnar.MIN_EVENT_BYTES


def test_columnar_segments_are_sized_as_their_json(tmp_path):
    """Parts and streaming are planned in JSON bytes: a columnar segment reports its JSONL's size."""
    shutil.copytree(DATA / "article", tmp_path / "r")
    size = (tmp_path / "r" / "events.jsonl").stat().st_size
    result = compact_in_place(tmp_path / "r")
    assert result.kept is None and result.events == len(events_of(DATA / "article"))
    assert sorted(os.listdir(tmp_path / "r")) == ["events.arrow", "meta.json"]
    assert columnar.recorded_bytes(tmp_path / "r" / "events.arrow") == size
    assert columnar.first_ts(tmp_path / "r" / "events.arrow") == events_of(DATA / "article")[0]["ts"]


def test_an_export_of_a_compacted_recording_is_the_same(tmp_path):
    rec = DATA / "article"
    rewrite(rec, tmp_path / "c", segment_bytes=1500)
    export_recordings([rec], csv=str(tmp_path / "a.csv"))
    export_recordings([tmp_path / "c"], csv=str(tmp_path / "c.csv"))
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "c.csv").read_bytes()


@pytest.mark.parametrize("damage,why", [
    (lambda t: t[:-1], "its last line is cut off"),
    (lambda t: t.replace('"kind":', '"kind2": 1, "kind":', 1), "a line the fast reader does not take"),
    (lambda t: t + "not json\n", "a line the fast reader does not take"),
    (lambda t: t.replace('"pid":', '"pid": "x", "p":', 1), "a line the fast reader does not take"),
])
def test_what_the_fast_reader_refuses_stays_jsonl(tmp_path, damage, why):
    """A segment with anything the tolerant reader would skip or list is not compacted: the JSONL
    stays as it is, and the reason is given."""
    d = tmp_path / "r"
    shutil.copytree(DATA / "article", d)
    seg = d / "events.jsonl"
    seg.write_text(damage(seg.read_text()))
    before = seg.read_bytes()
    result = compact_in_place(d)
    assert result.kept is not None and result.kept.startswith(why)
    assert seg.read_bytes() == before and sorted(os.listdir(d)) == ["events.jsonl", "meta.json"]


def test_bad_utf8_stays_jsonl(tmp_path):
    d = tmp_path / "r"
    shutil.copytree(DATA / "article", d)
    seg = d / "events.jsonl"
    seg.write_bytes(seg.read_bytes().replace(b'"comm":"nginx"', b'"comm":"ngi\xffnx"', 1))
    assert b"\xff" in seg.read_bytes()
    assert compact_in_place(d).kept == "an event without ts or kind, or text that is not UTF-8"
    assert sorted(os.listdir(d)) == ["events.jsonl", "meta.json"]


def test_a_segment_pruned_while_compacted_does_not_come_back(tmp_path, monkeypatch):
    """The disk cap removes the JSONL while the child compacts it: the columnar copy goes too."""
    from sigtrace.events import compact
    d = tmp_path / "r"
    shutil.copytree(DATA / "article", d)
    real_link = compact._link

    def link_then_prune(fd, dir_fd, name):
        real_link(fd, dir_fd, name)
        os.unlink(d / "events.jsonl")             # what DiskBudget does from the writer's thread
    monkeypatch.setattr(compact, "_link", link_then_prune)
    assert compact_in_place(d).kept == "pruned by the disk cap while it was compacted"
    assert sorted(os.listdir(d)) == ["meta.json"]


def test_a_columnar_file_beside_its_jsonl_is_named_not_read(tmp_path):
    """Both names of one segment (a compaction killed between its link and its unlink, or a file put
    there): the recorder's JSONL is read, the other one is named in the notes, never silently used."""
    d = tmp_path / "r"
    shutil.copytree(DATA / "article", d)
    shutil.copytree(DATA / "clean", tmp_path / "other")
    compact_in_place(tmp_path / "other")                     # a valid columnar file of other events
    shutil.copy(tmp_path / "other" / "events.arrow", d / "events.arrow")
    assert [p.name for _, p in list_segments(d)] == ["events.jsonl"]
    assert segment_seq("events-000002.arrow") == 2
    for fast in (True, False):
        rec = read_recording(d, fast=fast)
        assert rec.events.equals(read_recording(DATA / "article", fast=fast).events)
        assert any(n.startswith("events.arrow not read: the JSONL segment of the same number is there too")
                   for n in rec.incomplete), rec.incomplete


def test_a_name_taken_before_compaction_keeps_the_jsonl(tmp_path):
    d = tmp_path / "r"
    shutil.copytree(DATA / "article", d)
    (d / "events.arrow").write_bytes(b"planted")
    result = compact_in_place(d)
    assert result.kept == "events.arrow is there already" and result.events == 0
    assert (d / "events.arrow").read_bytes() == b"planted" and (d / "events.jsonl").exists()


@pytest.mark.parametrize("lines", ["two events on one", "blank"])
def test_lines_that_are_not_one_event_stay_jsonl_and_read_as_the_tolerant_reader_does(tmp_path, lines):
    """pyarrow takes `{...}{...}` on one line as two rows (the tolerant reader skips that line as
    unparsable) and skips blank lines: neither the compaction nor the fast reader may take pyarrow's
    reading of such a file; both readers give the tolerant reader's."""
    d = tmp_path / "r"
    shutil.copytree(DATA / "article", d)
    seg = d / "events.jsonl"
    text = seg.read_text()
    seg.write_text(text.replace("\n", "", 1) if lines == "two events on one" else text.replace("\n", "\n\n", 3))
    assert compact_in_place(d).kept == "a line the fast reader does not take (blank, or two events on it)"
    fast, tolerant = read_recording(d), read_recording(d, fast=False)
    assert fast.events.equals(tolerant.events) and fast.incomplete == tolerant.incomplete
    if lines == "blank":
        assert fast.incomplete == [] and len(fast.events) == len(events_of(DATA / "article"))
    else:
        assert any("unparsable lines" in n for n in fast.incomplete)


def test_compaction_keeps_the_segments_time_and_names_its_first_event(tmp_path):
    """--max-age counts from the events' last write, not from the compaction; the first event's ts
    is in the header, read without pyarrow (the recorder's disk cap reads it)."""
    d = tmp_path / "r"
    shutil.copytree(DATA / "article", d)
    os.utime(d / "events.jsonl", (1_700_000_000, 1_700_000_000))
    compact_in_place(d)
    assert (d / "events.arrow").stat().st_mtime == 1_700_000_000
    code = ("import sys; from sigtrace.events.segments import first_event_ts; import os; "
            f"fd = os.open({str(d)!r}, os.O_RDONLY); print(first_event_ts(fd, 'events.arrow')); "
            "assert 'pyarrow' not in sys.modules, 'pyarrow loaded'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) == events_of(DATA / "article")[0]["ts"]


def test_the_child_imports_nothing_from_the_recorders_working_directory(tmp_path, monkeypatch):
    """The recorder may run anywhere (a shared directory): a module planted there is never run by
    the compaction child."""
    planted = tmp_path / "cwd"
    planted.mkdir()
    marker = tmp_path / "ran"
    for module in ("dataclasses", "json", "struct"):
        (planted / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('{module}')\n")
    monkeypatch.chdir(planted)
    src = DATA / "article"
    w = rewrite(src, tmp_path / "r", segment_bytes=max(300, (src / "events.jsonl").stat().st_size // 3))
    assert w.meta()["output"]["compaction"]["segments"] >= 1
    assert not marker.exists()


@pytest.mark.parametrize("spoil", ["truncated", "foreign", "garbage", "symlink", "stream", "bomb", "many_bombs",
                                   "rows_bomb", "no_batches"])
def test_a_damaged_or_planted_columnar_file_is_counted_not_trusted(tmp_path, spoil):
    """A columnar segment that is cut short, holds other columns, is not Arrow at all, or is a link:
    no traceback; the other segments are read and the report says what was not."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    rewrite(DATA / "article", tmp_path / "r", segment_bytes=1500)
    d = tmp_path / "r"
    arrows = [p for _, p in list_segments(d) if p.suffix == ".arrow"]
    victim = arrows[1]
    rows = sum(t.num_rows for t in columnar.read_tables(victim))
    if spoil == "truncated":
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])           # into its batch (the footer is not needed)
    elif spoil == "foreign":
        with ipc.new_file(str(victim), pa.schema([("ts", pa.string())])) as fw:
            fw.write_table(pa.table({"ts": ["1"]}))
    elif spoil == "garbage":
        victim.write_bytes(b"\x1b]52;c;evil\x07" * 100)
    elif spoil == "stream":                                  # the IPC stream format, not a file
        with ipc.new_stream(str(victim), columnar.arrow_schema()) as sw:
            sw.write_table(next(columnar.read_tables(arrows[0])))
    elif spoil == "bomb":
        # 100 MB of text in one event, ~10 KB compressed: refused before it is decompressed
        one = columnar.arrow_schema().empty_table().to_pylist()
        row = {**next(columnar.read_tables(arrows[0])).slice(0, 1).to_pylist()[0], "detail": "a" * (100 << 20)}
        one.append(row)
        table = pa.Table.from_pylist(one, schema=columnar.arrow_schema())
        with ipc.new_file(str(victim), table.schema, options=ipc.IpcWriteOptions(compression="zstd")) as fw:
            fw.write_table(table)
        del table, row, one
        assert victim.stat().st_size < 1 << 20
    elif spoil == "many_bombs":
        # each batch under the 64 MiB any file may inflate to, together far over it
        row = {**next(columnar.read_tables(arrows[0])).slice(0, 1).to_pylist()[0], "detail": "a" * (3 << 20)}
        table = pa.Table.from_pylist([row], schema=columnar.arrow_schema())
        with ipc.new_file(str(victim), table.schema, options=ipc.IpcWriteOptions(compression="zstd")) as fw:
            for _ in range(30):
                fw.write_table(table)
    elif spoil == "rows_bomb":
        # millions of rows of nulls take no bytes: the rows are bounded on their own
        n = 3 << 20
        schema = columnar.arrow_schema()
        cols = [pa.array(np.full(n, 1000.0)) if f.name == "ts" else
                pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), ["tcp_state"]).cast(pa.string())
                if f.name == "kind" else pa.nulls(n, f.type) for f in schema]
        with ipc.new_file(str(victim), schema, options=ipc.IpcWriteOptions(compression="zstd")) as fw:
            fw.write_table(pa.Table.from_arrays(cols, schema=schema))
        assert victim.stat().st_size // 4 < n
    elif spoil == "no_batches":
        with ipc.new_file(str(victim), columnar.arrow_schema()):
            pass
    else:
        victim.unlink()
        (tmp_path / "elsewhere.arrow").write_bytes(arrows[0].read_bytes())
        victim.symlink_to(tmp_path / "elsewhere.arrow")
    rec = read_recording(d)
    assert len(rec.events) == len(events_of(DATA / "article")) - rows
    assert any(f"unreadable columnar segments ({victim.name}" in n or f"{victim.name} is not a regular" in n
               for n in rec.incomplete), rec.incomplete
    assert not any("\x1b" in n for n in rec.incomplete)
    if spoil in ("bomb", "many_bombs"):
        assert any("inflate more than 64x" in n for n in rec.incomplete), rec.incomplete
    if spoil == "rows_bomb":     # (the offsets of 3M null strings are 12 MB of zeros: over both budgets)
        assert any("more rows than its size can hold" in n or "inflate more than 64x" in n
                   for n in rec.incomplete), rec.incomplete
    if spoil == "no_batches":
        assert any("no events in it" in n for n in rec.incomplete), rec.incomplete
    r = subprocess.run([sys.executable, "-m", "sigtrace", "report", str(d)], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr


def test_the_writer_appends_after_a_columnar_segment_never_into_it(tmp_path):
    rewrite(DATA / "article", tmp_path, segment_bytes=1500)
    last = list_segments(tmp_path)[-1][1]
    last_seq = segment_seq(last.name)
    compact_in_place(tmp_path, last.name)                  # every segment columnar now
    before = {p.name: p.read_bytes() for _, p in list_segments(tmp_path)}
    with EventWriter(tmp_path, flush_interval=3600) as w:
        w.write(events_of(DATA / "article")[-1] | {"ts": 9e9 / 10})
    after = list_segments(tmp_path)
    assert all((tmp_path / n).read_bytes() == b for n, b in before.items())
    assert after[-1][0] == last_seq + 1 and after[-1][1].suffix == ".jsonl"


def test_sigtrace_compact_after_the_fact(tmp_path):
    """`sigtrace compact DIR` on a JSONL recording (--no-compact) of two runs: every closed segment
    becomes columnar, a finished run's last one too, an unfinished run's last one is left; the report
    is the same bytes."""
    src = DATA / "article"
    size = (src / "events.jsonl").stat().st_size
    root = tmp_path / "root"
    for run, end in (("node-a-1", True), ("node-a-2", False)):
        rewrite(src, root / run, segment_bytes=max(300, size // 3), compact=False)
        meta = json.loads((root / run / "meta.json").read_text())
        if not end:
            meta.pop("end", None)
        (root / run / "meta.json").write_text(json.dumps(meta))
    before = {r: [p.name for _, p in list_segments(root / r)] for r in ("node-a-1", "node-a-2")}
    assert all(n.endswith(".jsonl") for names in before.values() for n in names)
    expected = [render_json(report_recording(root / r, lanes=True)) for r in ("node-a-1", "node-a-2")]
    r = subprocess.run([sys.executable, "-m", "sigtrace", "compact", str(root)], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    n = len(before["node-a-1"]) + len(before["node-a-2"]) - 1
    assert f"compacted {n} segment(s) of 2 run(s): " in r.stderr
    assert "the last segment of 1 run(s) was left as it is" in r.stderr
    assert all(p.suffix == ".arrow" for _, p in list_segments(root / "node-a-1"))
    assert run_dirs_under(root) == [root / "node-a-1", root / "node-a-2"]      # a run of columnar files only
    after2 = [p.name for _, p in list_segments(root / "node-a-2")]
    assert all(x.endswith(".arrow") for x in after2[:-1]) and after2[-1] == before["node-a-2"][-1]
    got = [render_json(report_recording(root / r, lanes=True)) for r in ("node-a-1", "node-a-2")]
    assert got == expected
    r = subprocess.run([sys.executable, "-m", "sigtrace", "compact", str(tmp_path / "nothing")], capture_output=True,
                       text=True, cwd=REPO, timeout=60)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_sigtrace_compact_leaves_the_segment_a_recorder_appends_to(tmp_path):
    """A finished run continued by `record --append` while `sigtrace compact` runs: the segment the
    writer holds stays JSONL (said), so an event written after the compaction's read is not lost
    with a JSONL it removed; once the writer is gone, it is compacted with that event."""
    src = DATA / "article"
    run = tmp_path / "run"
    rewrite(src, run, segment_bytes=(src / "events.jsonl").stat().st_size // 3, compact=False)
    last = list_segments(run)[-1][1].name
    n = len(events_of(src))
    with EventWriter(run, flush_interval=3600, compact=False) as w:      # continues `last`
        r = subprocess.run([sys.executable, "-m", "sigtrace", "compact", str(run)], capture_output=True, text=True,
                           cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stderr
        assert f"left as JSONL: {last}: held by another process (a recorder writing it)" in r.stderr
        w.write(events_of(src)[-1] | {"ts": 9e8})
    segs = list_segments(run)
    assert segs[-1][1].name == last and all(p.suffix == ".arrow" for _, p in segs[:-1])
    assert len(read_recording(run).events) == n + 1
    r = subprocess.run([sys.executable, "-m", "sigtrace", "compact", str(run)], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0 and "left as JSONL" not in r.stderr, r.stderr
    assert all(p.suffix == ".arrow" for _, p in list_segments(run))
    assert len(read_recording(run).events) == n + 1 and read_recording(run).events["ts"].max() == 9e8


def _jsonl_run(run: Path) -> tuple[int, Path]:
    """A finished run of the article's events in three JSONL segments: (events, its last segment)."""
    src = DATA / "article"
    rewrite(src, run, segment_bytes=(src / "events.jsonl").stat().st_size // 3, compact=False)
    return len(events_of(src)), list_segments(run)[-1][1]


def _append_one(run: Path) -> None:
    """What `record --append` does to a run: continue its last segment (or start the next) with an event."""
    with EventWriter(run, flush_interval=3600, compact=False) as w:
        w.write(events_of(DATA / "article")[-1] | {"ts": 9e8})


def _all_there(run: Path, n: int) -> None:
    events = read_recording(run).events
    assert len(events) == n + 1 and events["ts"].max() == 9e8


def test_an_append_opened_before_a_whole_compaction_starts_the_next_segment(tmp_path, monkeypatch):
    """The writer opens the last segment, a compaction runs from start to end, then the writer takes
    its lock: the file it holds has lost its name, so it starts the next segment."""
    from sigtrace.events import segments
    run = tmp_path / "run"
    n, last = _jsonl_run(run)
    real = segments.claim_segment

    def compacted_first(fd, dir_fd, name, *, writing):
        if name == last.name:
            assert compact_in_place(run, name).kept is None
        return real(fd, dir_fd, name, writing=writing)
    monkeypatch.setattr(segments, "claim_segment", compacted_first)
    _append_one(run)
    segs = list_segments(run)
    assert segs[-2][1].name == columnar.columnar_name(last.name) and segs[-1][0] == segment_seq(last.name) + 1
    _all_there(run, n)


@pytest.mark.parametrize("at", ["after the lock", "at the unlink"])
def test_an_append_during_a_compaction_starts_the_next_segment(tmp_path, monkeypatch, at):
    """A record --append that opens the last segment while a compaction holds it (just locked, or
    about to remove the JSONL) writes the next segment: nothing goes with the removed JSONL."""
    from sigtrace.events import compact as compact_mod
    run = tmp_path / "run"
    n, last = _jsonl_run(run)
    if at == "after the lock":
        real = compact_mod.claim_segment

        def then_append(fd, dir_fd, name, *, writing):
            ok = real(fd, dir_fd, name, writing=writing)
            _append_one(run)
            return ok
        monkeypatch.setattr(compact_mod, "claim_segment", then_append)
    else:
        real_unlink = os.unlink

        def append_first(path, *args, **kwargs):
            if path == last.name:
                _append_one(run)
            return real_unlink(path, *args, **kwargs)
        monkeypatch.setattr(os, "unlink", append_first)
    assert compact_in_place(run, last.name).kept is None
    monkeypatch.undo()
    assert list_segments(run)[-1][0] == segment_seq(last.name) + 1
    _all_there(run, n)


def test_a_compaction_refused_its_lock_leaves_the_segment(tmp_path, monkeypatch):
    """NFSv4 refuses a lock the descriptor's mode does not allow (EBADF): the segment is then held
    as far as a compaction knows, and stays JSONL; a filesystem without locks (ENOLCK) compacts."""
    import errno
    import fcntl
    run = tmp_path / "run"
    n, last = _jsonl_run(run)

    def refused(fd, op):
        raise OSError(errno.EBADF, "Bad file descriptor")
    monkeypatch.setattr(fcntl, "flock", refused)
    assert compact_in_place(run, last.name).kept.startswith("held by another process")
    assert last.exists()

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert compact_in_place(run, last.name).kept is None and not last.exists()


def test_a_new_segment_briefly_held_by_a_compaction_is_still_locked_by_its_writer(tmp_path, monkeypatch):
    """A compaction that opened the writer's brand-new (empty) segment lets go at once: the writer
    waits for it and holds the segment locked, so no compaction can take it later."""
    import fcntl
    from sigtrace.events import segments
    run = tmp_path / "run"
    real = segments.claim_segment
    tries = []

    def held_once(fd, dir_fd, name, *, writing):
        tries.append(name)
        if len(tries) == 1:
            return False                          # as if a compaction held it this once
        return real(fd, dir_fd, name, writing=writing)
    monkeypatch.setattr(segments, "claim_segment", held_once)
    with EventWriter(run, flush_interval=3600, compact=False) as w:
        w.write(events_of(DATA / "article")[0])
        w.flush()
        seg = list_segments(run)[-1][1]
        assert tries == [seg.name, seg.name]
        fd = os.open(seg, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_a_fifo_put_where_a_segment_was_is_not_waited_on(tmp_path):
    """A segment swapped for a FIFO after the listing: the compaction leaves it, and a recorder
    appending to the run writes elsewhere; neither waits for a writer that never comes."""
    run = tmp_path / "run"
    n, last = _jsonl_run(run)
    last.unlink()
    os.mkfifo(last)
    with no_waiting():
        assert compact_in_place(run, last.name).kept == "not a regular file"
        _append_one(run)
    assert read_recording(run).events["ts"].max() == 9e8     # the appended event is there


def test_no_pyarrow_in_the_child_keeps_jsonl_and_says_so_once(tmp_path, monkeypatch):
    """Where pyarrow is missing (the child exits with EXIT_NO_PYARROW) segments stay JSONL: one
    warning, every segment counted, no child started again."""
    warnings: list[str] = []
    d = tmp_path / "r"
    d.mkdir()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        c = Compactor(lambda: fd, warnings.append)
        monkeypatch.setattr(sys, "executable", str(_fake_python(tmp_path, exit_code=3)))
        for name in ("events.jsonl", "events-000002.jsonl", "events-000003.jsonl"):
            c.closed(name)
        c.tick()
        c.close(wait_s=30)
        c.tick()
    finally:
        os.close(fd)
    stats = c.meta()
    assert stats["kept_jsonl"] == 3 and stats["kept_why"] == {"pyarrow is not installed": 3}
    assert stats["pending"] == 0 and len(warnings) == 1 and "pyarrow is not installed" in warnings[0]


def test_a_child_that_fails_keeps_jsonl_and_says_how_not_what_it_printed(tmp_path, monkeypatch):
    """A child that crashes (or prints a traceback quoting the segment) counts the segment as kept,
    with its exit status only: stderr is tenant text and stays out of meta.json."""
    d = tmp_path / "r"
    d.mkdir()
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\necho '\033]0;owned\007 Traceback' >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(script))
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        c = Compactor(lambda: fd, lambda m: None)
        c.closed("events.jsonl")
        c.tick()
        c.close(wait_s=30)
    finally:
        os.close(fd)
    assert c.meta()["kept_why"] == {"the compaction failed (exit status 1)": 1}


def _fake_python(tmp_path: Path, exit_code: int) -> Path:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\nexit {exit_code}\n")
    script.chmod(0o755)
    return script


def test_the_budget_prunes_columnar_segments_and_names_their_time(tmp_path):
    """A disk cap over a compacted recording: columnar segments are removed oldest first like
    JSONL ones, and the note of what was pruned gives the first kept event's time."""
    rewrite(DATA / "article", tmp_path / "r", segment_bytes=1500)
    d = tmp_path / "r"
    segs = list_segments(d)
    assert sum(p.suffix == ".arrow" for _, p in segs) >= 3
    total = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
    budget = DiskBudget(d, d, max_bytes=total - segs[0][1].stat().st_size // 2)
    budget.enforce(segs[-1][0], segs[-1][1].stat().st_size)
    left = list_segments(d)
    assert left[0][0] > 1 and left[0][1].suffix == ".arrow" and left == segs[-len(left):]
    assert budget.own_meta()["segments"] == left[0][0] - 1
    assert budget.oldest_kept_ts == columnar.first_ts(left[0][1]) is not None


# ---- a report taken while the recorder runs, and the writer's side ----------------------------------------
def test_a_segment_compacted_after_the_listing_is_read_under_its_new_name(tmp_path, monkeypatch):
    """A report taken while recording lists the segments, and the one just closed is compacted
    before it is opened: every reader finds it under its columnar name, with no note of a removal."""
    from sigtrace.events import reader
    from sigtrace.events.fast_reader import read_clean_source
    from sigtrace.events.partition import CleanChunks
    src = DATA / "article"
    d = tmp_path / "r"
    rewrite(src, d, segment_bytes=max(300, (src / "events.jsonl").stat().st_size // 3), compact=False)
    plan = plan_recording(d)
    compact_in_place(d, plan.files[0][1].name)              # after the listing, before the reading
    assert not plan.files[0][1].exists()
    want = read_recording(src)
    got = read_clean_source(plan)
    assert got is not None and got.events.equals(want.events) and got.incomplete == want.incomplete
    assert sum(t.num_rows for t, _ in CleanChunks(plan)) == len(want.events)
    monkeypatch.setattr(reader, "plan_recording", lambda _: plan)
    tolerant = read_recording(d, fast=False)
    assert tolerant.events.equals(read_recording(src, fast=False).events) and tolerant.incomplete == []


@pytest.mark.parametrize("compact", [True, False])
def test_a_session_compacts_unless_told_not_to(tmp_path, compact):
    """RecordSession (record, agent) compacts by default; --no-compact (compact=False) keeps JSONL."""
    from test_segments import TickBackend
    from sigtrace.record import RecordSession
    s = RecordSession(TickBackend(per_poll=50), tmp_path / "r", live=False, live_reports=False,
                      segment_bytes=64 << 10, compact=compact)
    s.run(duration=1.5)
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    if compact:
        stats = meta["output"]["compaction"]
        assert stats["segments"] + stats["kept_jsonl"] + stats["pending"] == meta["output"]["segments_started"] - 1
        assert stats["segments"] >= 1 and any(p.suffix == ".arrow" for _, p in list_segments(tmp_path / "r"))
    else:
        assert "compaction" not in meta["output"]
        assert all(p.suffix == ".jsonl" for _, p in list_segments(tmp_path / "r"))
    assert len(read_recording(tmp_path / "r").events) == meta["events"]


def _earlier_run(src: Path, run: Path, seg: int, *, compacting: bool = True, end: bool = True) -> list[str]:
    """src rewritten as an earlier agent run in JSONL segments; its meta.json says it was recorded
    with compaction on (output.compaction) unless not compacting, and has an end unless not end."""
    rewrite(src, run, segment_bytes=seg, compact=False)
    meta = json.loads((run / "meta.json").read_text())
    if compacting:
        meta.setdefault("output", {})["compaction"] = {"segments": 0}
    if not end:
        meta.pop("end", None)
    (run / "meta.json").write_text(json.dumps(meta))
    return [p.name for _, p in list_segments(run)]


def _agent_start(root: Path, name: str = "node-a-9") -> EventWriter:
    """What an agent's start does with its root: a writer for a new run, earlier runs looked at."""
    from test_segments import TickBackend
    from sigtrace.record import RecordSession
    s = RecordSession(TickBackend(per_poll=50), root / name, live=False, live_reports=False,
                      segment_bytes=64 << 10, disk_root=root)
    return s._open_writer()


def test_an_agent_restart_compacts_what_the_earlier_runs_left_as_jsonl(tmp_path):
    """An agent's new run also compacts its predecessors' closed JSONL segments: all but the last
    of each run (`record --append` continues a run's last one), finished or killed; not a run
    recorded with --no-compact, not a foreign directory, nor one reached through a symlink.
    Counted apart in meta.json (output.compaction.earlier_runs); reports unchanged."""
    src = DATA / "article"
    root = tmp_path / "root"
    seg = max(300, (src / "events.jsonl").stat().st_size // 3)
    before = {"node-a-1": _earlier_run(src, root / "node-a-1", seg),
              "node-a-2": _earlier_run(src, root / "node-a-2", seg, end=False),
              "node-a-3": _earlier_run(src, root / "node-a-3", seg, compacting=False),
              "foreign": _earlier_run(src, root / "foreign", seg)}
    (root / "foreign" / "meta.json").write_text("{}")
    elsewhere = tmp_path / "elsewhere"
    _earlier_run(src, elsewhere, seg)
    (root / "node-a-0").symlink_to(elsewhere)
    expected = render_json(report_recording(src, lanes=True))

    writer = _agent_start(root)
    settle(writer)
    writer.close()
    stats = writer._compactor.meta()["earlier_runs"]
    n1, n2 = len(before["node-a-1"]), len(before["node-a-2"])
    assert stats["segments"] == n1 - 1 + n2 - 1 and stats["kept_jsonl"] == 0 and stats["pending"] == 0
    assert stats["left"] == 0
    for run in ("node-a-1", "node-a-2"):
        after = [p.name for _, p in list_segments(root / run)]
        assert all(n.endswith(".arrow") for n in after[:-1]) and after[-1] == before[run][-1]
    for run in ("node-a-3", "foreign"):
        assert [p.name for _, p in list_segments(root / run)] == before[run]
    assert all(p.suffix == ".jsonl" for _, p in list_segments(elsewhere))
    assert render_json(report_recording(root / "node-a-1", lanes=True)) == expected


def test_an_earlier_run_swapped_for_a_link_or_another_directory_is_not_followed(tmp_path):
    """Listed, then replaced before its turn: by a symlink to a directory elsewhere (whose JSONL
    must not be touched), or by another directory; counted, nothing written or removed there."""
    src = DATA / "article"
    root = tmp_path / "root"
    seg = max(300, (src / "events.jsonl").stat().st_size // 3)
    _earlier_run(src, root / "node-a-1", seg)
    _earlier_run(src, root / "node-a-2", seg)
    victim = tmp_path / "victim"
    victim_names = _earlier_run(src, victim, seg)
    writer = _agent_start(root)
    c = writer._compactor
    c._find_earlier()                        # listed now; started later
    (root / "node-a-1").rename(tmp_path / "moved-1")
    (root / "node-a-1").symlink_to(victim)
    (root / "node-a-2").rename(tmp_path / "moved-2")
    shutil.copytree(tmp_path / "moved-2", root / "node-a-2")
    settle(writer)
    writer.close()
    assert [p.name for _, p in list_segments(victim)] == victim_names
    assert all(p.suffix == ".jsonl" for _, p in list_segments(root / "node-a-2"))
    why = c.meta()["earlier_runs"]["kept_why"]
    assert sum(n for w, n in why.items() if w.startswith("cannot open its directory")) == 2 * (len(victim_names) - 1)
    assert any("replaced since it was listed" in w for w in why)


def test_a_fifo_or_huge_meta_json_in_an_earlier_run_is_skipped_not_waited_on(tmp_path):
    """A FIFO named meta.json would block a plain open and read for ever; a huge one would be read
    whole: neither is a recorder's, so the run is left alone."""
    src = DATA / "article"
    root = tmp_path / "root"
    seg = max(300, (src / "events.jsonl").stat().st_size // 3)
    names = {r: _earlier_run(src, root / r, seg) for r in ("node-a-1", "node-a-2")}
    (root / "node-a-1" / "meta.json").unlink()
    os.mkfifo(root / "node-a-1" / "meta.json")
    with open(root / "node-a-2" / "meta.json", "ab") as fh:
        fh.truncate(64 << 20)                # sparse: big, costs nothing on disk
    writer = _agent_start(root)
    started = time.monotonic()
    settle(writer)
    writer.close()
    assert time.monotonic() - started < 30
    assert "earlier_runs" not in writer._compactor.meta()
    for run, before in names.items():
        assert [p.name for _, p in list_segments(root / run)] == before


def test_earlier_runs_past_the_cap_are_left_newest_first_and_a_root_that_cannot_be_listed_warns(tmp_path):
    """At most MAX_EARLIER segments are taken at a start, the newest runs' first (the disk cap
    removes the oldest first); the rest are counted as left for `sigtrace compact`. A root that
    cannot be listed is one warning, and the run records on."""
    from sigtrace.events import compactor
    src = DATA / "article"
    root = tmp_path / "root"
    seg = max(300, (src / "events.jsonl").stat().st_size // 3)
    per_run = len(_earlier_run(src, root / "node-a-1", seg)) - 1
    for i in range(2, 5):
        shutil.copytree(root / "node-a-1", root / f"node-a-{i}")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        found, more = compactor.earlier_segments(fd, "node-a-9", limit=per_run + 1)
    finally:
        os.close(fd)
    assert [w.run for w in found] == ["node-a-4"] * per_run + ["node-a-3"] and more == 4 * per_run - per_run - 1
    warnings: list[str] = []
    c = Compactor(lambda: -1, warnings.append)
    c.earlier_runs(tmp_path / "no-such-root", "node-a-9")
    c.tick()
    assert len(warnings) == 1 and "are not compacted" in warnings[0] and "earlier_runs" not in c.meta()


def test_names_queued_before_the_directory_was_re_created_are_counted_as_such(tmp_path, monkeypatch):
    """The output directory removed and re-created while segments waited: the old names are not in
    the new directory; they are counted as lost with their directory, not as pruned by the disk cap,
    and no child is started for them."""
    monkeypatch.setattr(sys, "executable", str(_fake_python(tmp_path, exit_code=0)))
    generation = [0]
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        c = Compactor(lambda: fd, lambda m: None, generation=lambda: generation[0])
        c.closed("events.jsonl")
        c.closed("events-000002.jsonl")
        generation[0] = 1
        c.tick()
        assert c._child is None
    finally:
        os.close(fd)
    stats = c.meta()
    assert stats["kept_why"] == {"its directory was removed while recording": 2} and stats["pending"] == 0
    assert "earlier_runs" not in stats


def _sleeper(tmp_path: Path, seconds: float) -> Path:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\nsleep {seconds}\n")
    script.chmod(0o755)
    return script


def test_the_compactor_bounds_its_queue_ends_a_stuck_child_and_never_waits_long(tmp_path, monkeypatch):
    """Past MAX_PENDING the oldest waiting segment stays JSONL (counted); a child past its time is
    killed (counted, reaped); close() waits a little, then leaves a running child (counted pending).
    Every child runs in its own session: a Ctrl-C at the recorder's terminal does not reach it."""
    from sigtrace.events import compactor
    monkeypatch.setattr(sys, "executable", str(_sleeper(tmp_path, 30)))
    now = [0.0]
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        c = Compactor(lambda: fd, lambda m: None, clock=lambda: now[0])
        for i in range(compactor.MAX_PENDING + 4):
            c.closed(f"events-{i + 2:06d}.jsonl")
        assert c.meta()["kept_why"] == {"too many segments waiting": 4}
        c.tick()
        child = c._child
        assert child is not None and os.getpgid(child.pid) != os.getpgid(0)
        now[0] = compactor.CHILD_TIMEOUT_S + 1
        c.tick()                                            # killed, collected, the next one started
        assert child.returncode == -9 and c.meta()["kept_why"]["the compaction failed (killed by signal 9)"] == 1
        started = time.monotonic()
        c.close(wait_s=0.2)
        assert time.monotonic() - started < 5
        assert c.meta()["pending"] == compactor.MAX_PENDING - 1    # the running one and those waiting
        c._child.kill()
        c._child.wait()
    finally:
        os.close(fd)


def test_the_budget_removes_a_segment_compacted_since_its_scan(tmp_path):
    """The disk cap scanned events-000002.jsonl; it is events-000002.arrow when the cap removes it."""
    d = tmp_path / "r"
    rewrite(DATA / "article", d, segment_bytes=1500, compact=False)
    name = list_segments(d)[1][1].name
    compact_in_place(d, name)
    budget = DiskBudget(d, d, max_bytes=1 << 30)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert budget._unlink(fd, "", name)
    finally:
        os.close(fd)
    assert not (d / name).exists() and not (d / columnar.columnar_name(name)).exists()


def test_appending_compacts_the_closed_segments_left_as_jsonl(tmp_path):
    """`record --append` into a recording whose closed segments are JSONL (a recorder stopped before
    their turn, or --no-compact): they are compacted; the one appended to stays JSONL."""
    src = DATA / "article"
    d = tmp_path / "r"
    rewrite(src, d, segment_bytes=max(300, (src / "events.jsonl").stat().st_size // 3), compact=False)
    before = [p.name for _, p in list_segments(d)]
    w = EventWriter(d, flush_interval=3600, compact=True)
    settle(w)
    w.close()
    after = [p.name for _, p in list_segments(d)]
    assert after[-1] == before[-1] and all(n.endswith(".arrow") for n in after[:-1]) and len(after) == len(before)
    assert w.meta()["output"]["compaction"]["segments"] == len(before) - 1
    assert read_recording(d).events.equals(read_recording(src).events)

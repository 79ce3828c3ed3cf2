"""Recordings copied from elsewhere: typed garbage, wrong encodings, truncation and huge values in
events.jsonl and meta.json. Each defect of the issue is reproduced, then a property test mutates
real recordings: the report exits 0 or 2, prints at most one line on stderr and no traceback, and
either names the same verdicts or says in `incomplete` why it cannot."""
from __future__ import annotations

import io
import json
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import no_waiting
from sigtrace.cli import main

DATA = Path(__file__).parent / "data"
ARTICLE = DATA / "article"
LINES = [json.loads(x) for x in (ARTICLE / "events.jsonl").read_text().splitlines()]
POD = "7d2c4e8a-0000-4c5d-9e6f-00000000000a"


def report(d: Path) -> tuple[int, dict | None, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(["report", str(d), "--format", "json"])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    text = out.getvalue()
    return code, (json.loads(text) if code == 0 and text.strip() else None), err.getvalue()


def verdicts(rep: dict) -> set[str]:
    return {v["id"] for p in rep["pods"] if p["pod_uid"] == POD for v in p["verdicts"]}


WANT = verdicts(report(ARTICLE)[1])


def write(d: Path, lines: list, meta: object = None, raw: bytes | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    body = raw if raw is not None else "".join(json.dumps(e) + "\n" if not isinstance(e, str) else e + "\n"
                                                for e in lines).encode()
    (d / "events.jsonl").write_bytes(body)
    (d / "meta.json").write_text(json.dumps(meta if meta is not None else json.loads((ARTICLE / "meta.json").read_text())))
    return d


def mutated(i: int, **change) -> list:
    lines = [dict(e) for e in LINES]
    lines[i].update(change)
    return lines


def idx(**want) -> int:
    return next(i for i, e in enumerate(LINES) if all(e.get(k) == v for k, v in want.items()))


QUIT = idx(kind="signal_generate", sig="SIGQUIT")
EXIT = idx(kind="process_exit", pid=1001)


@pytest.mark.parametrize("name,lines", [
    ("ts string", mutated(QUIT, ts="1000.001")), ("ts null", mutated(QUIT, ts=None)),
    ("pid abc", mutated(QUIT, pid="abc")), ("pid 2**70", mutated(QUIT, pid=2 ** 70)),
    ("port http", mutated(1, sport="http")), ("lone surrogate", mutated(QUIT, comm="nginx\ud800")),
    ("pid 1.5", mutated(EXIT, pid=1.5)), ("sig 15", mutated(QUIT, sig=15)),
    ("uid 123", mutated(QUIT, target_pod_uid=123)),
])
def test_typed_garbage_is_skipped_counted_and_never_misread(tmp_path, name, lines):
    code, rep, err = report(write(tmp_path / "r", lines))
    assert code == 0 and "Traceback" not in err, err
    assert any(n.startswith("skipped 1 ") for n in rep["incomplete"]), rep["incomplete"]
    # never an invented pod ("123.0"), never a verdict the recording does not support
    assert {p["pod_uid"] for p in rep["pods"]} <= {POD}
    assert "nginx-fast-shutdown" not in verdicts(rep) or "nginx-fast-shutdown" in WANT


def test_infinity_and_invalid_utf8_are_skipped(tmp_path):
    text = (ARTICLE / "events.jsonl").read_bytes().splitlines(keepends=True)
    text[QUIT] = text[QUIT].replace(b'"ts":1000.001', b'"ts":Infinity')
    text[EXIT] = text[EXIT].replace(b'"comm":"nginx"', b'"comm":"ngi\xffnx"')
    code, rep, err = report(write(tmp_path / "r", [], raw=b"".join(text)))
    assert code == 0 and "Traceback" not in err
    assert sum(1 for n in rep["incomplete"] if n.startswith("skipped")) >= 1


@pytest.mark.parametrize("meta", [[1, 2], 42, "x", {"end": "never", "lost_events": -1, "capabilities": "all"}])
def test_meta_json_of_the_wrong_shape(tmp_path, meta):
    code, rep, err = report(write(tmp_path / "r", LINES, meta=meta))
    assert code == 0 and "Traceback" not in err
    assert any("meta.json" in n for n in rep["incomplete"])


def test_meta_json_nested_past_the_stack_infinite_or_a_fifo(tmp_path):
    """A meta.json copied from elsewhere: nested past the parser's stack, or a loss count of
    Infinity, or a FIFO, is unreadable (said), never a traceback nor a wait."""
    nested = write(tmp_path / "nested", LINES)
    (nested / "meta.json").write_text("[" * 200_000 + "]" * 200_000)
    infinite = write(tmp_path / "inf", LINES)
    meta = json.loads((ARTICLE / "meta.json").read_text())
    (infinite / "meta.json").write_text(json.dumps(meta | {"lost_events": 5, "output": {"lost": {"disk_full": 1}}})
                                        .replace('"disk_full": 1', '"disk_full": Infinity'))
    fifo = write(tmp_path / "fifo", LINES)
    (fifo / "meta.json").unlink()
    os.mkfifo(fifo / "meta.json")

    with no_waiting(30):
        for d in (nested, infinite, fifo):
            code, rep, err = report(d)
            assert code == 0 and "Traceback" not in err, err
            assert verdicts(rep) == WANT
            if d is not infinite:
                assert any("meta.json is unreadable" in n for n in rep["incomplete"]), rep["incomplete"]


def test_a_pod_detail_nested_past_the_stack_costs_only_its_facts(tmp_path):
    """A pod_lifecycle detail of "[[[[...]]]]" (within the detail's size limit): report, export and
    analyze read it as no detail, not a traceback."""
    lines = [dict(e, detail="[" * 3000 + "]" * 3000) if e.get("kind") == "pod_lifecycle" else e for e in LINES]
    assert lines != LINES
    d = write(tmp_path / "r", lines)
    code, rep, err = report(d)
    assert code == 0 and "Traceback" not in err, err
    assert POD in {p["pod_uid"] for p in rep["pods"]}
    csv = tmp_path / "e.csv"
    assert run_main("export", str(d), "--csv", str(csv))[0] == 0
    code, err = run_main("analyze", str(csv), "--json")
    assert code == 0 and "Traceback" not in err, err


def test_export_notes_and_node_names_reach_the_terminal_escaped(tmp_path):
    """export's notes quote tenant text (the last event's process name when the recorder was killed)
    and node names come from meta.json: shown with visible escapes, never as terminal controls."""
    lines = [dict(e) for e in LINES]
    lines[-1]["comm"] = "\x1b]0;OWNED\x07\x1b[2J"
    meta = json.loads((ARTICLE / "meta.json").read_text())
    meta.pop("end", None)
    meta["node"] = "n\x1b[31mRED"
    d = write(tmp_path / "r", lines, meta=meta)
    code, err = run_main("export", str(d), "--csv", str(tmp_path / "e.csv"))
    assert code == 0, err
    assert "\x1b" not in err and "\x07" not in err
    assert "did not stop cleanly" in err and "\\x1b" in err


def test_events_file_that_is_a_directory_or_a_fifo(tmp_path):
    d = tmp_path / "dir"
    (d / "events.jsonl").mkdir(parents=True)
    code, _, err = report(d)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    f = tmp_path / "fifo"
    f.mkdir()
    os.mkfifo(f / "events.jsonl")
    code, _, err = report(f)          # must return at once, not block on the FIFO
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("path", ["tolerant", "fast", "chunks"])
@pytest.mark.parametrize("swap", ["fifo", "link"])
@pytest.mark.parametrize("name", ["events-000002.jsonl", "events-000002.arrow"])
def test_a_segment_swapped_after_the_listing_is_counted_not_waited_on_or_followed(tmp_path, monkeypatch, swap, name,
                                                                                    path):
    """A segment replaced by a FIFO or a symlink between the listing and the reading: no reader
    waits for a FIFO's writer (counted as unreadable, the rest read); a JSONL link is followed on
    every path alike, as the listing follows it (recordings kept in git-annex are links), a columnar
    one is not."""
    from sigtrace.events import reader, source
    d = write(tmp_path / "r", LINES)
    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps(LINES[0]) + "\n")
    planted = d / name
    real_plan = source.plan_recording

    def swapped_after_listing(directory):
        src = real_plan(directory)
        if swap == "fifo":
            os.mkfifo(planted)
        else:
            planted.symlink_to(secret)
        src.files.append((name, planted))
        return src
    monkeypatch.setattr(reader, "plan_recording", swapped_after_listing)

    with no_waiting():
        if path == "chunks":                  # what report's parts, --pod and export read through
            from sigtrace.events.partition import CleanChunks
            chunks = CleanChunks(swapped_after_listing(d), tolerant=True)
            rows = sum(t.num_rows for t, _ in chunks)
            notes = chunks.notes()
        else:
            rec = reader.read_recording(d, fast=path == "fast")
            rows, notes = len(rec.events), rec.incomplete
    if swap == "link" and name.endswith(".jsonl"):
        assert rows == len(LINES) + 1 and not any("unreadable" in n for n in notes), notes
    else:
        assert rows == len(LINES)
        assert any("unreadable" in n and name in n for n in notes), notes


def run_main(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            main(list(args))
            return 0, err.getvalue()
        except SystemExit as exc:
            return exc.code, err.getvalue()


def test_report_output_on_a_full_disk_or_a_device_is_one_line(tmp_path):
    import subprocess
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(small)], check=True)
    try:
        (small / "fill").write_bytes(b"x" * 4096)
        code, err = run_main("report", str(ARTICLE), "-o", str(small / "r.txt"))
        assert code != 0 and "No space left" in err and len(err.strip().splitlines()) == 1
        assert "Traceback" not in err and not list(small.glob(".r.txt*"))      # no temp file left
    finally:
        subprocess.run(["umount", str(small)], check=True)
    code, err = run_main("report", str(ARTICLE), "-o", "/dev/full")
    assert code == 2 and "not a regular file" in err and len(err.strip().splitlines()) == 1


MUTATION = st.one_of(
    st.tuples(st.just("type"), st.sampled_from(["ts", "pid", "sig", "sport", "comm", "pod_uid", "nspid", "exit_code",
                                                  "target_pod_uid", "new_state", "detail"]),
              st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(allow_nan=True),
                        st.text(max_size=20), st.lists(st.integers(), max_size=2))),
    st.tuples(st.just("truncate"), st.integers(0, 200), st.none()),
    st.tuples(st.just("bytes"), st.binary(min_size=1, max_size=8), st.none()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.integers(0, len(LINES) - 1), mutation=MUTATION,
       meta=st.one_of(st.none(), st.just([]), st.just({"end": "x"}), st.dictionaries(st.text(max_size=8),
                                                                                   st.integers(), max_size=3)))
def test_property_mutated_recordings_report_or_say_why(tmp_path_factory, where, mutation, meta):
    d = tmp_path_factory.mktemp("mut")
    what, a, b = mutation
    raw = None
    lines = [dict(e) for e in LINES]
    if what == "type":
        lines[where][a] = b
    text = "".join(json.dumps(e, allow_nan=True) + "\n" for e in lines).encode()
    if what == "truncate":
        raw = text[:max(1, len(text) - a)]
    elif what == "bytes":
        cut = sum(len(json.dumps(e)) + 1 for e in lines[:where]) + 5
        raw = text[:cut] + a + text[cut:]
    else:
        raw = text
    write(d, [], meta=meta if meta is not None else json.loads((ARTICLE / "meta.json").read_text()), raw=raw)
    code, rep, err = report(d)
    assert code in (0, 2), err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err
    if code == 0 and verdicts(rep) != WANT:
        assert rep["incomplete"], "a different answer without saying why"

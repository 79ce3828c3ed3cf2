"""`report --pod` (sigtrace.events.selection): the chosen pods' reports from one pass that keeps
only their rows are the whole recording's reports of those pods, byte for byte; what the pass
cannot vouch for (a value the tolerant reader skips, a pod named only after its first events)
is read whole, with the same result. And table_is_valid, which lets the pass skip making a frame
of the other pods' rows, never passes what frame_is_valid refuses."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from sigtrace.events import partition
from sigtrace.events.columnar import arrow_schema
from sigtrace.events.fast_reader import table_frame
from sigtrace.events.reader import read_recording
from sigtrace.events.schema import FIELD_NAMES
from sigtrace.events.selection import select_pods
from sigtrace.events.source import plan_recording
from sigtrace.events.validate import INT_RANGES, STRING_LIMIT, STRING_LIMITS, table_is_valid
from sigtrace.render import render
from sigtrace.render.json import render_json
from sigtrace.report import build_reports
from sigtrace.report import build
from sigtrace.report.build import PodNotFound, only_pods, report_recording

DATA = Path(__file__).parent / "data"
RECORDINGS = sorted(p.parent for p in DATA.rglob("events.jsonl"))


def whole_of(rec_dir: Path, pods: list[str], fmt: str = "json", lanes: bool = False) -> str:
    """The whole recording's reports, restricted to pods afterwards (what --pod gave before)."""
    rec = read_recording(rec_dir)
    rs = only_pods(build_reports(rec.events, rec.meta, rec.incomplete, lanes=lanes), pods, str(rec_dir))
    return render_json(rs) if fmt == "json" else render(rs, fmt)


def pods_of(rec_dir: Path) -> list[tuple[str, str | None]]:
    rec = read_recording(rec_dir)
    return [(p.pod_uid, p.pod_name) for p in build_reports(rec.events, rec.meta, rec.incomplete, lanes=False).pods]


@pytest.mark.parametrize("rec_dir", RECORDINGS, ids=lambda p: str(p.relative_to(DATA)))
def test_each_pod_alone_is_its_report_in_the_whole_recording(rec_dir):
    """Every pod of every test recording, by uid and by name: the same document as the whole
    recording's reports restricted to it (its notes, lost events and resets outside a stop)."""
    pods = pods_of(rec_dir)
    if not pods:
        pytest.skip("no pod")
    clean = select_pods(plan_recording(rec_dir), [pods[0][0]]) is not None
    for uid, name in pods:
        assert render_json(report_recording(rec_dir, lanes=False, pods=[uid])) == whole_of(rec_dir, [uid]), uid
        if name:
            assert render_json(report_recording(rec_dir, lanes=False, pods=[name])) == whole_of(rec_dir, [name])
    if clean:
        both = [pods[0][0], pods[-1][0]]
        assert render_json(report_recording(rec_dir, lanes=False, pods=both)) == whole_of(rec_dir, both)


@pytest.mark.parametrize("fmt", ["text", "html"])
def test_a_pod_alone_renders_as_in_the_whole_recording(fmt):
    rec_dir = DATA / "article"
    uid = pods_of(rec_dir)[0][0]
    rs = report_recording(rec_dir, lanes=True, pods=[uid])
    assert render(rs, fmt) == whole_of(rec_dir, [uid], fmt, lanes=True)


def test_one_pod_of_a_node_of_many_is_read_without_the_others(tmp_path):
    """The benchmark's kind of recording (thousands of pods, segments, rows out of time order at
    run boundaries): each chosen pod's report equals the whole recording's; the pass keeps its
    rows and the signals sent to it, not the others'."""
    from bench import synth
    synth.generate(tmp_path, 20_000, events_per_pod=120, seed=5, segment_bytes=1 << 20)
    rec = read_recording(tmp_path)
    rs = build_reports(rec.events, rec.meta, rec.incomplete, lanes=False)
    chosen = [p.pod_uid for p in rs.pods][::40]
    sel = select_pods(plan_recording(tmp_path), chosen)
    assert sel is not None and sel.chosen == sorted(chosen)
    frame, uids = sel.frame(0)
    mine = frame["pod_uid"].isin(chosen) | frame["target_pod_uid"].isin(chosen)
    assert uids == frozenset(chosen) and mine.all() and len(frame) < len(rec.events) / 20
    assert len(sel.known) == len(rs.pods)
    for uid in chosen:
        assert render_json(report_recording(tmp_path, lanes=False, pods=[uid])) == \
            render_json(only_pods(build_reports(rec.events, rec.meta, rec.incomplete, lanes=False), [uid], "x"))


def _lifecycle_named(tmp_path: Path, name: str, before_events: bool) -> tuple[Path, str]:
    """The article's recording, its stopped pod named `name` by one lifecycle row (instead of its
    own) placed before all of its events, or after them."""
    src = DATA / "article"
    shutil.copy(src / "meta.json", tmp_path / "meta.json")
    events = [json.loads(line) for line in (src / "events.jsonl").read_text().splitlines() if line.strip()]
    uid = next(e["pod_uid"] for e in events if e.get("pod_uid"))
    events = [e for e in events if not (e["kind"] == "pod_lifecycle" and e.get("pod_uid") == uid)]
    ts = events[0]["ts"] - 0.5 if before_events else events[-1]["ts"]
    row = {"ts": ts, "kind": "pod_lifecycle", "event": "observed", "pod_uid": uid, "pod_name": name,
           "namespace": "shop"}
    events = [row] + events if before_events else events + [row]
    for i in range(0, len(events), 5):           # segments of 5 events: chunks of their own
        name = "events.jsonl" if i == 0 else f"events-{i // 5 + 1:06d}.jsonl"
        (tmp_path / name).write_text("".join(json.dumps(e) + "\n" for e in events[i:i + 5]))
    return tmp_path, uid


@pytest.mark.parametrize("before_events", [True, False])
def test_a_pod_named_after_its_first_events_is_read_whole(tmp_path, monkeypatch, before_events):
    """A name learnt from a lifecycle row that comes after the pod's events in an earlier chunk:
    those rows were not kept, so the pass gives up and the recording is read whole; named before,
    the pass keeps everything. The report is the same either way."""
    monkeypatch.setattr(partition.CleanChunks.__init__, "__defaults__", (5,))     # chunks of 5 rows
    rec_dir, uid = _lifecycle_named(tmp_path, "web-renamed", before_events)
    sel = select_pods(plan_recording(rec_dir), ["web-renamed"])
    assert (sel is not None) == before_events
    if sel is not None:
        assert sel.chosen == [uid]
    assert render_json(report_recording(rec_dir, lanes=False, pods=["web-renamed"])) == \
        whole_of(rec_dir, ["web-renamed"])


def test_a_name_names_every_pod_that_had_it(tmp_path):
    """Two runs of one StatefulSet pod (web-0 stopped, a new web-0 with a new uid started later):
    --pod web-0 gives both."""
    root = tmp_path / "root"
    src = DATA / "article"
    lines = (src / "events.jsonl").read_text()
    uid = next(json.loads(x)["pod_uid"] for x in lines.splitlines() if json.loads(x).get("pod_uid"))
    for i, new_uid in enumerate((uid, uid[:-4] + "beef")):
        d = root / f"run-{i}"
        d.mkdir(parents=True)
        shutil.copy(src / "meta.json", d / "meta.json")
        events = [json.loads(x) for x in lines.replace(uid, new_uid).splitlines() if x.strip()]
        events = [{**e, "ts": e["ts"] + 1000 * i} for e in events
                  if not (e["kind"] == "pod_lifecycle" and e.get("pod_uid") == new_uid)]
        events.insert(0, {"ts": events[0]["ts"] - 0.5, "kind": "pod_lifecycle", "event": "observed",
                          "pod_uid": new_uid, "pod_name": "web-0", "namespace": "shop"})
        (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    rs = report_recording(root, lanes=False, pods=["web-0"])
    assert len(rs.pods) == 2 and {p.pod_name for p in rs.pods} == {"web-0"}
    assert render_json(rs) == whole_of(root, ["web-0"])


def test_a_pod_not_there_is_one_line_naming_a_few_pods(tmp_path):
    from bench import synth
    synth.generate(tmp_path, 5_000, events_per_pod=120, seed=3)
    with pytest.raises(PodNotFound) as err:
        report_recording(tmp_path, pods=["nope"])
    message = str(err.value)
    assert "\n" not in message and "pod nope is not in" in message
    assert message.count(" (") <= build.KNOWN_SHOWN + 1 and "more (`sigtrace report --format json` lists them)" in message


def test_the_error_quotes_at_most_a_few_short_names(tmp_path):
    """Uids and names are tenant text of up to 1,024 characters: each is cut in the one line."""
    events = [{"ts": 1000.0 + i, "kind": "pod_lifecycle", "event": "pod_seen", "pod_uid": f"{i}" + "u" * 1023,
               "pod_name": f"{i}" + "n" * 1023} for i in range(8)]
    shutil.copy(DATA / "article" / "meta.json", tmp_path / "meta.json")
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    with pytest.raises(PodNotFound) as err:
        report_recording(tmp_path, pods=["nope"])
    assert len(str(err.value)) < 1000 and "and 3 more" in str(err.value)


def test_a_pod_that_is_not_text_is_refused_before_any_reading(tmp_path, monkeypatch):
    """A --pod of bytes that are not UTF-8 (a lone surrogate once decoded) names no pod of any
    recording: said at once, without reading the recording (three times, through each fallback)."""
    from sigtrace.events import selection
    monkeypatch.setattr(selection, "select_pods", lambda *a, **k: pytest.fail("read"))
    with pytest.raises(PodNotFound, match="UTF-8"):
        report_recording(DATA / "article", pods=["web\udcff"])


def test_busy_chosen_pods_are_reported_from_the_parts(tmp_path, monkeypatch):
    """Chosen pods with more events than one pass may hold at once: the selection gives up and the
    split's parts report them (bounded memory), the same document."""
    from bench import synth
    from sigtrace.events import selection
    synth.generate(tmp_path, 5_000, events_per_pod=120, seed=3)
    rec = read_recording(tmp_path)
    uid = rec.events["pod_uid"].dropna().iloc[0]
    monkeypatch.setattr(selection, "MAX_SELECTED_ROWS", 10)
    assert select_pods(plan_recording(tmp_path), [uid]) is None
    assert render_json(report_recording(tmp_path, lanes=False, pods=[uid], part_bytes=100_000)) == \
        whole_of(tmp_path, [uid])


def test_a_pid_once_another_pods_cites_the_pods_own_exec(tmp_path):
    """A pid reused on a node running for weeks: the preStop exec the report cites is the pod's own
    process_exec, not the first exec of that pid in the recording (another pod's), on every path:
    whole, in parts, and --pod."""
    from sigtrace.report.build import report_parts
    from sigtrace.events.partition import split_recording
    src = DATA / "article"
    shutil.copy(src / "meta.json", tmp_path / "meta.json")
    events = [json.loads(x) for x in (src / "events.jsonl").read_text().splitlines() if x.strip()]
    uid = next(e["pod_uid"] for e in events if e.get("pod_uid"))
    hook = next(e for e in events if e["kind"] == "process_exec" and e.get("pod_uid") == uid)
    t = events[0]["ts"] - 1.0
    other = [{"ts": t, "kind": "process_exec", "pid": hook["pid"], "comm": "sh", "pod_uid": "other-pod",
              "container_id": "c0ffee", "filename": "/bin/sh", "ppid": 1},
             {"ts": t + 0.1, "kind": "process_exit", "pid": hook["pid"], "comm": "sh", "pod_uid": "other-pod",
              "container_id": "c0ffee", "exit_code": 0}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in other + events))
    rec = read_recording(tmp_path)
    own_exec = int(rec.events.index[(rec.events["kind"] == "process_exec") & (rec.events["pod_uid"] == uid)
                                    & (rec.events["pid"] == hook["pid"])][0])
    whole = build_reports(rec.events, rec.meta, rec.incomplete, lanes=False)
    cited = {e.get("event") for p in whole.pods if p.pod_uid == uid for e in p.to_dict()["timeline"]
             if str(hook["pid"]) in str(e.get("text", ""))}
    assert own_exec in cited and 0 not in cited
    parts = split_recording(plan_recording(tmp_path), part_bytes=300)
    try:
        assert render_json(report_parts(parts)) == render_json(whole)
    finally:
        parts.close()
    assert render_json(report_recording(tmp_path, lanes=False, pods=[uid])) == whole_of(tmp_path, [uid])


def test_the_cli_reports_one_pod_and_refuses_an_unknown_one(sigtrace_cli):
    rec_dir = DATA / "article"
    uid = pods_of(rec_dir)[0][0]
    r = sigtrace_cli("report", str(rec_dir), "--pod", uid, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert r.stdout == whole_of(rec_dir, [uid]) + ("\n" if not whole_of(rec_dir, [uid]).endswith("\n") else "")
    r = sigtrace_cli("report", str(rec_dir), "--pod", "\x1b]0;owned\x07")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "\x1b" not in r.stderr and "Traceback" not in r.stderr


# ---- table_is_valid: never True where the frame's check is False ------------------------------------------
def _table(rows: list[dict]) -> pa.Table:
    cols = {name: [r.get(name) for r in rows] for name in FIELD_NAMES}
    return pa.table(cols, schema=arrow_schema())


BASE = {"ts": 1_760_000_000.0, "kind": "signal_generate", "pid": 10, "comm": "runc", "sig": "SIGTERM",
        "result": "delivered", "pod_uid": "u1"}
BAD = [("ts", -1.0), ("ts", 2.0 ** 34), ("ts", float("nan")), ("ts", float("inf")),
       *[(name, high + 1) for name, (_, high) in INT_RANGES.items()],
       *[(name, low - 1) for name, (low, _) in INT_RANGES.items()],
       ("kind", "signal_sent"), ("result", "maybe"), ("handler", "sometimes"), ("old_state", "OPEN"),
       ("new_state", "established"), ("sig", "TERM"), ("sig", "SIG" + "X" * 13), ("exit_signal", "sigkill"),
       ("sig", "SIGTERM\n"),
       ("comm", "x" * (STRING_LIMIT + 1)), ("detail", "x" * (STRING_LIMITS["detail"] + 1)),
       ("filename", "/" * (STRING_LIMITS["filename"] + 1)), ("event", "e" * (STRING_LIMIT + 1)),
       ("pod_uid", "u" * (STRING_LIMIT + 1)), ("reason", "\u00e9" * (STRING_LIMIT + 1))]
GOOD = [("comm", "é" * STRING_LIMIT), ("detail", "x" * STRING_LIMITS["detail"]), ("sig", "SIGRTMIN+3"),
        ("exit_signal", "SIGKILL"), ("sport", 65535), ("code", -(2 ** 31)), ("event", "deleted")]


@pytest.mark.parametrize("field,value", BAD + GOOD, ids=lambda v: str(v)[:24])
def test_the_arrow_check_agrees_with_the_frames(field, value):
    table = _table([BASE, {**BASE, field: value}, BASE])
    assert table_is_valid(table) == (table_frame(table) is not None)


def test_the_arrow_check_refuses_another_schema():
    table = _table([BASE]).cast(pa.schema([f if f.name != "pid" else pa.field("pid", pa.float64())
                                           for f in arrow_schema()]))
    assert not table_is_valid(table)


@pytest.mark.parametrize("rec_dir", [DATA / "article", DATA / "clean"], ids=lambda p: p.name)
def test_a_replay_learns_one_pod_from_its_events_alone(rec_dir):
    """`lab --replay DIR [--pod X]` learns from the pod's events only (selection), the same settings,
    notes and verdicts as from the whole recording."""
    from sigtrace.lab.replay import learn
    from sigtrace.lab.replay import run as replay_run
    uid, name = pods_of(rec_dir)[0]
    rec = read_recording(rec_dir)
    reports = build_reports(rec.events, rec.meta, rec.incomplete)
    for pod in (uid, name, None):             # None: the recording's only stopped pod
        if pod is not None:
            alone = replay_run._pod_alone(rec_dir, pod)
            assert alone is not None and set(alone[0].events["pod_uid"].dropna()) <= {uid}
        got = replay_run.learn_recording(rec_dir, pod)
        want = learn.learn(rec, reports, learn.choose_pod(reports, pod, str(rec_dir)))
        want.notes += [f"the recording is incomplete: {n}" for n in rec.incomplete[:3]]
        assert got == want


def test_a_busy_pod_is_learnt_from_its_part_not_the_whole_recording(monkeypatch):
    """The pass of `report --pod` gives up on a pod past MAX_SELECTED_ROWS: the replay then learns
    from the part that holds the pod (the recording split by pod), never from a whole read, and
    learns the same; a pod that is not UTF-8 text is refused before any reading."""
    from sigtrace.errors import DataError
    from sigtrace.events import partition, selection
    from sigtrace.lab.replay import learn
    from sigtrace.lab.replay import run as replay_run
    rec_dir = DATA / "article"
    uid = pods_of(rec_dir)[0][0]
    rec = read_recording(rec_dir)
    reports = build_reports(rec.events, rec.meta, rec.incomplete)
    want = learn.learn(rec, reports, learn.choose_pod(reports, uid, str(rec_dir)))
    want.notes += [f"the recording is incomplete: {n}" for n in rec.incomplete[:3]]
    monkeypatch.setattr(selection, "MAX_SELECTED_ROWS", 5)
    monkeypatch.setattr(partition, "PART_BYTES", 300)
    monkeypatch.setattr(partition.split_recording, "__defaults__", (300, None))
    monkeypatch.setattr(replay_run, "read_recording", lambda *a, **k: pytest.fail("read whole"))
    assert replay_run._pod_alone(rec_dir, uid) is None
    assert replay_run.learn_recording(rec_dir, uid) == want
    with pytest.raises(DataError, match="UTF-8"):
        replay_run.learn_recording(rec_dir, "web\udcff")

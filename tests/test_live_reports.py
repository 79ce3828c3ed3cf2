"""LiveReporter: a pod's report appears once all its containers' PID 1 exited, not before."""
from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from sigtrace.record.live_reports import LiveReporter

DATA = Path(__file__).parent / "data"
POD = "7d2c4e8a-0000-4c5d-9e6f-00000000000a"


def feed_all(name: str, tmp_path: Path, stop_before=None):
    meta = json.loads((DATA / name / "meta.json").read_text())
    out = io.StringIO()
    lr = LiveReporter(tmp_path, Console(file=out, width=120), meta=meta, settle_s=0.5)
    for line in (DATA / name / "events.jsonl").read_text().splitlines():
        ev = json.loads(line)
        if stop_before and stop_before(ev):
            break
        lr.feed(ev)
    return lr, out


def test_report_written_after_the_last_container_exits(tmp_path):
    # feed everything but the nginx master's exit: the nginx container still runs, no report yet
    lr, _ = feed_all("article", tmp_path, stop_before=lambda e: e["kind"] == "process_exit" and e["pid"] == 1001)
    lr.poll()
    assert not (tmp_path / "reports" / f"{POD}.json").exists()
    lr.feed({"ts": 1000.015, "kind": "process_exit", "pid": 1001, "comm": "nginx", "pod_uid": POD,
             "container_id": "aa11aa11aa11", "nspid": 1, "exit_code": 0})
    # the settle time lets the sockets closed by those exits arrive; a later event (or close) ends it
    lr.feed({"ts": 1001.0, "kind": "process_exit", "pid": 77, "comm": "true", "exit_code": 0})
    report = json.loads((tmp_path / "reports" / f"{POD}.json").read_text())
    (pod,) = report["pods"]
    assert [v["id"] for v in pod["verdicts"]] == ["prestop-quit-superseded"]


def test_close_flushes_due_pods_and_prints_a_short_report(tmp_path):
    lr, out = feed_all("shell_pid1", tmp_path)
    lr.close()
    pod = json.loads((tmp_path / "reports" / f"{POD}.json").read_text())["pods"][0]
    assert {v["id"] for v in pod["verdicts"]} == {"pid1-signal-ignored", "killed-after-grace"}
    text = out.getvalue()
    assert "pid1-signal-ignored" in text and "web-7d9f" in text


def test_pod_still_running_gets_no_report(tmp_path):
    lr, _ = feed_all("clean", tmp_path, stop_before=lambda e: e["ts"] >= 1005.0)
    lr.close()
    assert not (tmp_path / "reports").exists()


def test_tcp_events_kept_per_pod_are_bounded_and_the_cut_is_said(tmp_path):
    meta = json.loads((DATA / "article" / "meta.json").read_text())
    lr = LiveReporter(tmp_path, None, meta=meta, settle_s=0.5, max_tcp_events=5)
    lines = [json.loads(x) for x in (DATA / "article" / "events.jsonl").read_text().splitlines()]
    tcp_total = sum(1 for e in lines if e["kind"].startswith("tcp_") or e["kind"] in ("sock_close", "connect_error"))
    assert tcp_total > 5
    for ev in lines:
        lr.feed(ev)
    assert lr.held()["tcp_events"] == 5                # memory: only the latest TCP events are held
    lr.close()
    report = json.loads((tmp_path / "reports" / f"{POD}.json").read_text())
    assert any(f"kept the last 5 of {tcp_total} TCP events" in n for n in report["incomplete"])
    # process and signal events are all kept: the signal verdict still stands
    assert "prestop-quit-superseded" in {v["id"] for v in report["pods"][0]["verdicts"]}


def test_a_running_pod_under_exec_probes_holds_a_bounded_state_and_its_report_stands(tmp_path):
    """Weeks of exec probes (an exec and an exit every second) before the stop: the pod's held
    events stay bounded, the long-lived processes' execs are kept, the verdict is unchanged."""
    from sigtrace.record import live_reports as live
    meta = json.loads((DATA / "article" / "meta.json").read_text())
    lr = LiveReporter(tmp_path, None, meta=meta, settle_s=0.5)
    lines = [json.loads(x) for x in (DATA / "article" / "events.jsonl").read_text().splitlines()]
    probes = 3 * live.MAX_RECENT_EVENTS_PER_POD
    first_signal = next(i for i, e in enumerate(lines) if e["kind"].startswith("signal_"))
    t0, t1 = lines[first_signal - 1]["ts"], lines[first_signal]["ts"]
    for n, ev in enumerate(lines):
        if n == first_signal:                 # the probes ran until the stop began
            for i in range(probes):
                ts = t0 + (t1 - t0) * i / probes
                pid = 50_000 + i
                lr.feed({"ts": ts, "kind": "process_exec", "pid": pid, "comm": "true", "pod_uid": POD,
                         "container_id": "aa11aa11aa11", "nspid": 900, "filename": "/bin/true", "ppid": 7})
                lr.feed({"ts": ts, "kind": "process_exit", "pid": pid, "comm": "true", "pod_uid": POD,
                         "container_id": "aa11aa11aa11", "nspid": 900, "exit_code": 0})
            held = lr.held()
            assert held["other_events"] <= live.MAX_RECENT_EVENTS_PER_POD + 50, held
        lr.feed(ev)
    lr.close()
    report = json.loads((tmp_path / "reports" / f"{POD}.json").read_text())
    assert "prestop-quit-superseded" in {v["id"] for v in report["pods"][0]["verdicts"]}
    assert any("older process and signal events of this pod" in n for n in report["incomplete"])


def test_tcp_events_are_bounded_in_total_and_pods_followed_are_capped(tmp_path):
    lr = LiveReporter(tmp_path, None, meta={"capabilities": ["tcp_states"]}, max_tcp_events=100,
                      max_tcp_total=250, max_pods=3)
    for n in range(5):
        uid = f"00000000-0000-4000-8000-{n:012d}"
        for i in range(100):
            lr.feed({"ts": n + i * 1e-3, "kind": "tcp_state", "pod_uid": uid, "sport": 8080, "dport": 40000 + i,
                     "old_state": "ESTABLISHED", "new_state": "FIN_WAIT1"})
    held = lr.held()
    assert held["pods"] == 3 and held["evicted_pods"] == 2
    assert held["tcp_events"] <= 250


def test_a_pod_uid_that_is_no_uuid_names_no_file(tmp_path):
    """A recording copied from elsewhere, or an API object, can carry any pod uid."""
    out = io.StringIO()
    lr = LiveReporter(tmp_path / "rec", Console(file=out, width=200), meta={"capabilities": ["process_exit"]},
                      settle_s=0)
    evil = "../../escaped\x1b[2J"
    lr.feed({"ts": 1.0, "kind": "process_exec", "pid": 5, "comm": "nginx", "pod_uid": evil, "container_id": "c1",
             "nspid": 1, "filename": "/usr/sbin/nginx"})
    lr.feed({"ts": 2.0, "kind": "process_exit", "pid": 5, "comm": "nginx", "pod_uid": evil, "container_id": "c1",
             "nspid": 1, "exit_code": 0})
    lr.close()
    assert not list(tmp_path.rglob("*escaped*"))
    text = out.getvalue()
    assert "is not a UUID" in text and "\x1b" not in text and "\\x1b[2J" in text


def test_a_planted_reports_link_is_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "reports").symlink_to(elsewhere)
    lr, out = feed_all("shell_pid1", tmp_path / "rec")
    lr.close()
    assert list(elsewhere.iterdir()) == []

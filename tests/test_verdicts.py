"""Each catalog verdict fires on its hand-written scenario (tests/data/<name>: events as the kernel
emits them, see each file), with the evidence that proves it, and nothing fires on the clean one."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sigtrace.report import build_reports
from sigtrace.events.reader import events_frame, read_recording

DATA = Path(__file__).parent / "data"
POD = "7d2c4e8a-0000-4c5d-9e6f-00000000000a"


def report(name: str) -> dict:
    rec = read_recording(DATA / name)
    return build_reports(rec.events, rec.meta, rec.incomplete).to_dict()


def verdicts(name: str) -> dict[str, dict]:
    d = report(name)
    (pod,) = d["pods"]
    return {v["id"]: v for v in pod["verdicts"]}


def test_clean_graceful_shutdown_has_no_verdict():
    d = report("clean")
    (pod,) = d["pods"]
    assert pod["verdicts"] == []
    assert pod["stats"]["client_resets"] == 0 and pod["stats"]["refused_attempts"] == 0
    assert pod["stats"]["upstream_resets"] == 0


@pytest.mark.parametrize("name, expected", [
    ("article", {"prestop-quit-superseded"}),          # not also nginx-fast-shutdown: superseded
    ("nginx_term", {"nginx-fast-shutdown"}),
    ("shell_pid1", {"pid1-signal-ignored", "killed-after-grace"}),
    ("wrapper_trap", {"signal-not-forwarded", "killed-after-grace"}),
    ("fpm_term", {"phpfpm-abrupt-stop"}),
    ("upstream_first", {"upstream-exited-first"}),
    ("endpoint_race", {"endpoint-race"}),
])
def test_each_verdict_fires_on_its_scenario_and_nothing_else(name, expected):
    v = verdicts(name)
    assert set(v) == expected
    for item in v.values():
        assert item["status"] == "confirmed"
        assert item["evidence"] and item["fix"] and item["summary"]
        # evidence cites real events of the recording
        assert any(e["event"] is not None for e in item["evidence"])


def test_article_evidence_names_sender_target_and_order():
    v = verdicts("article")["prestop-quit-superseded"]
    rec = read_recording(DATA / "article")
    cited = [rec.events.loc[e["event"]] for e in v["evidence"] if e["event"] is not None]
    sigs = [(r["kind"], r["comm"], r["sig"], r["target_nspid"]) for r in cited if r["kind"] == "signal_generate"]
    # first the QUIT from the exec'd `nginx -s quit`, then the runtime's TERM, both to the master (PID 1)
    assert sigs[0][1:] == ("nginx", "SIGQUIT", 1)
    assert sigs[1][1:] == ("runc", "SIGTERM", 1)
    assert any(r["kind"] == "tcp_reset_sent" for r in cited)


def test_pid1_ignored_cites_the_ignored_generate():
    v = verdicts("shell_pid1")["pid1-signal-ignored"]
    rec = read_recording(DATA / "shell_pid1")
    first = rec.events.loc[v["evidence"][0]["event"]]
    assert (first["kind"], first["comm"], first["sig"], first["result"], first["target_nspid"]) == \
        ("signal_generate", "runc", "SIGTERM", "ignored", 1)
    k = verdicts("shell_pid1")["killed-after-grace"]
    assert "30 s" in k["summary"] and "+30.000 s" in k["summary"]
    assert "1 connection(s) still open" in k["summary"]


def test_undecidable_under_strace_names_missing_evidence():
    v = verdicts("strace_shell")
    assert v["pid1-signal-ignored"]["status"] == "undecidable"
    assert v["pid1-signal-ignored"]["missing"] == ["signal_sender"]
    assert v["endpoint-race"]["status"] == "undecidable"
    assert "kernel_resets" in v["endpoint-race"]["missing"]
    # what strace does see is confirmed: PID 1 (a shell) got TERM, nginx never got a signal, SIGKILL at +30 s
    assert v["signal-not-forwarded"]["status"] == "confirmed"
    assert v["killed-after-grace"]["status"] == "confirmed"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name / "events.jsonl").read_text().splitlines() if line.strip()]


def _build(rows: list[dict], name: str) -> dict[str, dict]:
    meta = json.loads((DATA / name / "meta.json").read_text())
    (pod,) = build_reports(events_frame(rows), meta).to_dict()["pods"]
    return {v["id"]: v for v in pod["verdicts"]}


def test_fast_shutdown_of_an_idle_nginx_is_no_verdict():
    # the same TERM with no connection open hurts nobody: no false alarm
    rows = [r for r in _rows("nginx_term") if not str(r.get("sock", "")).startswith("ffff8881000")]
    assert _build(rows, "nginx_term") == {}


def test_prestop_quit_with_drain_finished_before_term_is_no_verdict():
    # the worker exited and the connection was closed by the client before the runtime's TERM
    rows = []
    for r in _rows("article"):
        if r["kind"] in ("tcp_state", "tcp_reset_sent", "tcp_reset_received") and r.get("sport") in (40001,) or r.get("dport") == 40001:
            continue
        if r["kind"] == "process_exit" and r["pid"] == 1010:
            r = dict(r, ts=1000.004)
        rows.append(r)
    assert _build(rows, "article") == {}


def test_fpm_term_without_requests_in_flight_is_no_verdict():
    rows = [r for r in _rows("fpm_term") if r.get("sock") not in ("ffff8881000b0001", "ffff8881000f0001")]
    assert _build(rows, "fpm_term") == {}


def test_refusals_before_the_stop_are_not_an_endpoint_race():
    rows = [dict(r, ts=r["ts"] - 10) if r["kind"] in ("tcp_reset_sent",) or r.get("dport") == 8080 and
            str(r.get("sock", "")).startswith("ffff8881000c") else r for r in _rows("endpoint_race")]
    assert "endpoint-race" not in _build(rows, "endpoint_race")


def test_fpm_gone_without_refused_connects_is_no_verdict():
    rows = [r for r in _rows("upstream_first") if r.get("sock") != "ffff8881000b0002" and r["kind"] != "tcp_reset_sent"]
    assert _build(rows, "upstream_first") == {}


# ---- issue 14: real lab recordings (tests/data/field: runc pods, bpf or strace recorder, exec probes
# every second), as `sigtrace lab` made them with the matrix's arguments (tests/test_lab_report.py)
FIELD = DATA / "field"
NEW = {"keepalive-close-race", "nginx-shutdown-timeout", "prestop-exceeds-grace"}


def field(name: str, rows: list[dict] | None = None) -> tuple[pd.DataFrame, dict]:
    rec = read_recording(FIELD / name)
    events = rec.events if rows is None else events_frame(rows)
    (pod,) = build_reports(events, rec.meta, rec.incomplete).to_dict()["pods"]
    return events, pod


def field_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIELD / name / "events.jsonl").read_text().splitlines() if line.strip()]


def by_id(pod: dict) -> dict[str, dict]:
    return {v["id"]: v for v in pod["verdicts"]}


def cited(events: pd.DataFrame, v: dict) -> list[pd.Series]:
    return [events.loc[e["event"]] for e in v["evidence"] if e["event"] is not None]


def test_keepalive_close_race_on_a_balancers_pool():
    events, pod = field("bpf_keepalive_race")
    v = by_id(pod)["keepalive-close-race"]
    assert v["status"] == "confirmed" and v["summary"].startswith("6 idle keep-alive connection(s)")
    rows = cited(events, v)
    # the runtime's QUIT to the nginx master, then FINs by nginx workers, then resets on the same 4-tuples
    assert (rows[0]["kind"], rows[0]["comm"], rows[0]["sig"], rows[0]["target_nspid"]) == \
        ("signal_generate", "runc", "SIGQUIT", 1)
    fins = [r for r in rows if r["kind"] == "tcp_state"]
    resets = [r for r in rows if r["kind"] == "tcp_reset_sent"]
    assert fins and all((r["comm"], r["old_state"], r["new_state"], r["sport"]) == ("nginx", "ESTABLISHED", "FIN_WAIT1", 8080)
                        for r in fins)
    assert {(r["old_state"], r["reason"]) for r in resets} <= {("TIME_WAIT", "TCP_TIMEWAIT_SOCKET"), ("CLOSE", "TCP_ABORT_ON_DATA")}
    assert all(any((f["sport"], f["dport"]) == (r["sport"], r["dport"]) and f["ts"] < r["ts"] for f in fins) for r in resets)
    # the orphan's reset comes from a socket no state change showed: matched by 4-tuple only
    orphans = [r for r in resets if r["old_state"] == "TIME_WAIT"]
    assert orphans and all(not ((events["kind"] == "tcp_state") & (events["sock"] == r["sock"])).any() for r in orphans)
    # every one is a reset the pod sent a client; the lab's pool saw 6 requests fail on closed connections
    assert pod["stats"]["client_resets"] == 6
    assert "endpoint-race" in by_id(pod)          # the pool's new connections were refused after the close


def test_keepalive_races_before_the_stop_are_outside_it():
    rows = field_rows("bpf_keepalive_race")
    races = {(r["sport"], r["dport"]) for r in rows if r["kind"] == "tcp_reset_sent" and r.get("old_state") in
             ("TIME_WAIT", "CLOSE")}
    moved = [dict(r, ts=r["ts"] - 30) if r["kind"] in ("tcp_state", "tcp_reset_sent", "tcp_reset_received")
             and ((r.get("sport"), r.get("dport")) in races or (r.get("dport"), r.get("sport")) in races) else r
             for r in rows]
    rec = read_recording(FIELD / "bpf_keepalive_race")
    rs = build_reports(events_frame(moved), rec.meta).to_dict()
    (pod,) = rs["pods"]
    assert "keepalive-close-race" not in by_id(pod) and pod["stats"]["client_resets"] == 0
    (out,) = rs["resets_outside_stop"]
    assert out["stopped"] is True and out["keepalive_races"] == out["client_resets"] == 6


def test_nginx_shutdown_timeout_cuts_requests_in_flight():
    events, pod = field("bpf_shutdown_timeout")
    assert set(by_id(pod)) == {"nginx-shutdown-timeout"}
    v = by_id(pod)["nginx-shutdown-timeout"]
    assert v["status"] == "confirmed" and "1.00 s later (worker_shutdown_timeout)" in v["summary"]
    assert "2 client connection(s)" in v["summary"] and "2 FastCGI connection(s)" in v["summary"]
    rows = cited(events, v)
    quit_ = rows[0]
    assert (quit_["comm"], quit_["sig"], quit_["target_nspid"]) == ("runc", "SIGQUIT", 1)
    closes = [r for r in rows if r["kind"] == "tcp_state"]
    # nginx's own closes of FastCGI (to :9000) and client (from :8080) connections, 1 s after the QUIT
    assert {r["dport"] for r in closes if r["sport"] != 8080} == {9000}
    assert all(r["comm"] == "nginx" and r["new_state"] == "FIN_WAIT1" and 0.95 < r["ts"] - quit_["ts"] < 1.2 for r in closes)
    late = [r for r in rows if r["kind"] == "tcp_reset_sent"]
    # php-fpm's responses, seconds later, hit nginx's closed sockets
    assert len(late) == 2 and all(r["comm"] == "php-fpm8.2" and r["dport"] == 9000 and r["ts"] - quit_["ts"] > 2.5
                                  for r in late)
    assert pod["stats"]["upstream_resets"] == 2


def test_shutdown_timeout_needs_the_graceful_drain_and_the_late_responses():
    rows = field_rows("bpf_shutdown_timeout")
    quit_ = next(r for r in rows if r["kind"] == "signal_generate" and r["sig"] == "SIGQUIT" and r["comm"] == "runc"
                 and r["target_comm"] == "nginx")
    # a TERM half a second after the QUIT: what is cut is the fast shutdown's doing
    term = dict(quit_, ts=quit_["ts"] + 0.5, sig="SIGTERM")
    _, pod = field("bpf_shutdown_timeout", rows + [term])
    assert "nginx-shutdown-timeout" not in by_id(pod)
    # php-fpm never answered (no late reset): nginx closing first may be a request that just ended
    _, pod = field("bpf_shutdown_timeout", [r for r in rows if r["kind"] not in ("tcp_reset_sent", "tcp_reset_received")])
    assert "nginx-shutdown-timeout" not in by_id(pod)


def test_prestop_exceeds_grace_with_the_kubelets_two_seconds():
    events, pod = field("bpf_prestop_grace")
    v = by_id(pod)["prestop-exceeds-grace"]
    assert v["status"] == "confirmed" and "grace period (4 s)" in v["summary"] and "2-second minimum" in v["summary"]
    rows = cited(events, v)
    what = {"pod_lifecycle": "event", "process_exec": "filename", "signal_generate": "sig", "process_exit": "exit_signal"}
    kinds = [(r["kind"], r[what[r["kind"]]]) for r in rows]
    assert kinds[0] == ("pod_lifecycle", "pod_deleted")
    assert ("process_exec", "/usr/bin/sleep") in kinds
    deleted = rows[0]["ts"]
    stops = [r for r in rows if r["kind"] == "signal_generate" and r["sig"] == "SIGQUIT"]
    assert stops and all(r["comm"] == "runc" and r["target_nspid"] == 1 and 3.9 < r["ts"] - deleted < 4.3 for r in stops)
    kill = [r for r in rows if r["kind"] == "signal_generate" and r["sig"] == "SIGKILL"]
    assert kill and 1.9 < kill[0]["ts"] - stops[0]["ts"] < 2.3
    assert pod["stats"]["grace_period_s"] == 4.0


def test_prestop_running_at_a_stop_long_before_the_grace_period_is_no_verdict():
    # the same recording, had the pod a 30 s grace period: a stop signal 4 s after the deletion is
    # not the kubelet giving up on the hook
    rows = []
    for r in field_rows("bpf_prestop_grace"):
        if r["kind"] == "pod_lifecycle" and r.get("event") in ("pod_seen", "pod_deleted"):
            r = dict(r, detail=json.dumps(dict(json.loads(r["detail"]), grace_period_s=30)))
        rows.append(r)
    _, pod = field("bpf_prestop_grace", rows)
    assert "prestop-exceeds-grace" not in by_id(pod)


def test_new_verdicts_under_strace():
    # worker_shutdown_timeout is in the processes' own close() calls
    events, pod = field("strace_shutdown_timeout")
    v = by_id(pod)["nginx-shutdown-timeout"]
    assert v["status"] == "confirmed" and "socket calls" in v["summary"]
    closes = [r for r in cited(events, v) if r["kind"] == "sock_close"]
    assert {r["comm"] for r in closes} == {"nginx"} and {9000, 8080} <= {r["dport"] for r in closes} | {r["sport"] for r in closes}
    # the kernel's resets to closed sockets, and so the keep-alive race and what 2 s did to clients, are not
    for name in ("strace_keepalive_race", "strace_shutdown_timeout", "strace_prestop_grace"):
        _, pod = field(name)
        assert by_id(pod)["keepalive-close-race"]["status"] == "undecidable"
        assert by_id(pod)["keepalive-close-race"]["missing"] == ["tcp_states", "kernel_resets"]
    p = by_id(field("strace_prestop_grace")[1])["prestop-exceeds-grace"]
    assert p["status"] == "undecidable" and p["missing"] == ["tcp_states", "kernel_resets"]
    assert "4.0" in p["summary"] and "after the deletion" in p["summary"]


@pytest.mark.parametrize("name", ["article", "clean", "endpoint_race", "fpm_term", "nginx_term", "shell_pid1",
                                  "strace_shell", "upstream_first", "wrapper_trap", "lab/bpf_article", "lab/bpf_pqs",
                                  "lab/strace_killed_with_pid1", "fleet/node-a", "fleet/node-b"])
def test_new_verdicts_never_fire_where_their_cause_is_absent(name):
    rec = read_recording(DATA / name)
    for pod in build_reports(rec.events, rec.meta, rec.incomplete).to_dict()["pods"]:
        assert not NEW & {v["id"] for v in pod["verdicts"]}, pod["verdicts"]

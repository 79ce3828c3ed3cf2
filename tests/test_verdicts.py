"""Each catalog verdict fires on its hand-written scenario (tests/data/<name>: events as the kernel
emits them, see each file), with the evidence that proves it, and nothing fires on the clean one."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sigtrace.correlate import build_reports
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

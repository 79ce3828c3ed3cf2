"""`sigtrace report` end to end through the real CLI: formats, --pod, and bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

DATA = Path(__file__).parent / "data"
POD = "7d2c4e8a-0000-4c5d-9e6f-00000000000a"


def test_text_report_names_cause_fix_and_timeline(sigtrace_cli):
    r = sigtrace_cli("report", str(DATA / "article"))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "shop/web-7d9f" in out and "prestop-quit-superseded" in out and "fix:" in out
    assert "runc[901] (runtime) → nginx master nginx[1001] (PID 1): SIGTERM" in out
    assert "incomplete data" not in out


def test_json_is_stable_and_has_the_contract_keys(sigtrace_cli):
    a = sigtrace_cli("report", str(DATA / "fpm_term"), "--format", "json")
    b = sigtrace_cli("report", str(DATA / "fpm_term"), "--format", "json")
    assert a.returncode == 0 and a.stdout == b.stdout
    d = json.loads(a.stdout)
    assert set(d) == {"pods", "lost_events", "incomplete"}
    (pod,) = d["pods"]
    assert {"pod_uid", "pod_name", "namespace", "containers", "timeline", "verdicts", "stats"} <= set(pod)
    (v,) = pod["verdicts"]
    assert set(v) == {"id", "summary", "evidence", "fix", "status"} and v["id"] == "phpfpm-abrupt-stop"
    assert pod["stats"]["upstream_cut_at_exit"] == 1
    assert {c["name"] for c in pod["containers"]} == {"nginx", "php-fpm"}


def test_html_is_one_self_contained_file(sigtrace_cli, tmp_path):
    out = tmp_path / "r.html"
    r = sigtrace_cli("report", str(DATA / "article"), "--format", "html", "--output", str(out))
    assert r.returncode == 0, r.stderr
    html = out.read_text()
    assert "<svg" in html and "prestop-quit-superseded" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html


def test_pod_filter_and_unknown_pod(sigtrace_cli):
    r = sigtrace_cli("report", str(DATA / "clean"), "--pod", POD, "--format", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["pods"][0]["pod_uid"] == POD
    r = sigtrace_cli("report", str(DATA / "clean"), "--pod", "nope")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and POD in r.stderr and "Traceback" not in r.stderr


def test_missing_dir_and_empty_recording_are_one_line_errors(sigtrace_cli, tmp_path):
    r = sigtrace_cli("report", str(tmp_path / "nothing"))
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    (tmp_path / "events.jsonl").write_text("")
    r = sigtrace_cli("report", str(tmp_path))
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "no readable events" in r.stderr


def test_truncated_and_newer_recorder_input_is_used_and_listed(sigtrace_cli, tmp_path):
    d = tmp_path / "rec"
    shutil.copytree(DATA / "shell_pid1", d)
    with open(d / "events.jsonl", "a") as fh:
        fh.write('{"ts":1031.0,"kind":"oom_kill","pid":5}\n')                       # a kind from a newer recorder
        fh.write('{"ts":1031.1,"kind":"process_exit","pid":6,"cgroup_path":"/x"}\n')  # an unknown field
        fh.write('{"ts":1031.2,"kind":"process_ex')                                    # killed mid-line
    r = sigtrace_cli("report", str(d), "--format", "json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    joined = " | ".join(rep["incomplete"])
    assert "oom_kill" in joined and "cgroup_path" in joined and "truncated last line" in joined
    assert {v["id"] for v in rep["pods"][0]["verdicts"]} == {"pid1-signal-ignored", "killed-after-grace"}
    r = sigtrace_cli("report", str(d))
    assert "incomplete data" in r.stdout


def test_recording_without_capabilities_says_so(sigtrace_cli, tmp_path):
    d = tmp_path / "rec"
    shutil.copytree(DATA / "nginx_term", d)
    (d / "meta.json").unlink()
    r = sigtrace_cli("report", str(d), "--format", "json")
    rep = json.loads(r.stdout)
    assert any("no meta.json" in n for n in rep["incomplete"])
    assert any("capabilities" in n for n in rep["incomplete"])
    assert [v["id"] for v in rep["pods"][0]["verdicts"]] == ["nginx-fast-shutdown"]

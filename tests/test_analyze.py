"""sigtrace analyze: the same verdicts as `report` (one implementation), and the fleet numbers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sigtrace.analyze import analyze_files, node_frames, read_exports
from sigtrace.analyze.fleet import fleet_from_reports
from sigtrace.cli import main
from sigtrace.report import build_reports
from sigtrace.events.reader import read_recording
from sigtrace.export import export_recordings

DATA = Path(__file__).parent / "data"
# every recording in tests/data (hand-written by the report tests and these, and lab recordings
# saved there later), found by its events.jsonl
RECORDINGS = sorted(p.parent for p in DATA.rglob("events.jsonl"))
FLEET = [DATA / "fleet" / "node-a", DATA / "fleet" / "node-b"]


def verdicts(report_dict: dict) -> dict[str, list[tuple[str, str]]]:
    return {p["pod_uid"]: [(v["id"], v["status"]) for v in p["verdicts"]] for p in report_dict["pods"]}


@pytest.mark.parametrize("rec_dir", RECORDINGS, ids=lambda p: str(p.relative_to(DATA)))
def test_analyze_gives_the_reports_of_the_recording(tmp_path, rec_dir):
    rec = read_recording(rec_dir)
    want = build_reports(rec.events, rec.meta, rec.incomplete).to_dict()
    out = tmp_path / "x.csv"
    export_recordings([rec_dir], csv=str(out))
    ((node, events, meta, incomplete),) = list(node_frames(read_exports([str(out)])))
    got = build_reports(events, meta, incomplete).to_dict()
    # the whole report, timeline, evidence and stats included, not only the verdict ids
    assert got["pods"] == want["pods"]
    assert got["lost_events"] == want["lost_events"]
    fleet = analyze_files([str(out)])
    by_pod = {uid: sorted(g["id"]) for uid, g in fleet.verdicts.groupby("pod_uid", observed=True)}
    assert by_pod == {uid: sorted(i for i, _ in v) for uid, v in verdicts(want).items() if v}


def test_fleet_of_two_nodes(tmp_path):
    out = tmp_path / "fleet.csv"
    export_recordings(FLEET, csv=str(out))
    fleet = analyze_files([str(out)])
    want = {}
    for d in FLEET:
        rec = read_recording(d)
        want.update(verdicts(build_reports(rec.events, rec.meta, rec.incomplete).to_dict()))
    got = {uid: list(zip(g["id"].astype(str), g["status"].astype(str)))
           for uid, g in fleet.verdicts.groupby("pod_uid", observed=True)}
    assert got == {uid: v for uid, v in want.items() if v}

    s = fleet.summary()
    assert (s["pods"], s["pods_stopped"], s["pods_hurt"], s["nodes"], s["lost_events"]) == (3, 3, 2, 2, 3)
    counts = {r["id"]: (r["pods"], round(r["share"], 3)) for r in s["verdicts"]}
    assert counts == {"endpoint-race": (1, 0.333), "prestop-quit-superseded": (1, 0.333),
                      "pid1-signal-ignored": (1, 0.333), "killed-after-grace": (1, 0.333)}
    times = fleet.pods.set_index("pod")["shutdown_s"]
    assert times["shop/api-5d4f6c7b8-q9w2z"] == pytest.approx(30.006)   # SIGKILL at grace end
    assert s["shutdown"]["max_s"] == pytest.approx(30.006)
    assert s["shutdown"]["p50_s"] == pytest.approx(float(np.percentile(times, 50)))
    assert s["shutdown"]["p95_s"] == pytest.approx(float(np.percentile(times, 95)))
    assert {r["namespace"]: (r["pods"], r["hurt"]) for r in s["by_namespace"]} == {"shop": (2, 2), "batch": (1, 0)}
    # worker-0 is a StatefulSet pod: no deployment; the others by the ReplicaSet-hash pattern
    assert {r["deployment"]: (r["pods"], r["hurt"]) for r in s["by_deployment"]} == {"web": (1, 1), "api": (1, 1)}
    pods = fleet.pods.set_index("pod")
    assert pods.loc["shop/web-7c9d8f6b5-x2k4q", "refused"] == 1
    assert pods.loc["shop/web-7c9d8f6b5-x2k4q", "resets"] == 1
    assert pods.loc["batch/worker-0", "lost_events"] == 3 and pods.loc["batch/worker-0", "verdicts"] == ""


def test_aggregates_count_decided_verdicts_of_stopped_pods():
    def pod(uid, name, ns, verdicts, t, stopped=True):
        return {"pod_uid": uid, "pod_name": name, "namespace": ns, "stopped": stopped, "containers": [],
                "timeline": [], "stats": {"trigger_to_last_exit_s": t, "client_resets": 0, "refused_attempts": 0},
                "verdicts": [{"id": i, "status": s, "summary": "", "fix": "", "evidence": []} for i, s in verdicts]}
    reports = {"pods": [
        pod("u1", "shop-abc-zzzzz", "a", [("nginx-fast-shutdown", "confirmed")], 1.0),
        pod("u2", "shop-abc-bbbbb", "a", [("endpoint-race", "undecidable")], 2.0),
        pod("u3", "db-0", "b", [], 3.0),
        pod("u4", "idle-6d4f5c8bb9-x2k4q", "b", [], None, stopped=False),
    ], "lost_events": 0, "incomplete": []}
    fleet = fleet_from_reports([("n1", reports)], {"n1": {"node": "n1"}}, template_hashes={"u1": "abc", "u2": "abc"})
    s = fleet.summary()
    assert (s["pods"], s["pods_stopped"], s["pods_hurt"]) == (4, 3, 1)
    assert s["verdicts"] == [
        {"id": "nginx-fast-shutdown", "pods": 1, "share": pytest.approx(1 / 3), "undecided": 0},
        {"id": "endpoint-race", "pods": 0, "share": 0.0, "undecided": 1}]
    assert s["shutdown"] == {"pods": 3, "p50_s": 2.0, "p95_s": pytest.approx(2.9), "max_s": 3.0}
    # the pod-template-hash label names the deployment even where the name pattern cannot ("abc")
    assert s["by_deployment"] == [{"deployment": "shop", "pods": 2, "hurt": 1, "share": 0.5}]


def test_cli_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "fleet.csv", tmp_path / "fleet.png"
    export_recordings(FLEET, parquet=str(tmp_path / "fleet.parquet"), csv=str(out))
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(out), "--json", "--plot", str(png)])
    assert exc.value.code == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"fleet", "pods", "nodes", "incomplete"}
    web = next(p for p in doc["pods"] if p["pod"] == "shop/web-7c9d8f6b5-x2k4q")
    assert [v["id"] for v in web["verdicts"]] == ["endpoint-race", "prestop-quit-superseded"]
    assert web["verdicts"][0]["fix"] and web["node"] == "node-a" and web["deployment"] == "web"
    assert doc["nodes"]["node-b"]["lost_events"] == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    # Parquet in, same answer
    with pytest.raises(SystemExit):
        main(["analyze", str(tmp_path / "fleet.parquet"), "--json"])
    assert json.loads(capsys.readouterr().out) == doc


def test_cli_tables(tmp_path, sigtrace_cli):
    out = tmp_path / "fleet.csv"
    export_recordings(FLEET, csv=str(out))
    r = sigtrace_cli("analyze", str(out), env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "pid1-signal-ignored, killed-after-grace" in r.stdout
    assert "2 hurt (67% of stopped pods)" in r.stdout

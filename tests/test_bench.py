"""The benchmark harness's pieces (not the benchmark: `make bench`): the arithmetic of interleaved
runs, wrk parsing, the capacity accounting, and synthetic recordings that are schema-valid and
tell the same story as the recordings they are cloned from."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from bench import analysis, capacity, overhead, procs, report, stats, synth
from sigtrace.report import build_reports
from sigtrace.events.reader import read_recording
from sigtrace.events.schema import FIELD_NAMES, KINDS


def test_interleaved_order_and_ratios():
    assert stats.interleaved(["a", "b"], 3) == [(0, "a"), (0, "b"), (1, "a"), (1, "b"), (2, "a"), (2, "b")]
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([4.0, 1.0, None, 2.0, 3.0]) == 2.5
    assert stats.median([]) is None
    assert stats.ratio(98.0, 100.0) == pytest.approx(0.98)
    assert stats.ratio(1.0, 0.0) is None and stats.ratio(None, 1.0) is None
    # round i against round i of the baseline; a failed run (None) drops its pair only
    assert stats.paired_ratios([90.0, None, 110.0], [100.0, 100.0, 100.0]) == [pytest.approx(0.9), pytest.approx(1.1)]
    assert stats.spread([90.0, 100.0, 110.0]) == pytest.approx(0.2)


def test_summary_uses_the_untraced_run_of_the_same_round():
    runs = [{"mode": "untraced", "round": 0, "rps": 100.0}, {"mode": "bpf", "round": 0, "rps": 99.0,
                                                              "tracer": {"lost_events": 0, "events": 5}},
            {"mode": "untraced", "round": 1, "rps": 50.0}, {"mode": "bpf", "round": 1, "rps": 48.0,
                                                             "tracer": {"lost_events": 3, "events": 9}}]
    s = overhead.summarize(runs, ("untraced", "bpf"))
    assert s["bpf"]["median_paired_ratio"] == pytest.approx((0.99 + 0.96) / 2)
    assert s["bpf"]["ratio_of_medians"] == pytest.approx(73.5 / 75.0)
    assert s["bpf"]["runs_with_loss"] == 1 and s["bpf"]["lost_events"] == [0, 3]


def test_parse_wrk():
    text = """Running 5s test @ http://127.0.0.1:8080/static
  2 threads and 32 connections
  61473 requests in 3.04s, 9.73MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  20201.07
Transfer/sec:      3.20MB
"""
    assert overhead.parse_wrk(text) == {"rps": 20201.07, "requests": 61473, "socket_errors": 3, "non_2xx": 4}
    assert overhead.parse_wrk("")["rps"] is None


def test_capacity_counts_only_the_generators_signals(tmp_path):
    lines = [
        {"ts": 1.0, "kind": "signal_generate", "pid": 42, "sig": "SIGURG", "target_pid": 7, "result": "ignored"},
        {"ts": 1.1, "kind": "signal_generate", "pid": 42, "sig": "SIGURG", "target_pid": 7, "result": "ignored"},
        {"ts": 1.2, "kind": "signal_generate", "pid": 43, "sig": "SIGURG", "target_pid": 7},   # someone else
        {"ts": 1.3, "kind": "signal_generate", "pid": 42, "sig": "SIGTERM", "target_pid": 7},  # another signal
        {"ts": 1.4, "kind": "signal_generate", "pid": 42, "sig": "SIGURG", "target_pid": 70},  # another target
    ]
    # a fast run rotates: the first segment and a second one
    for name, part in (("events.jsonl", lines[:2]), ("events-000002.jsonl", lines[2:] + lines[:1])):
        (tmp_path / name).write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in part))
    assert capacity.count_signals(tmp_path, 42, 7) == 3


def test_synthetic_recording_is_schema_valid(tmp_path):
    info = synth.generate(tmp_path, 3000, events_per_pod=120, seed=3)
    assert info["events"] == 3000 and info["pods"] > 5
    with open(tmp_path / "events.jsonl") as fh:
        rows = [json.loads(line) for line in fh]
    assert len(rows) == 3000
    assert all(set(r) <= set(FIELD_NAMES) and r["kind"] in KINDS and isinstance(r["ts"], float) for r in rows)
    # read by the tolerant path too: nothing skipped, nothing unknown
    for fast in (True, False):
        rec = read_recording(tmp_path, fast=fast)
        assert len(rec.events) == 3000 and rec.incomplete == []
    assert rec.events["pod_uid"].dropna().nunique() == info["pods"]
    # each pod has its own pids: no pid is shared by two pods
    own = rec.events.dropna(subset=["pod_uid", "pid"])
    own = own[own["container_id"].notna()]
    assert (own.groupby("pid")["pod_uid"].nunique() == 1).all()


@pytest.mark.parametrize("name", sorted(synth.STORIES))
def test_a_cloned_pod_tells_its_storys_verdicts(tmp_path, name):
    """A synthetic pod (new uid, container ids, pids, sockets, ports, time, cloned connections) gets
    the verdicts the report gives the recording it was cloned from."""
    src = synth.TEMPLATE_DIR / name
    original = read_recording(src)
    expected = sorted(v.id if hasattr(v, "id") else v["id"]
                      for p in build_reports(original.events, original.meta).to_dict()["pods"] for v in p["verdicts"])
    story = synth.load_story(name)
    lines = [line for _, _, line in sorted(synth.pod_lines(story, 5, random.Random(1), 3, 1_760_000_000.0))]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "meta.json").write_text((src / "meta.json").read_text())
    rec = read_recording(tmp_path)
    pods = build_reports(rec.events, rec.meta).to_dict()["pods"]
    assert len(pods) == 1 and pods[0]["pod_uid"] != original.events["pod_uid"].dropna().iloc[0]
    assert sorted(v["id"] for v in pods[0]["verdicts"]) == expected


def test_docs_render_targets_and_lost_runs():
    results = {"started": 0, "duration_s": 1, "machine": {"cpu": "x", "cpus": 2},
               "overhead": {"config": {}, "summary": overhead.summarize(
                   [{"mode": "untraced", "round": 0, "rps": 100.0},
                    {"mode": "bpf", "round": 0, "rps": 99.0, "tracer": {"lost_events": 0, "events": 1}},
                    {"mode": "bpf-armed", "round": 0, "rps": 90.0, "tracer": {"lost_events": 12, "events": 1}}],
                   ("untraced", "bpf", "bpf-armed"))},
               "startup": {"runs": [], "median_ready_s": 1.5, "median_startup_s": 0.9, "median_rss_kb": 300 * 1024}}
    md = report.write_docs(results)
    assert "| bpf ≥ 0.98 × untraced req/s under churn (pod running) | 0.990" in md
    assert "**Runs that lost events**: bpf-armed" in md
    assert "record RSS ≤ 200 MB | 300 MB RSS" in md and "**not met**" in md


def test_a_timed_commands_peak_memory_is_its_own(tmp_path):
    """wait4's max RSS of a command spawned by a process that had grown big was that process's
    peak (kept across exec): the bench times commands through bench.launcher, a fresh image."""
    big = bytearray(400 << 20)
    for i in range(0, len(big), 4096):
        big[i] = 1
    t = procs.run_timed(["true"], 30)
    assert t.rc == 0 and not t.timed_out and t.max_rss_kb < 100 << 10
    touch = "x = bytearray(200 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('done')"
    t = procs.run_timed([sys.executable, "-c", touch], 30)
    assert t.rc == 0 and t.stdout == "done\n" and 200 << 10 <= t.max_rss_kb < 300 << 10
    assert t.tree_pss_kb < 300 << 10
    del big


def test_a_timed_command_past_its_timeout_is_killed_with_its_group():
    t = procs.run_timed(["sh", "-c", "echo started >&2; sleep 60 & sleep 60"], 0.5)
    assert t.timed_out and t.rc is None and t.wall_s < 10 and t.stderr == "started\n"
    t = procs.run_timed(["sh", "-c", "exit 3"], 30)       # the launcher goes on after a kill
    assert t.rc == 3 and not t.timed_out


def test_fleet_copy_spreads_the_pods_over_nodes(tmp_path):
    import pyarrow.parquet as pq
    from sigtrace.export import export_recordings
    info = synth.generate(tmp_path / "rec", 3000, events_per_pod=120, seed=3)
    export_recordings([str(tmp_path / "rec")], parquet=str(tmp_path / "export.parquet"))
    fleet = analysis.fleet_copy(tmp_path / "export.parquet", pods_per_node=4)
    table = pq.read_table(str(fleet)).to_pandas()
    uid = table["pod_uid"].astype(object).fillna(table["target_pod_uid"].astype(object))
    nodes_of_pod = table.assign(uid=uid).dropna(subset=["uid"]).groupby("uid", observed=True)["node"].nunique()
    assert len(nodes_of_pod) == info["pods"] and (nodes_of_pod == 1).all()       # a pod on one node
    pods_per_node = table.assign(uid=uid).dropna(subset=["uid"]).groupby("node", observed=True)["uid"].nunique()
    assert pods_per_node.max() == 4 and len(pods_per_node) == -(-info["pods"] // 4)
    meta = json.loads(pq.read_schema(str(fleet)).metadata[b"sigtrace"])
    for node, m in meta["nodes"].items():
        own = set(table.loc[(table["node"] == node).to_numpy(), "pod_uid"].dropna().astype(str))
        assert m["node"] == node and set(m["pod_endpoints"]) <= own

"""Analysis throughput: read, report, export and analyze on synthetic recordings (bench/synth.py).

Each stage runs as its own process (`sigtrace report DIR --format json`, `sigtrace export DIR
--parquet F`, `sigtrace analyze F --json`, read_recording alone, and the chunked JSON parse
alone), timed with its CPU and peak memory: the larger of its own peak RSS (wait4) and the summed
PSS of its process group (the worker processes of report and analyze), sampled every 0.1 s. A
stage that would not finish in its time limit, judged from the smaller size, is skipped and says
so; one that runs over is killed and reported as timed out.

Two layouts of the same events: `columnar`, what the recorder leaves by default (every closed
64 MiB segment compacted to an Arrow file, the last one JSONL), and `jsonl` (`record --no-compact`,
and recordings made before compaction). The `compact` row is the compaction itself: the recorder's
child does it one segment at a time while recording; here every segment, one after the other.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from sigtrace.events.segments import SEGMENT_BYTES, list_segments

from . import procs, synth

JSONL, COLUMNAR = "jsonl", "columnar"

READ = [sys.executable, "-c", "import sys; from sigtrace.events.reader import read_recording; "
        "r = read_recording(sys.argv[1]); print(len(r.events))"]
# the parse alone, as report and export do it (JSONL: 32 MB chunks, pyarrow, explicit schema; columnar
# segments: their batches, checked): their floor
PARSE = [sys.executable, "-c", "import sys; from sigtrace.events.partition import CleanChunks; "
         "from sigtrace.events.source import plan_recording; "
         "print(sum(t.num_rows for t, _ in CleanChunks(plan_recording(sys.argv[1]))))"]


def dataset(cache: Path, n: int, log: Callable[[str], None], layout: str = COLUMNAR) -> tuple[Path, dict[str, Any]]:
    """The synthetic recording of n events, generated once per format version and reused: JSONL
    segments as the recorder writes them (`--no-compact`), and a copy of it with every closed
    segment compacted, as the recorder leaves it by default."""
    d = cache / f"synth-{n}-v{synth.FORMAT_VERSION}"
    done = d / ".complete"
    if not done.exists():
        shutil.rmtree(d, ignore_errors=True)
        log(f"analysis: generating {n} synthetic events in {d}")
        t = procs.run_timed([sys.executable, "-m", "bench.synth", str(d), "--events", str(n),
                             "--segment-bytes", str(SEGMENT_BYTES)], timeout=3600)
        if t.rc != 0:
            raise RuntimeError(f"synth failed: {t.stderr[-300:]}")
        done.write_text(t.stdout)
    info = json.loads(done.read_text())
    if layout == JSONL:
        return d, info
    c = cache / f"synth-{n}-v{synth.FORMAT_VERSION}-columnar"
    done_c = c / ".complete"
    if not done_c.exists():
        shutil.rmtree(c, ignore_errors=True)
        log(f"analysis: compacting the closed segments of {d} into {c}")
        t = procs.run_timed([sys.executable, "-m", "bench.synth", str(c), "--columnar-from", str(d)], timeout=3600)
        if t.rc != 0:
            raise RuntimeError(f"compaction failed: {t.stderr[-300:]}")
        done_c.write_text(t.stdout)
    made = json.loads(done_c.read_text())
    made["disk_bytes"] = made.pop("bytes", None)        # the compacted recording's size on disk
    return c, {**info, **made}


def dirty_copy(c: Path) -> Path:
    """The columnar recording with one line that is not JSON in the middle of its last (JSONL)
    segment: a recording copied from elsewhere or edited, which the tolerant reader's checks read.
    Its columnar segments are hard links (nothing writes to them)."""
    d = c.parent / f"{c.name}-dirty"
    made_from = (c / ".complete").read_text() if (c / ".complete").exists() else ""
    if (d / ".complete").exists() and (d / ".complete").read_text() == made_from:
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    segments = list_segments(c)
    for _, path in segments[:-1]:
        os.link(path, d / path.name)
    shutil.copy(c / "meta.json", d / "meta.json")
    lines = segments[-1][1].read_bytes().split(b"\n")
    lines.insert(len(lines) // 2, b"{not json")
    (d / segments[-1][1].name).write_bytes(b"\n".join(lines))
    (d / ".complete").write_text(made_from)        # remade when its source is
    return d


def stage_cmd(stage: str, d: Path, parquet: Path) -> list[str]:
    """The command a stage times on recording d (made only for the stage asked: report-pod reads
    the recording for a pod, report-dirty makes its copy)."""
    # a file, not /dev/null: report writes only regular files (a planted device or FIFO is refused)
    to_file = ["--format", "json", "-o", str(d / "report.json")]
    if stage == "read":
        return READ + [str(d)]
    if stage == "parse":
        return PARSE + [str(d)]
    if stage == "report":
        return procs.SIGTRACE + ["report", str(d)] + to_file
    if stage == "report-pod":
        # the question of a stopped pod on a node's long recording: every file read, that pod correlated
        return procs.SIGTRACE + ["report", str(d), "--pod", a_late_pod(d)] + to_file
    if stage == "report-dirty":
        # one bad line: read by chunks all the same (before: the whole recording as dicts)
        return procs.SIGTRACE + ["report", str(dirty_copy(d))] + to_file
    if stage == "export":
        return procs.SIGTRACE + ["export", str(d), "--parquet", str(parquet)]
    if stage == "analyze":
        return procs.SIGTRACE + ["analyze", str(parquet), "--json"]
    if stage == "analyze-fleet":
        return procs.SIGTRACE + ["analyze", str(fleet_copy(parquet)), "--json"]
    raise ValueError(f"no stage {stage}")


PODS_PER_NODE = 4


def fleet_copy(parquet: Path, pods_per_node: int = PODS_PER_NODE) -> Path:
    """The export as a fleet's: its pods spread over nodes of pods_per_node each (by uid; a row
    of no pod goes with its signal's target, else to the first node), each node with the
    recording's meta and its own pods' endpoints. A fleet of many small nodes: a node's report
    has a fixed cost a one-node export never shows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    out = parquet.with_name("fleet.parquet")
    table = pq.read_table(str(parquet))
    meta = json.loads(table.schema.metadata[b"sigtrace"])
    (only, node_meta), = meta["nodes"].items()
    uid = pc.coalesce(table.column("pod_uid").cast(pa.string()), table.column("target_pod_uid").cast(pa.string()))
    # column by column (a list of 10M names held the bench at ~6 GB)
    uids = pc.unique(pc.drop_null(uid))
    uids = pc.filter(uids, pc.not_equal(uids, ""))
    uids = pc.take(uids, pc.array_sort_indices(uids))
    names = [f"node-{i:05d}" for i in range(max(1, -(-len(uids) // pods_per_node)))]
    node_index = pc.fill_null(pc.divide(pc.index_in(uid, value_set=uids), pods_per_node), 0).cast(pa.int32())
    table = table.set_column(table.schema.get_field_index("node"), "node",
                             pa.DictionaryArray.from_arrays(node_index.combine_chunks(), pa.array(names)))
    node_of = {u: names[i // pods_per_node] for i, u in enumerate(uids.to_pylist())}
    endpoints = node_meta.get("pod_endpoints") or {}
    nodes = {}
    for u, node in node_of.items():
        m = nodes.setdefault(node, dict(node_meta, node=node, pod_endpoints={}))
        if u in endpoints:
            m["pod_endpoints"][u] = endpoints[u]
    nodes.setdefault("node-00000", dict(node_meta, node="node-00000", pod_endpoints={}))
    meta["nodes"] = nodes
    pq.write_table(table.replace_schema_metadata({b"sigtrace": json.dumps(meta).encode()}), str(out))
    return out


def a_late_pod(d: Path) -> str:
    """The uid of a pod of the recording's last segment (always JSONL): one stopped late, whose
    report needs every file read."""
    with open(list_segments(d)[-1][1], "rb") as fh:
        for line in fh:
            uid = json.loads(line).get("pod_uid")
            if uid:
                return uid
    raise RuntimeError(f"{d}: no pod in its last segment")


# (stage, layout): the JSONL layout is what --no-compact and recordings of before 0.2 are; analyze
# reads the export, whatever the recording's layout
ALL_STAGES = [("parse", JSONL), ("report", JSONL), ("parse", COLUMNAR), ("read", COLUMNAR), ("report", COLUMNAR),
              ("report-pod", COLUMNAR), ("report-dirty", COLUMNAR), ("export", COLUMNAR), ("analyze", COLUMNAR),
              ("analyze-fleet", COLUMNAR)]
READ_STAGES = [("parse", JSONL), ("parse", COLUMNAR), ("read", COLUMNAR), ("export", COLUMNAR)]


def measure(sizes: list[int], report_sizes: list[int], cache: Path, timeout: float = 300.0,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """read and export at every size; report and analyze (the correlation) at report_sizes too."""
    cache.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    last_rate: dict[tuple[str, str], float] = {}
    for n in sorted(set(sizes) | set(report_sizes)):
        stages = ALL_STAGES if n in report_sizes else READ_STAGES if n in sizes else []
        made: dict[str, Any] = {}
        for layout in (JSONL, COLUMNAR):
            made[layout] = dataset(cache, n, log, layout)
        parquet = made[COLUMNAR][0] / "export.parquet"
        compact = made[COLUMNAR][1]
        if compact["compacted_events"]:          # a recording of one segment has nothing closed to compact
            results.append({"stage": "compact", "layout": COLUMNAR, "events": compact["compacted_events"],
                            "pods": compact["pods"], "file_mb": round(made[JSONL][1]["bytes"] / 1e6, 1),
                            "wall_s": compact["compact_s"], "peak_rss_mb": compact.get("child_peak_rss_mb"),
                            "events_per_s": round(compact["compacted_events"] / max(compact["compact_s"], 1e-9)),
                            "ms_per_pod": None, "kept": compact["kept"],
                            "disk_mb": round((compact.get("disk_bytes") or 0) / 1e6, 1)})
        for stage, layout in stages:
            d, info = made[layout]
            row: dict[str, Any] = {"stage": stage, "layout": layout, "events": info["events"], "pods": info["pods"],
                                   "file_mb": round(info["bytes"] / 1e6, 1)}
            key = (stage, layout)
            if stage.startswith("analyze") and not parquet.exists():
                row["skipped"] = "no export"
            elif key in last_rate and info["events"] / last_rate[key] > timeout:
                row["skipped"] = (f"projected {info['events'] / last_rate[key]:.0f} s at "
                                  f"{last_rate[key]:.0f} events/s > limit {timeout:.0f} s")
            else:
                t = procs.run_timed(stage_cmd(stage, d, parquet), timeout)
                row.update({"wall_s": round(t.wall_s, 2), "cpu_s": round(t.cpu_s, 2),
                            # the workers' memory counts: the larger of the command's own peak
                            # and its process group's summed PSS
                            "peak_rss_mb": round(max(t.max_rss_kb, t.tree_pss_kb) / 1024),
                            "main_rss_mb": round(t.max_rss_kb / 1024), "tree_pss_mb": round(t.tree_pss_kb / 1024),
                            "rc": t.rc, "timed_out": t.timed_out})
                if t.rc == 0:
                    row["events_per_s"] = round(info["events"] / t.wall_s)
                    row["ms_per_pod"] = round(1000 * t.wall_s / info["pods"], 1)
                    last_rate[key] = info["events"] / t.wall_s
                else:
                    row["error"] = "timed out" if t.timed_out else t.stderr.strip()[-300:]
                    if t.timed_out:           # a rate to project the next size from; an error is none
                        last_rate[key] = info["events"] / max(t.wall_s, 1e-9)
            results.append(row)
            log(f"analysis: {stage:8s} {layout:8s} {n:>9} events: " + (row.get("skipped") or row.get("error") or
                f"{row['wall_s']} s, {row['events_per_s']} events/s, peak {row['peak_rss_mb']} MB"))
            if stage.startswith("report"):
                (d / "report.json").unlink(missing_ok=True)
        for extra in [*made[COLUMNAR][0].glob("export.parquet*"), made[COLUMNAR][0] / "fleet.parquet"]:
            extra.unlink(missing_ok=True)
    prof = {}
    if report_sizes:
        from .profile import profile_report
        # the largest size up to 1M: on small files start-up and imports would dominate the picture
        n = max([s for s in report_sizes if s <= 1_000_000] or [min(report_sizes)])
        d, _ = dataset(cache, n, log, COLUMNAR)
        log(f"analysis: profiling report on {n} events (py-spy)")
        prof = profile_report(d, timeout) | {"events": n}
    return {"profile": prof, "config": {"sizes": sizes, "report_sizes": report_sizes, "timeout_s": timeout, "cache": str(cache),
                       "events_per_pod": 400, "stories": synth.STORIES},
            "stages": results}

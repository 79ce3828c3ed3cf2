"""analyze in bounded memory (sigtrace.analyze.parts): the exports are read in chunks, spilled by
node and by pod, and each node's pods reported a group at a time. The fleet must be the one the
whole-frame path gives (read_exports -> node_frames -> build_reports -> fleet_from_reports), with
the spill forced into many small pieces: tiny batches, tiny groups, few open files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sigtrace.analyze import analyze_files, node_frames, parts, read_exports, template_hashes
from sigtrace.analyze import read as analyze_read
from sigtrace.analyze.fleet import fleet_from_reports
from sigtrace.export import export_recordings
from sigtrace.report import build_reports

DATA = Path(__file__).parent / "data"
# a few recordings of different nodes and causes (the fleet's two nodes, the article's case, a clean drain)
NODES = [DATA / "fleet" / "node-a", DATA / "fleet" / "node-b", DATA / "article", DATA / "clean"]


def whole_frame_fleet(paths: list[str]) -> dict:
    """The fleet as analyze made it when it held the exports as one frame."""
    export = read_exports(paths)
    per_node = [(node, build_reports(events, meta, incomplete, lanes=False).to_dict())
                for node, events, meta, incomplete in node_frames(export)]
    return fleet_from_reports(per_node, export.metas, template_hashes(export.events), export.incomplete).to_dict()


@pytest.fixture(params=["parts", "batches", "one-batch"])
def small_pieces(monkeypatch, request):
    """Batches of 7 rows, CSV blocks of 4 KB, at most 2 spill files open, and each node reported
    - parts: alone, in its parts by pod, groups of 20 rows;
    - batches: with other small nodes in one correlation (report.batch), batches of about 20 rows;
    - one-batch: every node in one batch (the nodes come from two spill files, and two of them share
      a pod: the fleet export's node-3 holds a copy of node-0's article pod).
    Every path of the spill."""
    monkeypatch.setattr(analyze_read, "BATCH_ROWS", 7)
    monkeypatch.setattr(analyze_read, "CSV_WHOLE_BYTES", 0)
    monkeypatch.setattr(analyze_read, "CSV_BLOCK_BYTES", 4096)
    monkeypatch.setattr(parts, "GROUP_ROWS", 100_000 if request.param == "one-batch" else 20)
    monkeypatch.setattr(parts, "BATCH_NODE_ROWS", 0 if request.param == "parts" else 100_000)
    monkeypatch.setattr(parts, "MAX_OPEN", 2)
    return request.param


def recordings(tmp_path: Path) -> list[Path]:
    """NODES copied, each with its own node name (the article and clean recordings share one)."""
    out = []
    for i, src in enumerate(NODES):
        dst = tmp_path / f"rec{i}"
        shutil.copytree(src, dst)
        meta = json.loads((dst / "meta.json").read_text())
        meta["node"] = f"node-{i}"
        (dst / "meta.json").write_text(json.dumps(meta))
        out.append(dst)
    return out


@pytest.mark.parametrize("fmt,jobs", [("parquet", 1), ("csv", 1), ("parquet", 3)])
def test_streamed_fleet_is_the_whole_frames(tmp_path, small_pieces, fmt, jobs):
    """jobs 3: each node's groups of parts correlated in worker processes, as on a multi-core machine."""
    recs = recordings(tmp_path)
    out = tmp_path / f"fleet.{fmt}"
    export_recordings(recs, **{fmt: str(out)})
    got = analyze_files([str(out)], jobs=jobs)
    assert got.to_dict() == whole_frame_fleet([str(out)])
    assert set(got.pods["node"].astype(str)) == {f"node-{i}" for i in range(len(NODES))}
    # the article's verdicts survive the pieces, on the article's node
    article = got.verdicts[got.verdicts["node"].astype(str) == "node-2"]
    assert set(article["id"].astype(str)) == {"prestop-quit-superseded"}


def test_several_exports_are_merged_in_time_order(tmp_path, small_pieces):
    """Two exports of overlapping nodes: a node's rows are their stable sort by ts, as one frame."""
    recs = recordings(tmp_path)
    a, b = tmp_path / "a.parquet", tmp_path / "b.csv"
    export_recordings(recs[:3], parquet=str(a))
    export_recordings(recs[1:], csv=str(b))        # node-1 and node-2 in both
    got = analyze_files([str(a), str(b)]).to_dict()
    assert got == whole_frame_fleet([str(a), str(b)])


def test_dataset_is_streamed_by_node_and_day(tmp_path, small_pieces):
    recs = recordings(tmp_path)
    dataset = tmp_path / "ds"
    export_recordings(recs, parquet=str(dataset) + "/")
    got = analyze_files([str(dataset)], nodes=["node-0", "node-2"])
    assert set(got.pods["node"].astype(str)) == {"node-0", "node-2"}
    assert got.to_dict() == whole_frame_fleet_selected([str(dataset)], ["node-0", "node-2"])


def whole_frame_fleet_selected(paths: list[str], nodes: list[str]) -> dict:
    export = read_exports(paths, nodes=nodes)
    per_node = [(node, build_reports(events, meta, incomplete, lanes=False).to_dict())
                for node, events, meta, incomplete in node_frames(export)]
    return fleet_from_reports(per_node, export.metas, template_hashes(export.events), export.incomplete).to_dict()


def test_spill_files_are_removed(tmp_path, small_pieces, monkeypatch):
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setenv("SIGTRACE_TMPDIR", str(spill))
    out = tmp_path / "fleet.parquet"
    export_recordings(recordings(tmp_path), parquet=str(out))
    analyze_files([str(out)])
    assert list(spill.iterdir()) == []


def test_a_full_disk_is_one_line(tmp_path, small_pieces, tiny_tmpfs, monkeypatch, capsys):
    """ENOSPC while spilling (a real 8 KB tmpfs): exit 73 and one line naming where and what to do."""
    from sigtrace.cli import main
    out = tmp_path / "fleet.parquet"
    export_recordings(recordings(tmp_path), parquet=str(out))
    monkeypatch.setenv("SIGTRACE_TMPDIR", str(tiny_tmpfs))
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 73, err
    assert err.count("\n") == 1 and err.startswith("sigtrace: error: "), err
    assert "No space left on device" in err and "SIGTRACE_TMPDIR" in err
    assert list(tiny_tmpfs.iterdir()) == []          # what it wrote is gone


def test_the_fleet_is_the_golden_one(small_pieces, capsys):
    """A reference that does not share the reader: tests/golden/fleet_export.analyze.json is what
    `analyze --json` printed for tests/data/fleet_export/fleet.csv (four nodes, 110 events) before
    analyze streamed. Read in 4 KB blocks and spilled in tiny pieces, the output is the same."""
    from sigtrace.cli import main
    golden = (Path(__file__).parent / "golden" / "fleet_export.analyze.json").read_text()
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(DATA / "fleet_export" / "fleet.csv"), "--json"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert out == golden


def test_small_nodes_share_a_correlation(tmp_path, monkeypatch):
    """Small nodes are correlated together (a node's report has a fixed cost of pandas calls, most
    of a small node's), and each still gets the reports it gets alone: its own event numbers,
    capabilities, endpoints, ReplicaSets and notes. A node sharing a pod with another (the fleet
    export's node-3 holds a copy of node-0's article pod) is correlated apart from it."""
    from sigtrace.report import batch
    monkeypatch.setattr(parts, "MAX_OPEN", 2)                 # the nodes come from two spill files
    calls = []
    real = batch.build_contexts
    monkeypatch.setattr(batch, "build_contexts", lambda events, *a, **k: calls.append(len(events)) or real(events, *a, **k))
    fleet = DATA / "fleet_export" / "fleet.csv"
    got = analyze_files([str(fleet)], jobs=1)                # in this process, where calls are counted
    assert got.to_dict() == whole_frame_fleet([str(fleet)])
    # node-0 and node-2 together (20 + 32 rows); node-3 (43) apart, a pod of it is node-0's; node-1 (15)
    # apart, its recording has other capabilities (no exec seen, none listed in its meta)
    assert sorted(calls) == [15, 43, 52]

    out = tmp_path / "fleet.parquet"
    export_recordings(recordings(tmp_path), parquet=str(out))
    calls.clear()
    got = analyze_files([str(out)], jobs=1)
    assert got.to_dict() == whole_frame_fleet([str(out)])
    assert len(calls) < len(NODES)


def test_a_batched_node_out_of_time_order_reads_its_rows_in_time_order(tmp_path, monkeypatch):
    """A node whose export has a row out of time order (here the last row, earlier than the rest):
    the recorder's cut names each process of the killed init's container by the comm it had first
    in time, batched as alone. A process seen first as php-early stays php-early."""
    import csv
    import io
    rec = tmp_path / "rec"
    shutil.copytree(DATA / "lab" / "strace_killed_with_pid1", rec)
    out = tmp_path / "fleet.csv"
    export_recordings([rec], csv=str(out))
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    late = next(r for r in rows if r["kind"] == "sock_close" and r["pid"] == "1")
    early = dict(late, pid="7", tid="7", nspid="7", comm="php-early", ts=repr(float(rows[0]["ts"]) - 1))
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows + [early])

    def cut_evidence(batch_rows: int) -> list[str]:
        monkeypatch.setattr(parts, "BATCH_NODE_ROWS", batch_rows)
        seen = []                                 # the node's reports, before the fleet flattens them
        import sigtrace.analyze as analyze
        monkeypatch.setattr(analyze, "_lazy_dict", lambda rs: seen.append(rs.to_dict()) or dict(rs.header(), pods=iter(())))
        analyze_files([str(out)], jobs=1)
        return [e["what"] for rs in seen for p in rs["pods"] for v in p["verdicts"] for e in v.get("evidence", [])
                if "without calling exit" in e["what"]]

    alone, batched = cut_evidence(0), cut_evidence(100_000)
    assert alone and batched == alone
    assert any("php-early[7]" in w for w in batched)

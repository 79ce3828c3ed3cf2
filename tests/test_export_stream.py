"""export in chunks (sigtrace.export.stream) writes what one frame of the whole export writes: the
same CSV bytes, the same Parquet rows, types and metadata, the same dataset parts, whatever the
chunk size, for runs of several nodes interleaved in time, two runs of a node with equal ts, a run
whose file is out of ts order, and a run only the tolerant reader reads."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from sigtrace.events.reader import read_recording
from sigtrace.events.schema import SCHEMA_VERSION
from sigtrace.events.segments import run_dirs_under
from sigtrace.export import COLUMNS, export_recordings
from sigtrace.export import cells
from sigtrace.export.dataset import write_dataset
from sigtrace.export.frame import export_frame
from sigtrace.export.write import arrow_table

pa = pytest.importorskip("pyarrow")
pacsv = pytest.importorskip("pyarrow.csv")
pq = pytest.importorskip("pyarrow.parquet")

DATA = Path(__file__).parent / "data" / "fleet"


def rewritten(src: Path, dst: Path, node: str, order=None, seconds: float = 0.0, garbage: bool = False) -> Path:
    """A copy of a recording as another node: lines reordered (order: a function of the line list),
    moved by seconds, with a garbage line (only the tolerant reader reads it)."""
    shutil.copytree(src, dst)
    events = [json.loads(line) for line in (dst / "events.jsonl").read_text().splitlines()]
    for e in events:
        e["ts"] += seconds
    lines = [json.dumps(e) for e in (order(events) if order else events)]
    if garbage:
        lines.insert(3, "{not json")
    (dst / "events.jsonl").write_text("\n".join(lines) + "\n")
    meta = json.loads((dst / "meta.json").read_text())
    meta.update(node=node, start=meta["start"] + seconds)
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


def shuffled(events: list) -> list:
    return events[1::2][::-1] + events[::2]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("fleet")
    root = tmp / "agent-root"              # two runs of one node, the second at the very same ts
    rewritten(DATA / "node-a", root / "run-1", "twice")
    rewritten(DATA / "node-a", root / "run-2", "twice")
    return [DATA / "node-a", DATA / "node-b", root,
            rewritten(DATA / "node-b", tmp / "shuffled", "shuffled", order=shuffled, seconds=0.5),
            rewritten(DATA / "node-a", tmp / "dirty", "dirty", seconds=0.25, garbage=True)]


def whole(dirs: list[Path]) -> tuple[pd.DataFrame, dict]:
    """The export as one frame, as export wrote it before it streamed."""
    df, metas, notes = export_frame([read_recording(r) for d in dirs for r in (run_dirs_under(d) or [d])])
    return df, {"schema_version": SCHEMA_VERSION, "columns": list(COLUMNS), "nodes": metas, "notes": notes}


def test_the_fixture_takes_every_path(fleet):
    assert not (DATA / "node-a" / "events.jsonl").read_text().startswith("{not")
    assert "skipped 1 unparsable lines" in " ".join(read_recording(fleet[-1]).incomplete)
    ts = [json.loads(line)["ts"] for line in (fleet[3] / "events.jsonl").read_text().splitlines()]
    assert ts != sorted(ts)


@pytest.mark.parametrize("chunk_rows", [1, 3, 8, 1000])
def test_csv_is_byte_identical_to_the_whole_frame(fleet, tmp_path, chunk_rows):
    df, _ = whole(fleet)
    want = tmp_path / "whole.csv"
    pacsv.write_csv(arrow_table(cells.neutralise(df)), str(want), pacsv.WriteOptions(quoting_style="needed"))
    got = tmp_path / "chunked.csv"
    result = export_recordings(fleet, csv=str(got), chunk_rows=chunk_rows)
    assert result.rows == len(df) and len(df) > 70
    assert got.read_bytes() == want.read_bytes()


@pytest.mark.parametrize("chunk_rows", [1, 4, 1000])
def test_parquet_has_the_whole_frames_rows_types_and_metadata(fleet, tmp_path, chunk_rows):
    df, meta = whole(fleet)
    got = tmp_path / "chunked.parquet"
    export_recordings(fleet, parquet=str(got), chunk_rows=chunk_rows)
    pq.write_table(arrow_table(df), str(tmp_path / "whole.parquet"), compression="zstd")
    want, table = pq.read_table(tmp_path / "whole.parquet"), pq.read_table(got)
    assert table.schema.equals(want.schema, check_metadata=False)
    assert json.loads(table.schema.metadata[b"sigtrace"]) == json.loads(json.dumps(meta))
    assert json.loads(table.schema.metadata[b"pandas"]) == json.loads(want.schema.metadata[b"pandas"])
    # category order is not data (a dictionary's order): values and types are
    pd.testing.assert_frame_equal(table.to_pandas(), want.to_pandas(), check_categorical=False)
    sidecar = json.loads((tmp_path / "chunked.parquet.meta.json").read_text())
    assert sidecar == json.loads(json.dumps(meta, default=str))


def test_dataset_parts_are_the_whole_frames(fleet, tmp_path):
    df, meta = whole(fleet)
    write_dataset(df, meta, tmp_path / "whole")
    export_recordings(fleet, parquet=f"{tmp_path / 'chunked'}/", chunk_rows=2)
    names = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*.parquet"))
    assert names == sorted(p.relative_to(tmp_path / "chunked") for p in (tmp_path / "chunked").rglob("*.parquet"))
    assert len(names) == 5
    for name in names:
        a, b = pq.read_table(tmp_path / "whole" / name), pq.read_table(tmp_path / "chunked" / name)
        assert a.schema.equals(b.schema, check_metadata=False)
        pd.testing.assert_frame_equal(a.to_pandas(), b.to_pandas(), check_categorical=False)


def test_progress_and_notes_are_kept(fleet, tmp_path):
    told = []
    result = export_recordings(fleet, csv=str(tmp_path / "x.csv"), chunk_rows=2,
                               progress=lambda what, done, total: told.append((what, done, total)))
    runs = len(fleet) + 1
    assert told[-2:] == [("recordings read", runs, runs), ("events read", result.rows, None)]
    _, meta = whole(fleet)
    assert result.notes == meta["notes"] + [w for m in meta["nodes"].values() for w in m["incomplete"]]
    assert any("unparsable" in n for n in result.notes)


def dataset_rows(root: Path) -> dict[str, pd.DataFrame]:
    return {str(p.relative_to(root)): pq.read_table(p).to_pandas() for p in sorted(root.rglob("*.parquet"))}


@pytest.mark.parametrize("chunk_rows", [1, 3])
def test_dataset_parts_replaced_in_chunks_are_the_whole_ones(fleet, tmp_path, chunk_rows):
    """A run's part replaced chunk by chunk (its old rows kept, rows of other parts of the node and day
    left out, a row the new export holds twice) holds the rows, in the order, one chunk gives."""
    rec = rewritten(DATA / "node-a", tmp_path / "rec", "grows")
    other = rewritten(DATA / "node-a", tmp_path / "other", "grows", seconds=3600)
    lines = (rec / "events.jsonl").read_text().splitlines()
    roots = {n: tmp_path / f"ds-{n}" for n in (chunk_rows, 10 ** 6)}
    steps = [lambda: None,
             # the recorder pruned its oldest events and went on; one event is there twice
             lambda: (rec / "events.jsonl").write_text("\n".join(lines[6:] + lines[9:10] + [
                 json.dumps(dict(json.loads(line), ts=json.loads(line)["ts"] + 30)) for line in lines]) + "\n"),
             lambda: None]
    for step in steps:
        step()
        for n, root in roots.items():
            export_recordings([other, rec] if step is steps[1] else [rec], parquet=f"{root}/", chunk_rows=n)
        small, big = (dataset_rows(root) for root in roots.values())
        assert list(small) == list(big)
        for name in small:
            pd.testing.assert_frame_equal(small[name], big[name], check_categorical=False)
    # the other run's 20; the run's first 20 (6 pruned since, kept), the one twice, 20 more
    assert sorted(map(len, small.values())) == [20, 41]


def test_the_merge_of_many_runs_holds_about_one_chunk():
    """Each of n runs is read in a share of a chunk: the rows read and not yet given are about one
    chunk in all, not one chunk per run."""
    from sigtrace.export.stream import Run, merged
    runs, chunk_rows, n, events = [], 1 << 16, 8, 40_000
    state = {"read": 0, "max": 0}

    def run(i: int) -> Run:
        def chunks(rows: int = chunk_rows):
            for start in range(0, events, rows):
                ts = (pd.RangeIndex(start, min(start + rows, events)) * n + i).to_numpy(dtype=float)
                state["read"] += len(ts)
                yield pd.DataFrame({"ts": ts})
        return Run(rec=None, events=events, first_ts=float(i), lifecycle=pd.DataFrame(), chunks=chunks)

    runs = [(run(i), f"node-{i}") for i in range(n)]
    given = 0
    for df in merged(runs, chunk_rows):
        assert (df["ts"].diff().dropna() > 0).all()
        state["max"] = max(state["max"], state["read"] - given)
        given += len(df)
    assert given == n * events
    assert state["max"] <= chunk_rows + n * 4096, state["max"]


def test_a_runs_last_event_does_not_keep_its_chunk_alive():
    import numpy as np
    from sigtrace.export.stream import _Gather
    df = read_recording(DATA / "node-a").events
    gather = _Gather()
    gather.add(df)
    last = gather.last[2]
    assert len(last) == 1 and last["ts"].iloc[0] == df["ts"].max()
    assert not np.shares_memory(last["ts"].to_numpy(), df["ts"].to_numpy())


def test_a_small_export_is_read_whole_and_a_big_one_streams(fleet, tmp_path, monkeypatch):
    """Streaming costs fixed work per run and chunk: below whole_bytes the export is one frame."""
    import sigtrace.export as export
    streamed = []
    real = export.read_runs
    monkeypatch.setattr(export, "read_runs", lambda *a, **k: streamed.append(1) or real(*a, **k))
    df, _ = whole(fleet)
    small = export_recordings(fleet, csv=str(tmp_path / "small.csv"))
    assert small.rows == len(df) and not streamed
    big = export_recordings(fleet, csv=str(tmp_path / "big.csv"), whole_bytes=0)
    assert streamed and (tmp_path / "big.csv").read_bytes() == (tmp_path / "small.csv").read_bytes()

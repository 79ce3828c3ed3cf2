"""export --parquet DIR/: a Hive-partitioned dataset that DuckDB reads as is, appended to without
overwriting, read back by analyze (lazily, by node and day), and safe from hostile node names."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sigtrace.analyze import analyze_files, read_exports
from sigtrace.export import export_recordings

duckdb = pytest.importorskip("duckdb")

DATA = Path(__file__).parent / "data" / "fleet"
DAY = 86400.0

# The README's fleet question, as one DuckDB query over the dataset: refused connection attempts
# (a reset answering a SYN on a port nothing listens on, or a connect() refused) per node and day.
REFUSED_PER_NODE_AND_DAY = """
SELECT node, date,
       count(*) FILTER (WHERE kind = 'tcp_reset_sent' AND sock IS NULL AND sport IS NOT NULL
                        OR kind = 'connect_error' AND reason = 'ECONNREFUSED') AS refused
FROM read_parquet('{root}/**/*.parquet', hive_partitioning = true,
                  hive_types = {{'node': VARCHAR, 'date': DATE}})
GROUP BY node, date ORDER BY node, date
"""


def shifted(src: Path, dst: Path, days: int, node: str | None = None, seconds: float = 0.0) -> Path:
    """A copy of a recording moved by whole days (another day of the same node), optionally renamed;
    seconds: moved by that much more (a later run of the same node)."""
    shutil.copytree(src, dst)
    lines = []
    for line in (dst / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        e["ts"] += days * DAY + seconds
        lines.append(json.dumps(e))
    (dst / "events.jsonl").write_text("\n".join(lines) + "\n")
    meta = json.loads((dst / "meta.json").read_text())
    meta.update(start=meta["start"] + days * DAY + seconds, end=meta["end"] + days * DAY + seconds)
    if node is not None:
        meta["node"] = node
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


def parts(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))


@pytest.fixture
def dataset(tmp_path) -> Path:
    """node-a on its day, node-b on the next day, appended in two exports."""
    root = tmp_path / "fleet"
    export_recordings([DATA / "node-a"], parquet=f"{root}/")
    export_recordings([shifted(DATA / "node-b", tmp_path / "b", 1)], parquet=str(root))   # existing dir
    return root


def test_layout_is_hive_node_then_utc_date(dataset):
    got = [p.rsplit("/", 1)[0] for p in parts(dataset)]
    assert got == ["node=node-a/date=2025-11-29", "node=node-b/date=2025-11-30"]
    assert all(p.rsplit("/", 1)[1].startswith("part-") for p in parts(dataset))
    # the partition columns live in the path only (Spark refuses a column that is in both)
    import pyarrow.parquet as pq
    names = pq.read_schema(dataset / parts(dataset)[0]).names
    assert "node" not in names and "date" not in names


def test_appending_never_overwrites_and_skips_identical_parts(dataset, tmp_path):
    before = {p: (dataset / p).read_bytes() for p in parts(dataset)}
    again = export_recordings([DATA / "node-a"], parquet=str(dataset))
    assert again.written == [] and len(again.skipped) == 1
    # another run of node-a on the same day (another start): a new part beside the first
    other = shifted(DATA / "node-a", tmp_path / "a2", 0, seconds=3600)
    more = export_recordings([other], parquet=str(dataset))
    assert len(more.written) == 1
    assert {p: (dataset / p).read_bytes() for p in before} == before
    assert len(parts(dataset)) == 3


def test_analyze_reads_the_dataset_as_it_reads_the_files(dataset, tmp_path):
    csv = tmp_path / "fleet.csv"
    export_recordings([DATA / "node-a", tmp_path / "b"], csv=str(csv))     # the fixture's node-b
    assert analyze_files([str(dataset)]).to_dict() == analyze_files([str(csv)]).to_dict()


def test_analyze_selects_nodes_and_days_before_reading(dataset):
    from datetime import date
    only_b = read_exports([str(dataset)], nodes=["node-b"])
    assert set(only_b.events["node"].astype(str)) == {"node-b"} and set(only_b.metas) == {"node-b"}
    day = read_exports([str(dataset)], since=date(2025, 11, 29), until=date(2025, 11, 29))
    assert set(day.events["node"].astype(str)) == {"node-a"}


def test_duckdb_answers_the_fleet_question_as_analyze_does(dataset):
    sql = duckdb.sql(REFUSED_PER_NODE_AND_DAY.format(root=dataset)).fetchall()
    from datetime import date
    want = []
    for node, day in [("node-a", date(2025, 11, 29)), ("node-b", date(2025, 11, 30))]:
        pods = analyze_files([str(dataset)], nodes=[node], since=day, until=day).pods
        want.append((node, day, int(pods["refused"].sum())))
    assert sql == want
    assert sum(n for *_, n in sql) > 0          # a question with an answer, not 0 == 0


def test_readme_shows_the_query_the_test_runs():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    query = REFUSED_PER_NODE_AND_DAY.format(root="fleet").strip()
    assert query in readme


@pytest.mark.parametrize("node", ["../x", "a/b", "..", "x\x01y\nz", "/etc", "%2e%2e", "__HIVE_DEFAULT_PARTITION__x"])
def test_hostile_node_names_stay_inside_the_dataset(tmp_path, node):
    rec = shifted(DATA / "node-a", tmp_path / "rec", 0, node=node)
    root = tmp_path / "deep" / "fleet"
    export_recordings([rec], parquet=f"{root}/")
    made = [p for p in tmp_path.rglob("*") if p.is_file() or p.is_dir()]
    inside = {root, *root.rglob("*")}
    assert all(p in inside or p in {tmp_path / "deep"} or rec in (p, *p.parents) for p in made)
    (part,) = parts(root)
    assert part.count("/") == 2 and part.startswith("node=")
    back = read_exports([str(root)])
    assert set(back.events["node"].astype(str)) == {node} and set(back.metas) == {node}
    sql = duckdb.sql(f"SELECT DISTINCT node FROM read_parquet('{root}/**/*.parquet', hive_partitioning = true, "
                     "hive_types = {'node': VARCHAR, 'date': DATE})").fetchall()
    assert sql == [(node,)]


def test_a_planted_link_in_the_dataset_is_refused(tmp_path):
    root = tmp_path / "fleet"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "node=node-a").symlink_to(elsewhere)
    from sigtrace.errors import OutputError
    with pytest.raises(OutputError, match="symbolic link"):
        export_recordings([DATA / "node-a"], parquet=str(root))
    assert not any(elsewhere.iterdir())


# ---- a run exported again: every event counted once ------------------------------------------------
def append(rec: Path, seconds: float, lost: int | None = None) -> int:
    """The recorder going on: the recording's events again, `seconds` later, appended to its file
    (and its lost-event count raised to lost). Returns how many events the recording now holds."""
    lines = (rec / "events.jsonl").read_text().splitlines()
    more = []
    for line in lines[:10]:
        e = json.loads(line)
        e["ts"] += seconds
        more.append(json.dumps(e))
    with open(rec / "events.jsonl", "a") as fh:
        fh.write("\n".join(more) + "\n")
    if lost is not None:
        meta = json.loads((rec / "meta.json").read_text())
        meta["lost_events"] = lost
        (rec / "meta.json").write_text(json.dumps(meta))
    return len(lines) + len(more)


def counted(root: Path) -> int:
    return duckdb.sql(f"SELECT count(*) FROM read_parquet('{root}/**/*.parquet', hive_partitioning = true)").fetchall()[0][0]


def same_as_the_recording(root: Path, rec: Path, tmp_path: Path) -> None:
    """analyze and DuckDB read the dataset as they read one export of the recording as it is now."""
    csv = tmp_path / f"now-{len(list(tmp_path.glob('now-*')))}.csv"
    export_recordings([rec], csv=str(csv))
    assert analyze_files([str(root)]).to_dict() == analyze_files([str(csv)]).to_dict()
    assert counted(root) == len(read_exports([str(csv)]).events) == len(read_exports([str(root)]).events)


def test_a_growing_recording_exported_twice_is_counted_once(tmp_path):
    rec = shifted(DATA / "node-a", tmp_path / "rec", 0)
    root = tmp_path / "fleet"
    export_recordings([rec], parquet=f"{root}/")
    first = parts(root)
    total = append(rec, 20.0, lost=7)
    again = export_recordings([rec], parquet=str(root))
    assert parts(root) == first and len(again.written) == 1          # replaced, not added beside
    assert counted(root) == total
    same_as_the_recording(root, rec, tmp_path)
    assert read_exports([str(root)]).metas["node-a"]["lost_events"] == 7      # the run's latest, not 0 + 7
    # the README's query answers as it does over one export of the recording as it is now
    one = tmp_path / "one"
    export_recordings([rec], parquet=f"{one}/")
    assert duckdb.sql(REFUSED_PER_NODE_AND_DAY.format(root=root)).fetchall() == \
        duckdb.sql(REFUSED_PER_NODE_AND_DAY.format(root=one)).fetchall()
    assert export_recordings([rec], parquet=str(root)).written == []        # nothing new: left as is


def test_a_run_across_midnight_exported_again_is_counted_once(tmp_path):
    rec = shifted(DATA / "node-a", tmp_path / "rec", 0)
    root = tmp_path / "fleet"
    midnight = 1764460800.0                   # 2025-11-30T00:00Z, the night after the recording's day
    append(rec, midnight - 1764400100.0)      # the run goes on until just before midnight
    export_recordings([rec], parquet=f"{root}/")
    assert [p.split("/")[1] for p in parts(root)] == ["date=2025-11-29"]
    append(rec, midnight - 1764400050.0)      # more of the first day after that export ...
    total = append(rec, midnight - 1764399990.0 + 60)     # ... and the next day
    export_recordings([rec], parquet=str(root))
    assert [p.split("/")[1] for p in parts(root)] == ["date=2025-11-29", "date=2025-11-30"]
    assert counted(root) == total
    same_as_the_recording(root, rec, tmp_path)


def test_two_runs_of_a_node_on_one_day_are_both_kept(tmp_path):
    root = tmp_path / "fleet"
    first = shifted(DATA / "node-a", tmp_path / "run1", 0)
    second = shifted(DATA / "node-a", tmp_path / "run2", 0, seconds=3600)
    export_recordings([first], parquet=f"{root}/")
    export_recordings([second], parquet=str(root))
    export_recordings([first], parquet=str(root))              # again: changes nothing
    assert len(parts(root)) == 2
    assert counted(root) == 40
    both = tmp_path / "both.csv"
    export_recordings([first, second], csv=str(both))
    assert analyze_files([str(root)]).to_dict() == analyze_files([str(both)]).to_dict()


def test_events_pruned_from_the_recording_stay_in_the_dataset(tmp_path):
    rec = shifted(DATA / "node-a", tmp_path / "rec", 0)
    root = tmp_path / "fleet"
    export_recordings([rec], parquet=f"{root}/")
    lines = (rec / "events.jsonl").read_text().splitlines()
    total = append(rec, 20.0)
    # the recorder's disk budget removed the oldest events since: the dataset keeps them
    (rec / "events.jsonl").write_text("\n".join((rec / "events.jsonl").read_text().splitlines()[5:]) + "\n")
    export_recordings([rec], parquet=str(root))
    assert counted(root) == total
    assert len(lines) == 20


def test_an_older_datasets_digest_named_part_is_read_and_not_counted_again(tmp_path):
    rec = shifted(DATA / "node-a", tmp_path / "rec", 0)
    root = tmp_path / "fleet"
    append(rec, 0.5, lost=2)
    export_recordings([rec], parquet=f"{root}/")
    (part,) = parts(root)
    legacy = (root / part).with_name("part-0123456789abcdef0123456789abcdef.parquet")
    (root / part).rename(legacy)             # as sigtrace wrote it before parts were named by run
    assert counted(root) == 30 and len(read_exports([str(root)]).events) == 30
    total = append(rec, 20.0, lost=3)
    export_recordings([rec], parquet=str(root))
    assert len(parts(root)) == 2 and legacy.exists()        # the old part is left as it is
    assert counted(root) == total
    same_as_the_recording(root, rec, tmp_path)
    assert read_exports([str(root)]).metas["node-a"]["lost_events"] == 3      # the run once: not 2 + 3


def test_a_planted_link_as_the_runs_part_is_not_followed(tmp_path):
    rec = shifted(DATA / "node-a", tmp_path / "rec", 0)
    root = tmp_path / "fleet"
    export_recordings([rec], parquet=f"{root}/")
    (part,) = parts(root)
    target = tmp_path / "elsewhere.parquet"
    (root / part).rename(target)
    (root / part).symlink_to(target)
    before = target.read_bytes()
    append(rec, 20.0)
    from sigtrace.errors import OutputError
    with pytest.raises(OutputError, match="symbolic links|not a regular file"):
        export_recordings([rec], parquet=str(root))
    assert target.read_bytes() == before and (root / part).is_symlink()
    assert not [p for p in (root / part).parent.iterdir() if p.name.startswith(".")]      # no temp left


def test_runs_exported_together_then_one_again_count_lost_events_once(tmp_path):
    """An agent root's runs exported together get a part each (named by the run, carrying that run's
    meta only): exporting the second run again later replaces its part, so analyze adds each run once."""
    root, ds = tmp_path / "agent", tmp_path / "fleet"
    run1 = shifted(DATA / "node-a", root / "run1", 0)
    run2 = shifted(DATA / "node-a", root / "run2", 0, seconds=3600)
    for run, lost in ((run1, 5), (run2, 7)):
        meta = json.loads((run / "meta.json").read_text())
        (run / "meta.json").write_text(json.dumps(dict(meta, lost_events=lost)))
    export_recordings([root], parquet=f"{ds}/")
    assert len(parts(ds)) == 2                          # one part per recorder run and day
    append(run2, 20.0)
    export_recordings([run2], parquet=str(ds))
    assert len(parts(ds)) == 2 and counted(ds) == 50
    meta = read_exports([str(ds)]).metas["node-a"]
    assert meta["lost_events"] == 12
    assert sum("7 events" in n or "lost 7" in n for n in meta["incomplete"]) == 1, meta["incomplete"]

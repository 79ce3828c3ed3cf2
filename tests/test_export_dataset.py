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


def shifted(src: Path, dst: Path, days: int, node: str | None = None) -> Path:
    """A copy of a recording moved by whole days (another day of the same node), optionally renamed."""
    shutil.copytree(src, dst)
    lines = []
    for line in (dst / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        e["ts"] += days * DAY
        lines.append(json.dumps(e))
    (dst / "events.jsonl").write_text("\n".join(lines) + "\n")
    meta = json.loads((dst / "meta.json").read_text())
    meta.update(start=meta["start"] + days * DAY, end=meta["end"] + days * DAY)
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
    # another recording of node-a on the same day: a new part beside the first
    other = shifted(DATA / "node-a", tmp_path / "a2", 0)
    (other / "events.jsonl").write_text((other / "events.jsonl").read_text().splitlines()[0] + "\n")
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

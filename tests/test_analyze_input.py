"""sigtrace analyze on bad input: one line on stderr, exit 2, no traceback; unknown columns ignored."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import no_waiting
from sigtrace.analyze import read_exports
from sigtrace.cli import main
from sigtrace.export import export_recordings

DATA = Path(__file__).parent / "data" / "fleet"


@pytest.fixture(scope="module")
def good_csv(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exp") / "fleet.csv"
    export_recordings([DATA / "node-a", DATA / "node-b"], csv=str(out))
    return out


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_line_exit_2(capsys, path: Path | str, expect: str) -> None:
    rc, out, err = run_cli(capsys, "analyze", str(path))
    assert rc == 2, err
    assert "Traceback" not in err and out == ""
    assert err.count("\n") == 1 and err.startswith("sigtrace: error: "), err
    assert expect in err, err


def rewrite(src: Path, dst: Path, fn) -> Path:
    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    fn(df).to_csv(dst, index=False)
    return dst


def test_missing_file(capsys, tmp_path):
    assert_one_line_exit_2(capsys, tmp_path / "nope.csv", "no such file")


def test_directory_instead_of_export(capsys):
    assert_one_line_exit_2(capsys, DATA / "node-a", "is a directory")


def test_binary_file(capsys, tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes(bytes(range(256)) * 10)
    assert_one_line_exit_2(capsys, p, "not a CSV file")


def test_events_jsonl_instead_of_export(capsys):
    assert_one_line_exit_2(capsys, DATA / "node-a" / "events.jsonl", "looks like JSON")


def test_csv_that_is_not_an_export(capsys, tmp_path):
    p = tmp_path / "other.csv"
    p.write_text("name,age\nbob,3\n")
    assert_one_line_exit_2(capsys, p, "not a sigtrace CSV export")


def test_empty_and_header_only(capsys, tmp_path, good_csv):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_one_line_exit_2(capsys, empty, "empty file")
    header = tmp_path / "header.csv"
    header.write_text(good_csv.read_text().splitlines()[0] + "\n")
    assert_one_line_exit_2(capsys, header, "has no events")


def test_missing_required_columns(capsys, tmp_path, good_csv):
    p = rewrite(good_csv, tmp_path / "cut.csv", lambda df: df.drop(columns=["pid", "node"]))
    assert_one_line_exit_2(capsys, p, "missing required column(s) node, pid")


def test_newer_schema(capsys, tmp_path, good_csv):
    p = rewrite(good_csv, tmp_path / "v9.csv", lambda df: df.assign(schema_version="9"))
    assert_one_line_exit_2(capsys, p, "newer than this sigtrace")


def test_mixed_schemas_across_files(capsys, tmp_path, good_csv):
    old = rewrite(good_csv, tmp_path / "v0.csv", lambda df: df.assign(schema_version="0"))
    rc, _, err = run_cli(capsys, "analyze", str(good_csv), str(old))
    assert rc == 2 and err.count("\n") == 1
    # version 0 never existed: refused on its own before the mix is looked at
    assert "schema_version 0 is not valid" in err
    two = rewrite(good_csv, tmp_path / "mixed.csv",
                  lambda df: df.assign(schema_version=["1", "0"] * (len(df) // 2) + ["1"] * (len(df) % 2)))
    assert_one_line_exit_2(capsys, two, "mixed schemas in one file")


def test_mixed_versions_across_files_message(tmp_path, good_csv, monkeypatch):
    # with a hypothetical schema 2 reader, a v1 and a v2 file are refused together
    import sigtrace.analyze.read as read
    monkeypatch.setattr(read, "SCHEMA_VERSION", 2)
    v2 = rewrite(good_csv, tmp_path / "v2.csv", lambda df: df.assign(schema_version="2"))
    with pytest.raises(read.DataError, match=r"mixed schemas: .*fleet.csv has schema_version 1, .*v2.csv has 2"):
        read_exports([str(good_csv), str(v2)])


def test_bad_values(capsys, tmp_path, good_csv):
    p = rewrite(good_csv, tmp_path / "bad.csv", lambda df: df.assign(pid="not-a-pid"))
    assert_one_line_exit_2(capsys, p, "not a readable sigtrace CSV export")


def test_unknown_columns_are_ignored_and_noted(tmp_path, good_csv):
    p = rewrite(good_csv, tmp_path / "extra.csv", lambda df: df.assign(cluster="prod-eu", **{"weird col": "x"}))
    shutil.copy(f"{good_csv}.meta.json", f"{p}.meta.json")
    export = read_exports([str(p)])
    assert "cluster" not in export.events.columns
    assert len(export.events) == 35
    assert any("ignored 2 unknown column(s): cluster, weird col" in n for n in export.incomplete)


def test_missing_optional_columns_become_nulls(tmp_path, good_csv):
    p = rewrite(good_csv, tmp_path / "old.csv", lambda df: df.drop(columns=["reason", "sock"]))
    export = read_exports([str(p)])
    assert export.events["reason"].isna().all() and str(export.events["reason"].dtype) == "string"
    assert any("no column(s) sock, reason" in n for n in export.incomplete)
    # no sidecar: said so, per node
    assert any(n.startswith("no meta (") for n in export.metas["node-a"]["incomplete"])


def test_sidecar_meta_is_used(good_csv):
    meta = json.loads(Path(f"{good_csv}.meta.json").read_text())
    assert meta["schema_version"] == 1 and set(meta["nodes"]) == {"node-a", "node-b"}
    assert read_exports([str(good_csv)]).incomplete == []


def test_rows_the_recording_reader_would_skip_are_skipped_and_said(tmp_path, good_csv):
    def spoil(df):
        df.loc[0, "kind"] = "from_the_future"
        df.loc[1, "ts"] = ""
        df.loc[2, "node"] = ""
        return df
    p = rewrite(good_csv, tmp_path / "odd.csv", spoil)
    export = read_exports([str(p)])
    assert len(export.events) == 33
    assert "skipped 1 rows of unknown kind (from_the_future)" in export.incomplete
    assert "skipped 1 rows without ts/kind" in export.incomplete
    assert (export.events["node"] == "unknown").sum() == 1


# ---- exports from elsewhere: pipes, planted files, crafted metas -------------------------------------
def test_a_fifo_or_a_pipe_given_as_the_export_is_refused_in_one_line(capsys, tmp_path, good_csv):
    import os
    import subprocess
    import sys
    fifo = tmp_path / "exports.csv"
    os.mkfifo(fifo)
    with no_waiting():
        assert_one_line_exit_2(capsys, fifo, "not a regular file")
    p = subprocess.run(["bash", "-c", f'"{sys.executable}" -m sigtrace analyze <(cat "{good_csv}")'],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert "not a regular file" in p.stderr


@pytest.mark.parametrize("plant", ["fifo", "link"])
def test_a_sidecar_that_is_a_fifo_is_unreadable_not_waited_on_and_a_link_is_followed(tmp_path, good_csv, plant):
    import os
    csv_path = tmp_path / "fleet.csv"
    shutil.copy(good_csv, csv_path)
    side = Path(f"{csv_path}.meta.json")
    if plant == "fifo":
        os.mkfifo(side)
    else:
        (tmp_path / "real.json").write_text(Path(f"{good_csv}.meta.json").read_text())
        side.symlink_to(tmp_path / "real.json")
    with no_waiting():
        export = read_exports([str(csv_path)])
    if plant == "fifo":
        assert any("meta.json: unreadable" in n for n in export.incomplete), export.incomplete
        assert export.metas["node-a"].get("backend") is None
    else:                         # a link to a regular file is read, as meta.json's is (git-annex, DVC)
        assert not any("unreadable" in n for n in export.incomplete) and export.metas["node-a"].get("backend")


def test_a_known_column_twice_is_refused_in_one_line(capsys, tmp_path, good_csv):
    text = good_csv.read_text().splitlines()
    doubled = [line + "," + line.split(",", 1)[0] for line in text]       # ts again, at the end
    p = tmp_path / "twice.csv"
    p.write_text("\n".join(doubled) + "\n")
    assert_one_line_exit_2(capsys, p, "column(s) ts more than once")


def test_cells_that_restore_to_one_value_are_read_not_a_traceback(tmp_path, good_csv):
    def two_forms(df):
        df.loc[df.index[:5], "node"] = "=x"
        df.loc[df.index[5:10], "node"] = "'=x"
        return df
    p = rewrite(good_csv, tmp_path / "forms.csv", two_forms)
    export = read_exports([str(p)])
    assert (export.events["node"] == "=x").sum() == 10


@pytest.mark.parametrize("notes", [5, True, "abc", [1, "kept", None]])
def test_a_sidecars_node_notes_of_the_wrong_shape_are_kept_as_texts_only(tmp_path, good_csv, notes):
    csv_path = tmp_path / "fleet.csv"
    shutil.copy(good_csv, csv_path)
    meta = json.loads(Path(f"{good_csv}.meta.json").read_text())
    meta["nodes"]["node-a"]["incomplete"] = notes
    Path(f"{csv_path}.meta.json").write_text(json.dumps(meta))
    from sigtrace.analyze import analyze_files
    fleet = analyze_files([str(csv_path)], jobs=1)
    got = fleet.nodes["node-a"]["incomplete"]
    assert all(isinstance(n, str) and len(n) > 3 for n in got), got
    assert ("kept" in got) == isinstance(notes, list)


def test_nodes_without_meta_each_carry_their_own_note_only(tmp_path, good_csv):
    """Notes of one node are that node's: a fleet of nodes without a sidecar grows linearly."""
    def many_nodes(df):
        df["node"] = [f"n{i % 40}" for i in range(len(df))]
        return df
    p = rewrite(good_csv, tmp_path / "many.csv", many_nodes)
    from sigtrace.analyze import analyze_files
    fleet = analyze_files([str(p)], jobs=1)
    for node, info in fleet.nodes.items():
        mine = [n for n in info["incomplete"] if "no meta" in n]
        assert mine == [f"no meta ({p}.meta.json missing): backend and lost events unknown"], info


def test_a_dataset_part_speaks_only_for_its_own_node_and_links_are_not_followed(tmp_path):
    import pyarrow.parquet as pq
    root = tmp_path / "fleet"
    export_recordings([DATA / "node-a"], parquet=f"{root}/")
    part = next(root.glob("node=node-a/date=*/*.parquet"))
    # a part planted under node=evil whose meta claims node-a: lost events, another backend
    table = pq.read_table(part)
    meta = json.loads(table.schema.metadata[b"sigtrace"])
    claimed = {"node-a": dict(meta["nodes"]["node-a"], backend="strace", lost_events=123456,
                              exported_at="9999-12-31T00:00:00Z")}
    evil = root / "node=evil" / part.parent.name
    evil.mkdir(parents=True)
    pq.write_table(table.replace_schema_metadata({b"sigtrace": json.dumps(dict(meta, nodes=claimed)).encode()}),
                   evil / part.name)
    # and a part reached through a link to a directory outside the dataset
    outside = tmp_path / "outside"
    shutil.copytree(part.parent, outside)
    (root / "node=victim").mkdir()
    (root / "node=victim" / part.parent.name).symlink_to(outside)
    export = read_exports([f"{root}/"])
    assert export.metas["node-a"].get("backend") != "strace" and not export.metas["node-a"].get("lost_events")
    assert any("speaks for nodes other than its own" in n for n in export.incomplete), export.incomplete
    assert "victim" not in set(export.events["node"].astype(str))
    assert any("through a link skipped" in n for n in export.incomplete), export.incomplete


def test_unused_dictionary_entries_of_a_parquet_file_become_no_categories(tmp_path):
    """A Parquet file from elsewhere whose pod_name dictionary holds 200k entries its rows never use:
    only the used ones become categories (each would cost memory in every chunk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    src = tmp_path / "a.parquet"
    export_recordings([DATA / "node-a"], parquet=str(src))
    t = pq.read_table(src)
    i = t.column_names.index("pod_name")
    big = pa.DictionaryArray.from_arrays(pa.array([0] * t.num_rows, pa.int32()),
                                         pa.array([f"p{n}" for n in range(200_000)]))
    pq.write_table(t.set_column(i, "pod_name", big), tmp_path / "b.parquet")
    shutil.copy(f"{src}.meta.json", tmp_path / "b.parquet.meta.json")
    export = read_exports([str(tmp_path / "b.parquet")])
    assert list(export.events["pod_name"].cat.categories) == ["p0"]

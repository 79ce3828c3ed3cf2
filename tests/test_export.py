"""sigtrace export: every event one row, schema columns in order, exact round-trip, node merge."""
from __future__ import annotations

import json
import math
import string
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sigtrace.analyze import node_frames, read_exports
from sigtrace.events.reader import read_recording
from sigtrace.events.validate import INT_RANGES
from sigtrace.events.schema import DTYPES, FIELD_NAMES, KINDS, new_event
from sigtrace.export import COLUMNS, EXPORT_DTYPES, export_recordings, have_pyarrow, sidecar_path
from sigtrace.export.columns import POD_META_COLUMNS

DATA = Path(__file__).parent / "data" / "fleet"
NODES = [DATA / "node-a", DATA / "node-b"]


def assert_same_events(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal values and dtypes; categories compared as values (their order is not data)."""
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    for col in want.columns:
        g, w = got[col], want[col]
        assert str(g.dtype) == str(w.dtype), col
        if isinstance(w.dtype, pd.CategoricalDtype):
            g, w = g.astype(object), w.astype(object)
        pd.testing.assert_series_equal(g, w, check_dtype=False, check_names=True, obj=col)


def _values(s: pd.Series) -> list:
    return s.astype(object).where(s.notna(), None).tolist()


def assert_recorded_events(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """got is the recording's events as the export has them: every column the same, except that pod
    and container names (categorical) are also on rows the recording left without them (the export's
    fill); pod_lifecycle rows, and every name recorded, are as recorded."""
    meta = list(POD_META_COLUMNS)
    assert_same_events(got.drop(columns=meta), want.drop(columns=meta))
    kept = (want["kind"] == "pod_lifecycle").to_numpy()
    for col in meta:
        assert isinstance(got[col].dtype, pd.CategoricalDtype), col
        recorded = kept | want[col].notna().to_numpy()
        assert _values(got[col][recorded]) == _values(want[col][recorded]), col


def test_columns_are_the_schema_in_order_then_node():
    assert COLUMNS[: len(FIELD_NAMES)] == FIELD_NAMES
    assert COLUMNS[len(FIELD_NAMES):] == ("node", "schema_version")


def test_export_merges_nodes_and_round_trips_every_field(tmp_path):
    out = tmp_path / "fleet.csv"
    result = export_recordings(NODES, csv=str(out))
    recs = {r.meta["node"]: r for r in map(read_recording, NODES)}
    assert result.rows == sum(len(r.events) for r in recs.values()) == 35
    assert result.nodes == ["node-a", "node-b"]

    # a plain pandas user sees the documented columns, UTF-8, ts as epoch seconds
    plain = pd.read_csv(out)
    assert tuple(plain.columns) == COLUMNS
    assert plain["ts"].between(1.7e9, 2e9).all()
    assert plain["ts"].is_monotonic_increasing
    assert plain.groupby("node").size().to_dict() == {"node-a": 20, "node-b": 15}

    # analyze's reader gives every node's events back as read_recording does, names filled in
    export = read_exports([str(out)])
    assert export.metas["node-b"]["lost_events"] == 3 and export.metas["node-a"]["backend"] == "bpf"
    for node, events, meta, _ in node_frames(export):
        assert meta["node"] == node and "sources" not in meta
        assert_recorded_events(events, recs[node].events)


def test_pod_metadata_filled_for_every_event_of_a_named_pod(tmp_path):
    out = tmp_path / "fleet.csv"
    export_recordings(NODES, csv=str(out))
    df = read_exports([str(out)]).events
    web = df[(df["pod_uid"] == "a1b2c3d4-0000-4000-8000-00000000000a") & (df["kind"] != "pod_lifecycle")]
    assert (web["pod_name"] == "web-7c9d8f6b5-x2k4q").all() and (web["namespace"] == "shop").all()
    php = web[web["comm"] == "php-fpm8.2"]
    assert len(php) == 2 and (php["container_name"] == "php-fpm").all()
    # an event outside pods stays without pod metadata; the runtime's signals name the target, not a pod
    assert df.loc[df["comm"] == "sshd", ["pod_uid", "pod_name", "container_name"]].isna().all().all()
    assert df.loc[df["comm"] == "runc", "pod_name"].isna().all()
    # a few names on every row: categorical in memory, dictionary-encoded in Parquet
    assert all(str(df[c].dtype) == EXPORT_DTYPES[c] == "category" for c in POD_META_COLUMNS)


@pytest.mark.skipif(not have_pyarrow(), reason="Parquet needs pyarrow")
def test_a_column_without_values_reads_back_from_parquet(tmp_path):
    # without its pod_lifecycle rows no event of node-b names a pod or a lifecycle event: the
    # reader gives such columns float categories, which Arrow would write as a float column
    d = tmp_path / "rec"
    d.mkdir()
    lines = [e for e in (DATA / "node-b" / "events.jsonl").read_text().splitlines() if "pod_lifecycle" not in e]
    (d / "events.jsonl").write_text("\n".join(lines) + "\n")
    (d / "meta.json").write_text((DATA / "node-b" / "meta.json").read_text())
    export_recordings([d], csv=str(tmp_path / "x.csv"), parquet=str(tmp_path / "x.parquet"))
    a, b = read_exports([str(tmp_path / "x.csv")]), read_exports([str(tmp_path / "x.parquet")])
    assert_same_events(b.events, a.events)
    assert b.events[["event", "pod_name"]].isna().all().all()


@pytest.mark.skipif(not have_pyarrow(), reason="Parquet needs pyarrow")
def test_parquet_equals_csv_and_carries_meta(tmp_path):
    csv, pq = tmp_path / "f.csv", tmp_path / "f.parquet"
    export_recordings(NODES, csv=str(csv), parquet=str(pq))
    a, b = read_exports([str(csv)]), read_exports([str(pq)])
    assert_same_events(b.events, a.events)
    Path(sidecar_path(str(pq))).unlink()   # the Parquet file alone still knows its nodes' meta
    assert read_exports([str(pq)]).metas["node-b"]["lost_events"] == 3


def test_node_name_falls_back_to_directory(tmp_path):
    d = tmp_path / "worker-7"
    d.mkdir()
    (d / "events.jsonl").write_text((DATA / "node-a" / "events.jsonl").read_text())
    result = export_recordings([d], csv=str(tmp_path / "x.csv"))
    assert result.nodes == ["worker-7"]
    assert any("no meta.json" in n for n in result.notes)
    assert any("using the directory name 'worker-7'" in n for n in result.notes)


# ---- property test: odd values survive the CSV round-trip exactly ----------------------
ODD_TEXT = st.one_of(
    st.none(), st.just(""), st.sampled_from(["a,b", 'say "hi"', "line\nbreak", "tab\there", " lead", "NA", "null",
                                           "nan", "#x", "é", "進程", "😀"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=16))
# Huge, not absurd: pid_max is at most 2**22; beyond 2**53 the recording reader itself (a float
# step in events_frame when a column has nulls) cannot keep integers exact.
HUGE = st.one_of(st.none(), st.integers(min_value=-(2**53), max_value=2**53),
                 st.sampled_from([0, 1, 4194304, 2**31 - 1, 2**32, 2**53]))
FLOAT_TS = st.floats(min_value=0, max_value=4e9, allow_nan=False) | st.sampled_from([1764400000.123456789, 0.1])


# Odd but valid: each field's extremes and vocabulary (what is out of range or vocabulary is skipped
# where events enter, sigtrace.events.validate, and tested there and in test_hostile_input.py)
CATEGORY_VALUES = {"sig": ["SIGTERM", "SIGRTMIN+3", "SIG64"], "exit_signal": ["SIGKILL", "SIGSEGV"],
                   "result": ["delivered", "ignored"], "handler": ["default", "handler"],
                   "old_state": ["LISTEN", "CLOSE"], "new_state": ["FIN_WAIT1", "CLOSE_WAIT"]}


@st.composite
def odd_event(draw):
    kind = draw(st.sampled_from(KINDS))
    fields = {}
    for name in FIELD_NAMES[2:]:
        dtype = DTYPES[name]
        if dtype == "Int64":
            low, high = INT_RANGES.get(name, (-(2**53), 2**53))
            fields[name] = draw(st.none() | st.integers(min_value=max(low, -(2**53)), max_value=min(high, 2**53))
                                | st.sampled_from([max(low, 0), high if high <= 2**53 else 2**53]))
        elif dtype == "category":
            fields[name] = draw(st.none() | st.sampled_from(CATEGORY_VALUES.get(name, ["", "x y", "LISTEN"])))
        else:
            fields[name] = draw(ODD_TEXT)
    return new_event(kind, draw(FLOAT_TS), **fields)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(odd_event(), min_size=1, max_size=12), node=st.text(string.ascii_letters, min_size=1, max_size=8))
def test_odd_values_round_trip(tmp_path_factory, events, node):
    d = tmp_path_factory.mktemp("rec")
    with open(d / "events.jsonl", "w", encoding="utf-8") as fh:
        for e in events:
            fh.write(json.dumps({k: v for k, v in e.items() if v is not None}) + "\n")
    (d / "meta.json").write_text(json.dumps({"node": node, "schema_version": 1, "end": 1.0}))
    rec = read_recording(d)
    out = d / "out.csv"
    export_recordings([d], csv=str(out))
    ((got_node, got, _, _),) = list(node_frames(read_exports([str(out)])))
    assert got_node == node
    want = rec.events
    if have_pyarrow():
        assert_recorded_events(got, rec.events)
    else:   # the pandas fallback cannot tell "" from null
        assert len(got) == len(want)
    assert all(math.isfinite(t) for t in got["ts"])


def test_readme_documents_every_column_in_order():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("<!-- section: export -->", 1)[1].split("<!-- section:", 1)[0]
    rows = [line.split("|")[2].strip().strip("`") for line in section.splitlines() if line.startswith("| ") and
            line.split("|")[1].strip().isdigit()]
    assert tuple(rows) == COLUMNS


@pytest.mark.parametrize("args, expect", [
    (["export", str(DATA / "node-a")], "nothing to write"),
    (["export", "/nonexistent/rec", "--csv", "/tmp/x.csv"], "no such recording directory"),
    (["export", str(DATA / "node-a"), "--csv", "/nonexistent/dir/x.csv"], "cannot write /nonexistent/dir/x.csv"),
])
def test_export_bad_input_is_one_line(capsys, args, expect):
    from sigtrace.cli import main
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    assert exc.value.code != 0 and "Traceback" not in err
    assert err.count("\n") == 1 and expect in err, err


def test_export_cli_writes_and_tells(tmp_path, capsys):
    from sigtrace.cli import main
    out = tmp_path / "f.csv"
    with pytest.raises(SystemExit) as exc:
        main(["export", *map(str, NODES), "--csv", str(out)])
    assert exc.value.code == 0
    err = capsys.readouterr().err
    assert f"wrote 35 events from 2 node(s) (node-a, node-b) to {out}" in err
    assert "3 events were lost by the recorder" in err   # node-b's meta.json said so

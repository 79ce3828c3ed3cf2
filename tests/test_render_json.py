"""The JSON report written pod by pod is byte for byte the one dump of the whole dict would give."""
from __future__ import annotations

import io

import orjson
import pytest

from conftest import REPO
from sigtrace.events.reader import read_recording
from sigtrace.render import write_report
from sigtrace.render.json import _OPTIONS, render_json
from sigtrace.report.build import build_reports
from sigtrace.report.model import ReportSet

RECORDINGS = sorted(p.parent for p in (REPO / "tests" / "data").rglob("meta.json"))


def whole(rs: ReportSet) -> str:
    return orjson.dumps(rs.to_dict(), option=_OPTIONS, default=str).decode() + "\n"


@pytest.mark.parametrize("d", RECORDINGS, ids=[str(d.relative_to(REPO / "tests" / "data")) for d in RECORDINGS])
def test_pod_by_pod_equals_one_dump(d):
    rec = read_recording(d)
    rs = build_reports(rec.events, rec.meta, rec.incomplete)
    out = io.StringIO()
    write_report(rs, "json", out)
    assert out.getvalue() == render_json(rs) == whole(rs)


def test_empty_and_odd_sets():
    for rs in (ReportSet([], 0, []), ReportSet([], 3, ["a note\nwith a newline"], outside_stop=[{"x": [1, {"y": "z"}]}])):
        assert render_json(rs) == whole(rs)

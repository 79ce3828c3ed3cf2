"""Golden reports: the report of every recording under tests/data, as JSON and as text, is
byte-identical to the file kept in tests/golden/. A refactor must not change a report; a deliberate
change (a fixed rule, a new verdict that rightly fires) updates the files, named in its commit:

    SIGTRACE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

Recordings are hand-written cases and real ones (tests/data/lab: bpf lab pods with exec probes,
a strace recorder killed with the PID 1 it traced)."""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.console import Console

from sigtrace.report import build_reports
from sigtrace.events.reader import read_recording
from sigtrace.render.json import render_json
from sigtrace.render.text import render_text

DATA = Path(__file__).parent / "data"
GOLDEN = Path(__file__).parent / "golden"
RECORDINGS = sorted(p.parent for p in DATA.rglob("events.jsonl"))
UPDATE = os.environ.get("SIGTRACE_UPDATE_GOLDEN") == "1"


def reports(rec_dir: Path) -> dict[str, str]:
    rec = read_recording(rec_dir)
    rs = build_reports(rec.events, rec.meta, rec.incomplete)
    buf = io.StringIO()
    render_text(rs, Console(file=buf, width=120, force_terminal=False, color_system=None, emoji=False))
    return {"json": render_json(rs), "txt": buf.getvalue()}


@pytest.mark.parametrize("rec_dir", RECORDINGS, ids=lambda p: str(p.relative_to(DATA)))
def test_report_is_the_golden_one(rec_dir):
    name = str(rec_dir.relative_to(DATA)).replace("/", "__")
    for ext, text in reports(rec_dir).items():
        path = GOLDEN / f"{name}.{ext}"
        if UPDATE:
            GOLDEN.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
        assert path.exists(), f"no golden {path.name}: run with SIGTRACE_UPDATE_GOLDEN=1 once"
        assert text == path.read_text(encoding="utf-8"), f"{path.name} changed"

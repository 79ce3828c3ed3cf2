"""The export's vectorised recording reader gives exactly what the tolerant reader gives, or declines."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sigtrace.errors import DataError
from sigtrace.events.reader import read_recording
from sigtrace.events.fast_reader import read_clean_recording
from sigtrace.export.write import have_pyarrow

pytestmark = pytest.mark.skipif(not have_pyarrow(), reason="the fast path needs pyarrow")
DATA = Path(__file__).parent / "data"
RECORDINGS = sorted(p.parent for p in DATA.rglob("events.jsonl"))


def assert_same(fast, slow) -> None:
    assert fast is not None
    assert fast.meta == slow.meta and fast.incomplete == slow.incomplete and fast.source == slow.source
    pd.testing.assert_frame_equal(fast.events, slow.events)


@pytest.mark.parametrize("rec_dir", RECORDINGS, ids=lambda p: str(p.relative_to(DATA)))
def test_same_as_read_recording(rec_dir):
    assert_same(read_clean_recording(rec_dir), read_recording(rec_dir, fast=False))


@pytest.mark.parametrize("tail, meta", [
    ('{"ts": 5, "kind": "process_exit", "pid": 1', None),                 # truncated last line
    ('not json', None),
    ('{"ts": 5, "kind": "from_the_future"}', None),                       # unknown kind
    ('{"ts": 5, "kind": "process_exit", "newfield": 1}', None),           # unknown field
    ('{"ts": 5, "kind": "process_exit", "pid": "12"}', None),             # wrongly typed
    ('{"kind": "process_exit"}', None),                                   # no ts
    ('{"ts": 5, "kind": "process_exit", "comm": "\\ud800"}', None),        # lone surrogate
])
def test_declines_what_needs_the_tolerant_reader(tmp_path, tail, meta):
    good = (DATA / "fleet" / "node-a" / "events.jsonl").read_text()
    (tmp_path / "events.jsonl").write_text(good + tail + "\n")
    assert read_clean_recording(tmp_path) is None
    if "ud800" not in tail:   # (read_recording itself stumbles on a lone surrogate: reported)
        read_recording(tmp_path, fast=False)   # which copes


def test_truncated_last_line_of_a_killed_recorder_stays_on_the_fast_path(tmp_path):
    good = (DATA / "fleet" / "node-a" / "events.jsonl").read_text()
    (tmp_path / "events.jsonl").write_text(good + '{"ts": 5, "kind": "process_exit", "pi')   # no newline: cut off
    fast = read_clean_recording(tmp_path)
    assert_same(fast, read_recording(tmp_path, fast=False))
    assert any(n.startswith("skipped 1 truncated last line") for n in fast.incomplete)
    (tmp_path / "events.jsonl").write_text(good + '{"ts": 5, "kind": "process_exit", "pid": 1}')  # whole, no newline
    assert_same(read_clean_recording(tmp_path), read_recording(tmp_path, fast=False))


def test_meta_notes_match(tmp_path):
    good = (DATA / "fleet" / "node-a" / "events.jsonl").read_text()
    (tmp_path / "events.jsonl").write_text(good)
    assert_same(read_clean_recording(tmp_path), read_recording(tmp_path, fast=False))          # no meta.json
    (tmp_path / "meta.json").write_text("{broken")
    assert_same(read_clean_recording(tmp_path), read_recording(tmp_path, fast=False))
    (tmp_path / "meta.json").write_text(json.dumps({"node": "n", "end": None, "lost_events": 7}))
    assert_same(read_clean_recording(tmp_path), read_recording(tmp_path, fast=False))


EVENT = st.fixed_dictionaries({
    "ts": st.floats(min_value=0, max_value=4e9, allow_nan=False),
    "kind": st.sampled_from(["signal_generate", "process_exit", "tcp_state", "pod_lifecycle"]),
}, optional={
    "pid": st.integers(min_value=-(2**53), max_value=2**53),
    "comm": st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=16),
    "sig": st.sampled_from(["SIGTERM", "SIGKILL", ""]),
    "exit_code": st.integers(0, 255),
    "detail": st.text(max_size=8, alphabet=st.characters(blacklist_categories=("Cs",))),
})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(EVENT, min_size=1, max_size=10))
def test_property_same_as_read_recording(tmp_path_factory, events):
    d = tmp_path_factory.mktemp("rec")
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    (d / "meta.json").write_text(json.dumps({"node": "n", "end": 1.0}))
    # values out of the schema's range (a negative pid, an empty signal name) are skipped by both
    # readers: the fast one hands such a file to the tolerant one, which counts what it skipped
    try:
        slow = read_recording(d, fast=False)
    except DataError as exc:
        with pytest.raises(DataError, match=re.escape(str(exc))):
            read_recording(d)
        return
    fast = read_clean_recording(d)
    assert_same(fast if fast is not None else read_recording(d), slow)

"""One validation where events enter: every hostile value of the issue, refused with its reason."""
from __future__ import annotations

import pytest

from sigtrace.events.validate import clean_meta, event_problem, field_problem


@pytest.mark.parametrize("field,value,why", [
    ("ts", "1.0", "not a number"), ("ts", None, None), ("ts", float("inf"), "out of range"),
    ("ts", float("nan"), "out of range"), ("ts", -1.0, "out of range"), ("ts", True, "not a number"),
    ("pid", "abc", "not an integer"), ("pid", 2 ** 70, "out of range"), ("pid", 1.5, "not an integer"),
    ("pid", -3, "out of range"), ("sport", "http", "not an integer"), ("dport", 70_000, "out of range"),
    ("sig", 15, "not a string"), ("sig", "TERM", "not a signal name"), ("sig", "SIGTERM", None),
    ("exit_signal", "SIGRTMIN+3", None), ("target_pod_uid", 123, "not a string"),
    ("comm", "nginx\ud800", "not valid Unicode"), ("comm", "x" * 2000, "too long"),
    ("result", "delivered", None), ("result", "maybe", "not a known value"),
    ("new_state", "FIN_WAIT1", None), ("new_state", 4, "not a string"), ("kind", "tcp_stat", "not a known value"),
])
def test_field_problems(field, value, why):
    assert field_problem(field, value) == why


def test_event_problem_names_the_field():
    assert event_problem({"ts": 1.0, "kind": "process_exit", "pid": 1.5}) == "pid not an integer"
    assert event_problem({"ts": 1.0, "kind": "process_exit", "pid": 7, "exit_code": 0}) is None


@pytest.mark.parametrize("meta,kept,noted", [
    ([1, 2], {}, "is a JSON list"), (42, {}, "is a JSON int"),
    ({"node": "n1", "lost_events": "many", "end": "yesterday", "capabilities": ["tcp_states", "x-ray"]},
     {"node": "n1"}, "ignored capabilities, end, lost_events"),
    ({"node": "n1", "end": 5.0, "lost_events": 3}, {"node": "n1", "end": 5.0, "lost_events": 3}, None),
])
def test_meta_is_cleaned_and_what_was_dropped_is_named(meta, kept, noted):
    got, notes = clean_meta(meta)
    assert got == kept
    assert (noted in notes[0]) if noted else notes == []

"""The event writer's durability: what decides a verdict is in the file (the kernel's page cache,
which survives the writer's SIGKILL) as soon as it is written; TCP bulk goes out per batch."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

from sigtrace.events import schema as S
from sigtrace.events.writer import DURABLE_AT_ONCE, EVENTS_FILE, EventWriter


def lines(path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines()]


def test_decisive_events_reach_the_file_at_once_bulk_per_batch(tmp_path):
    w = EventWriter(tmp_path, flush_interval=3600)        # no timer flush during the test
    try:
        w.write(S.new_event(S.TCP_STATE, 1.0, pid=7, old_state="ESTABLISHED", new_state="FIN_WAIT1"))
        assert lines(tmp_path / EVENTS_FILE) == []          # bulk: waits for the batch's end
        w.write(S.new_event(S.SIGNAL_DELIVER, 2.0, pid=1, sig="SIGTERM"))
        got = lines(tmp_path / EVENTS_FILE)                 # a signal takes what was buffered with it
        assert [e["kind"] for e in got] == [S.TCP_STATE, S.SIGNAL_DELIVER]
        w.write(S.new_event(S.TCP_RESET_SENT, 3.0, pid=7))
        flushes = w.flushes
        w.flush()
        w.flush()                                           # nothing pending: no write(2)
        assert w.flushes == flushes + 1
        assert [e["ts"] for e in lines(tmp_path / EVENTS_FILE)] == [1.0, 2.0, 3.0]
    finally:
        w.close()


def test_every_kind_that_decides_a_verdict_alone_is_written_at_once():
    assert DURABLE_AT_ONCE == {S.SIGNAL_GENERATE, S.SIGNAL_DELIVER, S.PROCESS_EXEC, S.PROCESS_EXIT, S.POD_LIFECYCLE}


def test_a_sigkilled_writer_keeps_its_signals_and_exits(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from sigtrace.events import schema as S
        from sigtrace.events.writer import EventWriter
        w = EventWriter({str(tmp_path)!r}, flush_interval=3600)
        w.write(S.new_event(S.TCP_STATE, 1.0, pid=7, old_state="ESTABLISHED", new_state="CLOSE_WAIT"))
        w.write(S.new_event(S.SIGNAL_DELIVER, 2.0, pid=1, sig="SIGQUIT"))
        w.write(S.new_event(S.PROCESS_EXIT, 3.0, pid=6, exit_code=0))
        print("written", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "written"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert [(e["kind"], e["ts"]) for e in lines(tmp_path / EVENTS_FILE)] == [
        (S.TCP_STATE, 1.0), (S.SIGNAL_DELIVER, 2.0), (S.PROCESS_EXIT, 3.0)]

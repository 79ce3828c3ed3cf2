"""exit_group() entries as exits: what lets a recorder that dies with the process record its exit.
Lines are real strace 6.1 output (`-f -ttt -yy --decode-pids=comm,pidns`, `-e inject=exit_group:delay_enter=300ms`):
strace writes a call's entry at once and completes the line at the exit. No root needed."""
from __future__ import annotations

from sigtrace.backends.strace.command import build_argv
from sigtrace.backends.strace.parser import LineParser, Syscall
from sigtrace.backends.strace.procs import ProcTable
from sigtrace.backends.strace.translate import Translator
from sigtrace.events import schema as S
from sigtrace.pods.cgroup import PodRef

POD = PodRef("0b5c9f1e-1111-4222-8333-444455556666", "c0ffee")
ENTRY = "10091<sh> 1796195665.489910 exit_group(3"          # what the pipe holds during the delay
COMPLETE = "10091<sh> 1796195665.489910 exit_group(3)                 = ?"
EXITED = "10091<sh> 1796195665.790944 +++ exited with 3 +++"


def translator() -> tuple[Translator, LineParser, list[dict]]:
    procs = ProcTable("/nonexistent")
    procs.seed(10091, nspid=1, pidns="pid:[4026532999]", pod=POD, in_child_ns=True)
    events: list[dict] = []
    return Translator(procs, events.append), LineParser(), events


def feed(tr: Translator, parser: LineParser, line: str) -> None:
    for rec in parser.feed(line):
        tr.handle(rec)


def test_a_partial_exit_group_entry_is_an_exit_with_its_code():
    tr, parser, events = translator()
    rec = parser.exit_entry(ENTRY)
    assert isinstance(rec, Syscall) and rec.name == "exit_group" and rec.args == "3" and rec.tid == 10091
    tr.handle(rec)
    tr.handle(parser.exit_entry(ENTRY))          # the same partial read twice: one exit
    feed(tr, parser, COMPLETE)                   # the line completed at the real exit
    feed(tr, parser, EXITED)                     # and strace's exit report
    exits = [e for e in events if e["kind"] == S.PROCESS_EXIT]
    assert len(exits) == 1
    assert exits[0]["exit_code"] == 3 and "exit_signal" not in exits[0] and exits[0]["nspid"] == 1
    assert exits[0]["ts"] == 1796195665.489910 and exits[0]["pod_uid"] == POD.pod_uid
    assert parser.unparsed == 0


def test_an_exit_group_interrupted_by_another_process_is_an_exit_too():
    tr, parser, events = translator()
    feed(tr, parser, "10091<sh> 1796195665.489910 exit_group(0 <unfinished ...>")
    feed(tr, parser, "10091<sh> 1796195665.690000 <... exit_group resumed>) = ?")
    feed(tr, parser, "10091<sh> 1796195665.690100 +++ exited with 0 +++")
    assert [(e["kind"], e["exit_code"]) for e in events] == [(S.PROCESS_EXIT, 0)]


def test_an_exit_without_exit_group_is_recorded_at_its_end():
    tr, parser, events = translator()
    feed(tr, parser, "10091<sh> 1796195665.790944 +++ killed by SIGKILL +++")
    assert [(e["kind"], e["exit_signal"]) for e in events] == [(S.PROCESS_EXIT, "SIGKILL")]


def test_partials_that_are_not_exit_entries_are_ignored():
    parser = LineParser()
    for partial in ("10091<sh> 1796195665.489910 kill(8482, 0", "10091<sh> 1796195665.489910 exit_group(",
                    "garbage exit_group(3", "10091<sh> 1796195665.489910 exit_group(3)"):
        assert parser.exit_entry(partial) is None


def test_exits_are_held_only_for_a_recorder_that_dies_with_its_tracee():
    assert not any("inject=" in a for a in build_argv("strace", [1], 3))
    argv = build_argv("strace", [1], 3, delay_exits=True)
    assert argv[argv.index("-e", argv.index("-o")) + 1] == "inject=exit_group:delay_enter=200ms"
    assert "exit_group" in argv[argv.index("-e") + 1]


def test_an_exit_group_cut_by_our_detach_is_an_exit_and_other_cut_calls_are_known():
    tr, parser, events = translator()
    feed(tr, parser, "10091<sh> 1796196375.248448 exit_group(3 <detached ...>")   # real: strace stopped mid-exit
    feed(tr, parser, "10091<sh> 1796196375.248448 read(3<pipe:[289170]>,  <detached ...>")
    assert [(e["kind"], e["exit_code"]) for e in events] == [(S.PROCESS_EXIT, 3)]
    assert parser.unparsed == 0

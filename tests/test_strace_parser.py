"""strace line parser and translation, over real strace 6.1 output (tests/strace_fixtures, made by
make_fixtures.py from scenario.py) and over garbled input (hypothesis). No root needed."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from sigtrace.backends.strace.parser import Exit, LineParser, SignalRecv, Syscall, parse_message, split_top
from sigtrace.backends.strace.procs import ProcTable
from sigtrace.backends.strace.translate import Translator, parse_tuple, pidspec, si_code
from sigtrace.events import kinds, schema as S
from sigtrace.pods.cgroup import PodRef

FIX = Path(__file__).parent / "strace_fixtures"
POD = PodRef("0b5c9f1e-1111-4222-8333-444455556666", "c0ffee")
LINES = (FIX / "scenario.strace").read_text().splitlines(keepends=True)


def records(lines: list[str]) -> tuple[list, LineParser]:
    p = LineParser()
    out = [r for line in lines for r in p.feed(line)]
    return out, p


def scenario_events() -> tuple[list[dict], Translator, int]:
    """Translate the fixture as the backend would, with /proc facts the run no longer has: the
    traced init is PID 1 of its namespace, the signalled thread belongs to it."""
    init = int(re.match(r"\d+", LINES[0]).group())
    tg = next(line for line in LINES if " tgkill(" in line)
    thread = int(re.findall(r"/\* (\d+) in strace's PID NS", tg)[1])
    procs = ProcTable("/nonexistent")
    procs.fallback_pod = POD
    procs.seed(init, nspid=1, pidns="pid:[4026532999]", pod=POD, in_child_ns=True)
    procs.seed(thread, tgid=init)
    events: list[dict] = []
    tr = Translator(procs, events.append)
    p = LineParser()
    for line in LINES:
        for rec in p.feed(line):
            tr.handle(rec)
    assert p.unparsed == 0
    return events, tr, init


def of(events: list[dict], kind: str, **match) -> list[dict]:
    """Events of a kind, with the null fields the sparse events leave out restored (as readers do)."""
    return [{**dict.fromkeys(S.FIELD_NAMES), **e} for e in events
            if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())]


# ---- every line of a real run parses -------------------------------------------------
def test_every_fixture_line_parses_and_unfinished_calls_are_joined():
    recs, p = records(LINES)
    assert p.lines == len(LINES) and p.unparsed == 0 and p.pending_calls() == 0
    # `tkill(... <unfinished ...>` + `<... tkill resumed>) = 0` is one call, timed at its start
    tkill = [r for r in recs if isinstance(r, Syscall) and r.name == "tkill"]
    assert len(tkill) == 1 and tkill[0].ret == "0" and tkill[0].end_ts > tkill[0].ts
    interrupted = [r for r in recs if isinstance(r, Syscall) and r.errno == "ERESTARTSYS"]
    assert len(interrupted) == 3 and all(r.name == "read" and r.ret == "?" for r in interrupted)
    # the execve resumed after the comm changed: the resumed line carries the new comm
    ex = next(r for r in recs if isinstance(r, Syscall) and r.name == "execve" and '"/bin/true"' in r.args)
    assert ex.comm == "true" and ex.ret == "0"


def test_signals_received_with_si_code_and_si_pid():
    events, _tr, init = scenario_events()
    term = of(events, S.SIGNAL_DELIVER, sig="SIGTERM")
    # from the namespace's init (si_pid=1, SI_USER), via kill() and via pidfd_send_signal()
    assert sum(1 for e in term if e["si_pid"] == 1 and e["code"] == 0) == 3
    # from outside the PID namespace: make_fixtures.py played the runtime -> si_pid=0
    outside = [e for e in term if e["si_pid"] == 0]
    assert len(outside) == 1 and outside[0]["pod_uid"] == POD.pod_uid and outside[0]["handler"] is None
    tk = of(events, S.SIGNAL_DELIVER, sig="SIGUSR1")
    assert len(tk) == 2 and {e["code"] for e in tk} == {-6}          # SI_TKILL, to the thread
    assert all(e["pid"] == init and e["tid"] != init for e in tk)
    assert of(events, S.SIGNAL_DELIVER, sig="SIGUSR2")[0]["code"] == -1   # SI_QUEUE
    chld = of(events, S.SIGNAL_DELIVER, sig="SIGCHLD")
    assert {e["code"] for e in chld} == {1, 2}                           # CLD_EXITED, CLD_KILLED


def test_signals_sent_name_their_target_on_the_node():
    events, tr, init = scenario_events()
    gen = of(events, S.SIGNAL_GENERATE)
    # kill x2, tgkill, tkill, rt_sigqueueinfo, pidfd_send_signal; not kill(pid, 0), not the ESRCH kill
    assert [e["sig"] for e in gen] == ["SIGTERM", "SIGTERM", "SIGUSR1", "SIGUSR1", "SIGUSR2", "SIGTERM"]
    assert tr.counts["failed_signal_calls"] == 1
    first = gen[0]
    assert first["pid"] == init and first["nspid"] == 1 and first["target_nspid"] == 2
    assert first["target_pid"] not in (None, init) and first["target_pod_uid"] == POD.pod_uid
    assert all(e["result"] is None for e in gen)        # strace cannot tell delivered from ignored
    # the receiving side agrees: the first SIGTERM was delivered to that very pid
    assert of(events, S.SIGNAL_DELIVER, sig="SIGTERM")[0]["pid"] == first["target_pid"]


def test_exits_execs_and_thread_exits():
    events, tr, init = scenario_events()
    exits = of(events, S.PROCESS_EXIT)
    assert sorted((e["exit_code"] if e["exit_code"] is not None else -1) for e in exits) == [-1, -1, 0, 0, 0, 3, 7, 255]
    assert sorted(e["exit_signal"] for e in exits if e["exit_signal"]) == ["SIGKILL", "SIGTERM"]
    assert of(events, S.PROCESS_EXIT, pid=init)[0]["nspid"] == 1
    assert tr.counts["thread_exits"] == 1               # the signalled thread's exit is no process exit
    execs = of(events, S.PROCESS_EXEC)
    assert [(e["filename"], e["comm"]) for e in execs] == [("/bin/true", "true"), ("/bin/sh", "sh")]
    # a child learnt its namespace pid from the pidns comment of the kill() that targeted it
    killed = of(events, S.PROCESS_EXIT, exit_code=3)[0]
    assert killed["nspid"] == 2


def test_sockets_closes_resets_and_refusals():
    events, _tr, _init = scenario_events()
    closes = of(events, S.SOCK_CLOSE)
    v4 = [e for e in closes if e["saddr"] == "127.0.0.7" and e["daddr"] == "127.0.0.1"]
    assert {e["reason"] for e in v4} == {"close", "shutdown SHUT_WR"}
    assert all(e["sport"] > 0 and e["dport"] > 0 for e in v4)
    v6 = [e for e in closes if e["saddr"] == "::1" and e["daddr"] == "::1"]
    assert len(v6) == 4
    listener = [e for e in closes if e["daddr"] is None and e["saddr"] == "127.0.0.7"]
    assert len(listener) == 1                            # the listening socket: local side only
    # no UDP or unix socket is reported
    assert all(e["saddr"] in ("127.0.0.7", "127.0.0.1", "::1", None) for e in closes)
    resets = of(events, S.TCP_RESET_RECEIVED)
    assert [e["daddr"] for e in resets] == ["127.0.0.7", "::1"]   # tuple remembered from connect()
    refused = of(events, S.CONNECT_ERROR)
    assert len(refused) == 4 and {e["reason"] for e in refused} == {"ECONNREFUSED"}
    assert all(e["dport"] == closes_port(listener[0]) for e in refused if e["daddr"] == "127.0.0.7")


def closes_port(listener: dict) -> int:
    return listener["sport"]


def test_events_are_sparse_and_within_their_kinds_fields():
    events, _tr, _init = scenario_events()
    assert events and all(None not in e.values() and list(e)[:2] == ["ts", "kind"] for e in events)
    for e in events:
        assert e["kind"] in S.KINDS and isinstance(e["ts"], float)
        assert set(e) - {"ts", "kind"} <= set(kinds.BY_NAME[e["kind"]].fields), e


# ---- single line shapes ---------------------------------------------------------------
@pytest.mark.parametrize("line,kind", [
    ("[pid  4242] 1795943714.561944 kill(1, SIGQUIT) = 0", Syscall),                 # stderr form
    ("4242 1795943714.561944 close(3<TCP:[10.0.0.5:80->10.0.0.9:5123]>) = 0", Syscall),  # no comm
    ("4242<nginx> 1795943714.561944 --- SIGQUIT {si_signo=SIGQUIT, si_code=SI_USER, si_pid=27, si_uid=0} ---",
     SignalRecv),
    ("4242<nginx> 1795943714.5 +++ killed by SIGSEGV (core dumped) +++", Exit),
    ("4242<nginx> 1795943714.5 +++ exited with 0 +++", Exit),
    ('4242<sh> 1795943714.5 write(1, "x) = 0\\n", 6) = 6', Syscall),                  # result inside a string
    ("4242<sh> 1795943714.5 exit_group(0)                 = ?", Syscall),
])
def test_line_shapes(line, kind):
    recs, p = records([line])
    assert p.unparsed == 0 and len(recs) == 1 and isinstance(recs[0], kind)
    if "write(" in line:
        assert recs[0].ret == "6" and recs[0].args.endswith("6")


def test_known_lines_without_records_and_unknown_lines():
    recs, p = records(["4242<x> 1795943714.5 --- stopped by SIGSTOP ---\n",
                       "4242<x> 1795943714.5 +++ superseded by execve in pid 4240 +++\n",
                       "4242<x> 1795943714.5 read(3<pipe:[1]>,  <unfinished ...>\n",
                       "garbage\n", "4243<x> 1795943714.5 <... close resumed>\n", ""])
    assert recs == [] and p.unparsed == 3 and p.pending_calls() == 1


def test_resumed_without_its_first_half_still_completes():
    recs, p = records(["4242<x> 1795943714.5 <... close resumed>) = 0\n"])
    assert p.unparsed == 0 and recs[0].name == "close" and recs[0].ret == "0"


def test_strace_messages():
    stderr = (FIX / "attach-errors.stderr").read_text().splitlines()
    msgs = [parse_message(line) for line in stderr]
    assert [m.kind for m in msgs] == ["attach_failed", "attach_failed"]
    assert msgs[0].text == "No such process" and msgs[1].text == "Operation not permitted"
    scen = [parse_message(line) for line in (FIX / "scenario.stderr").read_text().splitlines()]
    assert all(m.kind == "attached" for m in scen)
    assert parse_message("strace: Process 12801 attached with 3 threads").threads == 3
    assert parse_message("not strace at all") is None


def test_killed_mid_line_leaves_one_unparsed_half_line():
    text = (FIX / "killed.strace").read_text()
    assert not text.endswith("\n")                      # the real file: strace died inside a read()
    _recs, p = records(text.split("\n"))
    assert p.unparsed == 1 and "read(" in p.unparsed_samples[0]


def test_helpers():
    assert pidspec("2<python3> /* 30502 in strace's PID NS */") == (2, 30502, "python3")
    assert pidspec("-42") == (-42, None, None)
    assert parse_tuple("<TCPv6:[[::ffff:127.0.0.1]:80->[::1]:5]>") == ("::ffff:127.0.0.1", 80, "::1", 5)
    assert parse_tuple("<TCP:[290848]>") == (None, None, None, None)
    assert parse_tuple("<UDP:[1.2.3.4:5->6.7.8.9:10]>") is None
    assert si_code("SI_USER") == 0 and si_code("SI_KERNEL") == 128 and si_code("-6") == -6 and si_code("X") is None
    assert split_top('a, {b, c}, "d, \\"e", f<TCP:[1.1.1.1:1->2.2.2.2:2]>, g') == [
        "a", "{b, c}", '"d, \\"e"', "f<TCP:[1.1.1.1:1->2.2.2.2:2]>", "g"]


# ---- garbled and truncated input: never a crash, unknown lines counted ------------------
def _translate(lines: list[str]) -> tuple[LineParser, list[dict]]:
    events: list[dict] = []
    procs = ProcTable("/nonexistent")
    tr = Translator(procs, events.append)
    p = LineParser()
    for line in lines:
        for rec in p.feed(line):
            tr.handle(rec)
    return p, events


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(LINES), st.integers(0, 400), st.integers(0, 400)), max_size=30))
def test_truncated_and_spliced_real_lines_never_crash(cuts):
    # strace killed mid-line, or two writers interleaved: a prefix of one line + the end of another
    lines = [a[:i] + LINES[(i + j) % len(LINES)][j:] for a, i, j in cuts]
    p, events = _translate(lines)
    assert p.lines == len(lines) and 0 <= p.unparsed <= len(lines)
    assert all(e["kind"] in S.KINDS for e in events)


TOKENS = list("0123456789.<>[](){}-+=?, \"\\/*:_ab") + [
    "---", "+++", "SIG", "TERM", "kill(", "close(", "<...", " resumed>", "<unfinished ...>", "TCP:[", "->",
    "si_pid=", "1795943714.5 ", "4242<x> ", " = -1 ECONNRESET (x)", ") = 0", "/* 1 in strace's PID NS */"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(TOKENS), max_size=40).map("".join), max_size=30))
def test_random_lines_are_counted_not_raised(lines):
    p, _events = _translate(lines)
    assert p.lines == len(lines)

"""Structure of strace 6.1 output lines (`-f -ttt -yy --decode-pids=comm,pidns`), no meaning yet.

Every trace line starts with the tid (strace's PID namespace) and, with --decode-pids=comm, its
command name; without -o strace writes `[pid N]` instead, both are accepted:

    30485<python3> 1795943714.561944 kill(2<python3> /* 30502 in strace's PID NS */, SIGTERM) = 0
    30502<python3> 1795943714.466455 read(3<pipe:[289170]>,  <unfinished ...>
    30502<python3> 1795943714.565905 <... read resumed>0x7faec53ff950, 1) = ? ERESTARTSYS (To be ...)
    30502<python3> 1795943714.565956 --- SIGTERM {si_signo=SIGTERM, si_code=SI_USER, si_pid=0, si_uid=0} ---
    30511<python3> 1795943714.624763 +++ killed by SIGTERM +++

LineParser joins unfinished/resumed halves per tid and yields Syscall, SignalRecv and Exit
records; anything else is counted as unparsed, never raised: strace killed mid-line leaves
half lines, and argument strings may contain anything.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

_PREFIX = re.compile(
    r"^(?:\[pid\s+(?P<pid1>\d+)(?:<(?P<comm1>[^>]*)>)?\]\s|(?P<pid2>\d+)(?:<(?P<comm2>[^>]*)>)?\s+)?"
    r"(?P<ts>\d{9,11}\.\d{1,9})\s(?P<body>.*)$", re.S)
_UNFINISHED = re.compile(r"^(?P<name>\w+)\((?P<args>.*?)\s*<unfinished \.\.\.>$", re.S)
_CUT_BY_DETACH = re.compile(r"^(?P<name>\w+)\((?P<args>.*?)\s*<detached \.\.\.>$", re.S)
_RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>\s?(?P<rest>.*)$", re.S)
_CALL = re.compile(r"^(?P<name>\w+)\((?P<rest>.*)$", re.S)
# the return value at the end of a completed call: `= 0`, `= -1 ECONNRESET (...)`, `= ? ERESTARTSYS (...)`,
# `= 7<TCP:[...]>`, `= 0x7f..`, `= ?`; anchored at the end so that strings in the arguments cannot fool it
_RESULT = re.compile(
    r"\)\s+=\s+(?P<ret>-?\d+|\?|0x[0-9a-fA-F]+)(?P<retfd><.*>)?"
    r"(?:\s+(?P<errno>E[A-Z0-9]+|ERESTART\w+)(?:\s+\([^()]*(?:\([^()]*\)[^()]*)*\))?)?"
    r"(?:\s+\([^()]*\))?(?:\s+<[\d.]+>)?$", re.S)
_SIGNAL = re.compile(r"^--- (?P<sig>SIG[A-Z0-9+]+|\d+) (?P<info>\{.*\}|\(.*\).*) ---$", re.S)
_STOPPED = re.compile(r"^--- stopped by (?P<sig>SIG[A-Z0-9]+) ---$")
_EXITED = re.compile(r"^\+\+\+ exited with (?P<code>-?\d+) \+\+\+$")
_KILLED = re.compile(r"^\+\+\+ killed by (?P<sig>SIG[A-Z0-9+]+|\d+)(?P<core> \(core dumped\))? \+\+\+$")
# a process ending: exit_group(CODE) never returns; its entry alone is a complete fact
EXIT_CALLS = ("exit_group",)
_EXIT_ENTRY = re.compile(r"^(?P<name>exit_group)\((?P<code>-?\d+)$")
_SUPERSEDED = re.compile(r"^\+\+\+ superseded by execve in pid (?P<pid>\d+) \+\+\+$")

# strace's own messages (stderr), prefixed with its argv[0]
_MESSAGE = re.compile(r"^(?:\S*/)?strace: (?P<msg>.*)$")
_ATTACHED = re.compile(r"^Process (?P<pid>\d+) attached(?: with (?P<threads>\d+) threads)?$")
_DETACHED = re.compile(r"^Process (?P<pid>\d+) detached$")
_ATTACH_FAILED = re.compile(r"^attach: ptrace\(PTRACE_\w+, (?P<pid>\d+)\): (?P<why>.*)$")


@dataclass
class Syscall:
    tid: int
    comm: str | None
    ts: float                 # when the call was made (its first half for unfinished calls)
    end_ts: float             # when it returned
    name: str
    args: str                 # raw argument text, without the closing parenthesis
    ret: str                  # "0", "-1", "?", "7", "0x..."
    retfd: str | None         # `<TCP:[...]>` decoding of a returned fd
    errno: str | None

    @property
    def failed(self) -> bool:
        return self.errno is not None


@dataclass
class SignalRecv:
    tid: int
    comm: str | None
    ts: float
    sig: str
    info: dict[str, str] = field(default_factory=dict)


@dataclass
class Exit:
    tid: int
    comm: str | None
    ts: float
    code: int | None          # exited with N
    sig: str | None           # killed by SIG
    core: bool = False


Record = Syscall | SignalRecv | Exit


@dataclass
class Message:
    """One of strace's own (stderr) lines, classified."""
    kind: str                 # attached, detached, attach_failed, other
    pid: int | None
    text: str
    threads: int | None = None


def parse_message(line: str) -> Message | None:
    m = _MESSAGE.match(line.rstrip("\n"))
    if m is None:
        return None
    msg = m.group("msg")
    for kind, pattern in (("attached", _ATTACHED), ("detached", _DETACHED), ("attach_failed", _ATTACH_FAILED)):
        mm = pattern.match(msg)
        if mm:
            threads = mm.groupdict().get("threads")
            return Message(kind, int(mm.group("pid")), mm.groupdict().get("why") or msg,
                           int(threads) if threads else None)
    return Message("other", None, msg)


def split_info(info: str) -> dict[str, str]:
    """`{si_signo=SIGTERM, si_code=SI_USER, si_pid=1<nginx> /* 42 in strace's PID NS */, si_uid=0}` -> dict."""
    out: dict[str, str] = {}
    body = info.strip()
    if not (body.startswith("{") and body.endswith("}")):
        return out
    for part in split_top(body[1:-1]):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def split_top(text: str) -> list[str]:
    """Split on commas outside brackets, braces, parentheses, angle brackets and quotes."""
    parts, depth, start, i, quoted = [], 0, 0, 0, False
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            if not (ch == ">" and i > 0 and text[i - 1] == "-"):   # `->` inside socket tuples
                depth = max(0, depth - 1)
        elif ch == "/" and text.startswith("/*", i):
            end = text.find("*/", i)
            i = len(text) if end < 0 else end + 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
        i += 1
    tail = text[start:].strip()
    if tail:
        parts.append(tail)
    return parts


def _complete(tid: int, comm: str | None, ts: float, end_ts: float, name: str, rest: str) -> Syscall | None:
    """`rest` is everything after `name(`: arguments, `) = RET ...`."""
    # anchored at the end: a `) = 0` inside a string argument cannot match, as the rest of its
    # line (more arguments, the real result) does not fit the result's shape
    m = _RESULT.search(rest)
    if m is None:
        return None
    return Syscall(tid, comm, ts, end_ts, name, rest[:m.start()], m.group("ret"), m.group("retfd"),
                   m.group("errno") if m.group("ret") in ("-1", "?") else None)


class LineParser:
    """Feed trace lines, get records. Counts what it could not parse; never raises on input."""

    def __init__(self) -> None:
        self.lines = 0
        self.unparsed = 0
        self.unparsed_samples: list[str] = []          # the first few, for meta.json
        self._pending: dict[int, tuple[str, str, float, str | None]] = {}   # tid -> (name, args, ts, comm)

    def feed(self, line: str) -> Iterator[Record]:
        self.lines += 1
        try:
            rec = self._parse(line.rstrip("\n"))
        except (ValueError, OverflowError):
            rec = None
        if rec is None:
            self._unparsed(line)
        elif rec is not True:
            yield rec

    def _unparsed(self, line: str) -> None:
        self.unparsed += 1
        if len(self.unparsed_samples) < 5:
            self.unparsed_samples.append(line[:200])

    def _parse(self, line: str) -> Record | bool | None:
        """A record, True for a known line without a record (an unfinished half, a stop), None if unknown."""
        m = _PREFIX.match(line)
        if m is None:
            return None
        tid = int(m.group("pid1") or m.group("pid2") or 0)
        comm = m.group("comm1") if m.group("pid1") else m.group("comm2")
        ts = float(m.group("ts"))
        body = m.group("body")
        if body.startswith("---"):
            sm = _SIGNAL.match(body)
            if sm:
                return SignalRecv(tid, comm, ts, sm.group("sig"), split_info(sm.group("info")))
            return True if _STOPPED.match(body) else None
        if body.startswith("+++"):
            em = _EXITED.match(body)
            if em:
                return Exit(tid, comm, ts, int(em.group("code")), None)
            km = _KILLED.match(body)
            if km:
                return Exit(tid, comm, ts, None, km.group("sig"), bool(km.group("core")))
            return True if _SUPERSEDED.match(body) else None
        if body.startswith("<..."):
            rm = _RESUMED.match(body)
            if rm is None:
                return None
            pending = self._pending.pop(tid, None)
            name = rm.group("name")
            if pending is None or pending[0] != name:
                # attached mid-call, or the first half was lost: the arguments are incomplete
                return _complete(tid, comm, ts, ts, name, rm.group("rest")) or None
            _, args, start_ts, _ = pending
            # strace splits between arguments: the first half ends with ", " or the resumed part with ")"
            return _complete(tid, comm, start_ts, ts, name, args + rm.group("rest")) or None
        dm = _CUT_BY_DETACH.match(body)
        if dm:
            # strace detached (we stopped) while the call was running: only an exit is a fact
            if dm.group("name") in EXIT_CALLS:
                return Syscall(tid, comm, ts, ts, dm.group("name"), dm.group("args"), "?", None, None)
            return True
        um = _UNFINISHED.match(body)
        if um:
            if um.group("name") in EXIT_CALLS:
                # the process is ending: say so now (its resumed half `= ?` comes at the real exit)
                return Syscall(tid, comm, ts, ts, um.group("name"), um.group("args"), "?", None, None)
            args = um.group("args")
            if args.endswith(","):
                args += " "
            self._pending[tid] = (um.group("name"), args, ts, comm)
            return True
        cm = _CALL.match(body)
        if cm:
            return _complete(tid, comm, ts, ts, cm.group("name"), cm.group("rest")) or None
        return None

    def pending_calls(self) -> int:
        return len(self._pending)

    def exit_entry(self, partial: str) -> Syscall | None:
        """An exit_group() entry still without its end (`1<nginx> 1796.1 exit_group(0`): strace writes a
        call's entry at once and completes the line at the exit. Lets a recorder that dies with the
        process (same PID namespace) record the exit ahead of it."""
        m = _PREFIX.match(partial)
        if m is None:
            return None
        em = _EXIT_ENTRY.match(m.group("body"))
        if em is None:
            return None
        tid = int(m.group("pid1") or m.group("pid2") or 0)
        comm = m.group("comm1") if m.group("pid1") else m.group("comm2")
        ts = float(m.group("ts"))
        return Syscall(tid, comm, ts, ts, em.group("name"), em.group("code"), "?", None, None)

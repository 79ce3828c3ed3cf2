"""Parsed strace records -> schema events (sigtrace.events.schema).

What strace shows and what it cannot:
- `--- SIG ---` lines are deliveries in the receiver: signal_deliver with si_code and si_pid as the
  receiver sees them (si_pid=0: the sender is outside the receiver's PID namespace, the runtime).
  strace prints no handler: it is read from /proc/PID/status (SigCgt/SigIgn) as the line arrives,
  null when the process is gone. Under ptrace the kernel does not drop signals at generation, so
  a TERM to a handler-less PID 1 shows up here (handler=default) and is then discarded.
- kill/tkill/tgkill/rt_(tg)sigqueueinfo/pidfd_send_signal of traced processes: signal_generate.
  A returned 0 does not say whether the kernel delivered or dropped the signal (PID 1 without a
  handler), so `result` stays null; a failed call generated nothing and is only counted.
- close/shutdown of TCP sockets with their `-yy` tuple: sock_close (reason: the call).
- connect failures, immediate or through getsockopt(SO_ERROR) / a read after a non-blocking
  connect, and accept failures: connect_error with reason = errno name.
- ECONNRESET from a read or write on a TCP socket: tcp_reset_received.
- Resets the kernel sends by itself (a SYN to a closed port) never reach a traced process.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from ...events import kinds, schema as S
from .parser import EXIT_CALLS, Exit, Record, SignalRecv, Syscall, split_top
from .procs import ProcTable

# si_code names strace prints -> numbers (include/uapi/asm-generic/siginfo.h)
SI_CODES = {
    "SI_USER": 0, "SI_KERNEL": 0x80, "SI_QUEUE": -1, "SI_TIMER": -2, "SI_MESGQ": -3, "SI_ASYNCIO": -4,
    "SI_SIGIO": -5, "SI_TKILL": -6, "SI_DETHREAD": -7, "SI_ASYNCNL": -60,
    "CLD_EXITED": 1, "CLD_KILLED": 2, "CLD_DUMPED": 3, "CLD_TRAPPED": 4, "CLD_STOPPED": 5, "CLD_CONTINUED": 6,
    "SEGV_MAPERR": 1, "SEGV_ACCERR": 2, "SEGV_BNDERR": 3, "SEGV_PKUERR": 4,
    "BUS_ADRALN": 1, "BUS_ADRERR": 2, "BUS_OBJERR": 3, "BUS_MCEERR_AR": 4, "BUS_MCEERR_AO": 5,
    "ILL_ILLOPC": 1, "ILL_ILLOPN": 2, "ILL_ILLADR": 3, "ILL_ILLTRP": 4, "ILL_PRVOPC": 5, "ILL_PRVREG": 6,
    "ILL_COPROC": 7, "ILL_BADSTK": 8,
    "FPE_INTDIV": 1, "FPE_INTOVF": 2, "FPE_FLTDIV": 3, "FPE_FLTOVF": 4, "FPE_FLTUND": 5, "FPE_FLTRES": 6,
    "FPE_FLTINV": 7, "FPE_FLTSUB": 8,
    "TRAP_BRKPT": 1, "TRAP_TRACE": 2, "TRAP_BRANCH": 3, "TRAP_HWBKPT": 4,
    "POLL_IN": 1, "POLL_OUT": 2, "POLL_MSG": 3, "POLL_ERR": 4, "POLL_PRI": 5, "POLL_HUP": 6,
    "SYS_SECCOMP": 1,
}

# `2<nginx> /* 30502 in strace's PID NS */`, `0`, `-42`
_PIDSPEC = re.compile(r"^(?P<n>-?\d+)(?:<(?P<comm>[^>]*)>)?(?:\s*/\*\s*(?P<host>\d+) in strace's PID NS\s*\*/)?$")
_PIDFD = re.compile(r"^\d+<pid:(?P<pid>\d+)(?:<(?P<comm>[^>]*)>)?>$")
_FD = re.compile(r"^(?P<fd>\d+)(?P<decode><.*>)?$", re.S)
_TCP = re.compile(r"^<(?P<proto>TCP|TCPv6):\[(?P<inner>.*)\]>$")
_ENDPOINT = r"(?:\[(?P<{0}6>[^\]]+)\]|(?P<{0}4>[0-9.]+)):(?P<{0}p>\d+)"
_TUPLE = re.compile("^" + _ENDPOINT.format("l") + "(?:->" + _ENDPOINT.format("r") + ")?$")
_SOCKADDR_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")
_SOCKADDR_V4 = re.compile(r'inet_addr\("([0-9.]+)"\)')
_SOCKADDR_V6 = re.compile(r'inet_pton\(AF_INET6, "([^"]+)"')
_SO_ERROR = re.compile(r"SO_ERROR, \[(?P<err>E[A-Z0-9]+|\d+)\]")

# the calls each kind comes from are declared with the kind (sigtrace.events.kinds)
SIGNAL_CALLS = kinds.strace_calls(S.SIGNAL_GENERATE)
EXEC_CALLS = kinds.strace_calls(S.PROCESS_EXEC)
# errors of a connection attempt, whichever call reports them
CONNECT_ERRORS = {"ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH", "EHOSTUNREACH", "ECONNABORTED",
                  "EADDRNOTAVAIL"}
# accept failures that are the normal life of a non-blocking listener
ACCEPT_NORMAL = {"EAGAIN", "EWOULDBLOCK", "EINTR", "ERESTARTSYS", "ERESTARTNOHAND", "ERESTARTNOINTR"}

Tuple = tuple[str | None, int | None, str | None, int | None]
NO_TUPLE: Tuple = (None, None, None, None)


def si_code(value: str | None) -> int | None:
    if value is None:
        return None
    if value in SI_CODES:
        return SI_CODES[value]
    try:
        return int(value, 0)
    except ValueError:
        return None


def pidspec(text: str) -> tuple[int | None, int | None, str | None]:
    """(number as the caller wrote it, node pid when strace translated it, comm)."""
    m = _PIDSPEC.match(text.strip())
    if m is None:
        return None, None, None
    host = m.group("host")
    return int(m.group("n")), int(host) if host else None, m.group("comm")


def signame(text: str) -> str | None:
    text = text.strip()
    if text.startswith("SIG"):
        return text
    try:
        n = int(text)
    except ValueError:
        return None
    return None if n == 0 else S.signal_name(n)


def parse_tuple(decode: str | None) -> Tuple | None:
    """`<TCP:[10.0.0.5:80->10.0.0.9:5123]>` -> (local addr, port, remote addr, port); None if not TCP.
    A socket that is not (or no longer) connected decodes as its inode only: NO_TUPLE."""
    if not decode:
        return None
    m = _TCP.match(decode)
    if m is None:
        return None
    t = _TUPLE.match(m.group("inner"))
    if t is None:
        return NO_TUPLE
    laddr = t.group("l6") or t.group("l4")
    raddr = t.group("r6") or t.group("r4")
    return (laddr, int(t.group("lp")), raddr, int(t.group("rp")) if t.group("rp") else None)


def split_fd(arg: str) -> tuple[int | None, str | None]:
    m = _FD.match(arg.strip())
    if m is None:
        return None, None
    return int(m.group("fd")), m.group("decode")


def sockaddr(arg: str) -> tuple[str | None, int | None]:
    port = _SOCKADDR_PORT.search(arg)
    addr = _SOCKADDR_V4.search(arg) or _SOCKADDR_V6.search(arg)
    return (addr.group(1) if addr else None), (int(port.group(1)) if port else None)


class Translator:
    """Turns records into events and remembers per-socket facts strace prints only once
    (a reset socket decodes as a bare inode: its tuple comes from earlier lines)."""

    def __init__(self, procs: ProcTable, emit: Callable[[dict[str, Any]], None]):
        self.procs = procs
        self.emit = emit
        self.counts: dict[str, int] = {"failed_signal_calls": 0, "thread_exits": 0}
        self._tuples: dict[tuple[int, int], Tuple] = {}          # (pid, fd) -> last known tuple
        self._connecting: dict[tuple[int, int], Tuple] = {}      # non-blocking connect in progress
        self._owned: set[tuple[int, int]] = set()                # (pid, fd) this process accepted/connected
        self._exiting: set[int] = set()                          # pids seen entering exit_group
        # syscall -> its translation; which kinds each call yields is declared in sigtrace.events.kinds
        self.handlers: dict[str, Callable[[Syscall], None]] = {
            **dict.fromkeys(SIGNAL_CALLS, self._signal_call),
            **dict.fromkeys(EXEC_CALLS, self._exec),
            **dict.fromkeys(EXIT_CALLS, self._exit_group),
            **dict.fromkeys(("close", "shutdown"), self._close),
            "connect": self._connect,
            **dict.fromkeys(("accept", "accept4"), self._accept),
            "getsockopt": self._getsockopt,
            **dict.fromkeys(kinds.READ_WRITE_CALLS, self._io),
        }

    # -- common fields
    def _common(self, tid: int, comm: str | None) -> dict[str, Any]:
        f = self.procs.facts(tid)
        return {"pid": f.pid, "tid": tid, "comm": comm, "pod_uid": f.pod.pod_uid,
                "container_id": f.pod.container_id, "nspid": f.nspid}

    def handle(self, rec: Record) -> None:
        if isinstance(rec, SignalRecv):
            self._signal(rec)
        elif isinstance(rec, Exit):
            self._exit(rec)
        elif isinstance(rec, Syscall):
            self._syscall(rec)

    # -- signals received
    def _signal(self, rec: SignalRecv) -> None:
        info = rec.info
        si_pid = None
        if "si_pid" in info:
            n, host, _comm = pidspec(info["si_pid"])
            si_pid = n
            if n is not None and host is not None:
                self.procs.learn(host, n, rec.tid)
        sig = rec.sig if rec.sig.startswith("SIG") else S.signal_name(int(rec.sig))
        common = self._common(rec.tid, rec.comm)
        num = S.SIGNAL_NUMBERS.get(sig, 0)
        # strace prints no handler; /proc says whether one is installed. Under ptrace even a signal the
        # kernel would drop (PID 1 of a namespace without handler) is shown here, then discarded.
        handler = self.procs.handler(rec.tid, num) if num else None
        self.emit(S.new_event(S.SIGNAL_DELIVER, rec.ts, sig=sig, code=si_code(info.get("si_code")),
                              si_pid=si_pid, handler=handler, **common))

    # -- exits
    def _exit(self, rec: Exit) -> None:
        pid = self.procs.tgid(rec.tid)
        if pid != rec.tid:
            self.counts["thread_exits"] += 1         # a thread ending is not the process exiting
            return
        if pid in self._exiting:
            # recorded at its exit_group() entry already: this is only its end
            self._exiting.discard(pid)
            self.procs.forget(pid)
            return
        self._process_exit(pid, rec.tid, rec.comm, rec.ts, rec.code, rec.sig)

    def _exit_group(self, rec: Syscall) -> None:
        """exit_group(CODE) entered: the process exits with CODE (what `+++ exited with CODE +++`
        says later, when the recorder is still there to read it)."""
        pid = self.procs.tgid(rec.tid)
        if pid in self._exiting:
            return                                    # the same call, seen as an entry and as a line
        self._exiting.add(pid)
        self.counts["exits_at_exit_group"] = self.counts.get("exits_at_exit_group", 0) + 1
        self._process_exit(pid, rec.tid, rec.comm, rec.ts, int(rec.args.strip()), None, forget=False)

    def _process_exit(self, pid: int, tid: int, comm: str | None, ts: float, code: int | None, sig: str | None,
                      forget: bool = True) -> None:
        common = self._common(tid, comm)
        # the kernel closes what the process still held: connections it alone owned (accepted or
        # connected by it; a listener is shared with the forked workers and stays open)
        for key in [k for k in self._tuples if k[0] == pid]:
            saddr, sport, daddr, dport = self._tuples.pop(key)
            if dport is not None and key in self._owned:
                self.emit(S.new_event(S.SOCK_CLOSE, ts, saddr=saddr, sport=sport, daddr=daddr, dport=dport,
                                      reason="exit", **common))
        self._owned = {k for k in self._owned if k[0] != pid}
        self.emit(S.new_event(S.PROCESS_EXIT, ts, exit_code=code, exit_signal=sig, **common))
        for key in [k for k in self._connecting if k[0] == pid]:
            del self._connecting[key]
        if forget:
            self.procs.forget(pid)

    # -- syscalls
    def _syscall(self, rec: Syscall) -> None:
        handler = self.handlers.get(rec.name)
        if handler is not None:
            handler(rec)

    def _signal_call(self, rec: Syscall) -> None:
        args = split_top(rec.args)
        if rec.failed:
            self.counts["failed_signal_calls"] += 1       # nothing was generated
            return
        target_n = target_host = None
        comm = None
        sig = None
        try:
            if rec.name == "pidfd_send_signal":
                m = _PIDFD.match(args[0].strip())
                target_host = int(m.group("pid")) if m else None
                comm = m.group("comm") if m else None
                sig = signame(args[1])
            else:
                # tgkill/rt_tgsigqueueinfo(tgid, tid, sig): the process is the thread group
                target_n, target_host, comm = pidspec(args[0])
                sig = signame(args[2] if rec.name in ("tgkill", "rt_tgsigqueueinfo") else args[1])
        except IndexError:
            return
        if sig is None:                                   # kill(pid, 0): an existence check
            return
        common = self._common(rec.tid, rec.comm)
        if target_host is None and target_n is not None and target_n > 0:
            target_host = self.procs.host_pid(target_n, rec.tid)
        elif target_host is not None and target_n is not None:
            self.procs.learn(target_host, target_n, rec.tid)
        target: dict[str, Any] = {"target_comm": comm}
        if target_host is not None:
            # a target already gone (a child SIGKILLed a moment ago) is resolved through the sender:
            # a pid named from inside a PID namespace shares it, so shares the sender's container
            tf = self.procs.facts(target_host, parent=self.procs.tgid(rec.tid))
            target.update(target_pid=tf.pid, target_nspid=tf.nspid if tf.nspid is not None else target_n,
                          target_pod_uid=tf.pod.pod_uid, target_container_id=tf.pod.container_id)
        elif target_n is not None:
            target["target_nspid"] = target_n if target_n > 0 else None
        self.emit(S.new_event(S.SIGNAL_GENERATE, rec.ts, sig=sig, **target, **common))

    def _exec(self, rec: Syscall) -> None:
        if rec.failed:
            return
        args = split_top(rec.args)
        filename = None
        if args:
            first = args[1] if rec.name == "execveat" and len(args) > 1 else args[0]
            if first.startswith('"'):
                filename = first.strip('"').replace('\\"', '"')
        common = self._common(rec.tid, rec.comm)
        f = self.procs.facts(rec.tid)
        if filename and rec.name == "execve":
            common["comm"] = filename.rsplit("/", 1)[-1][:15]  # the comm after exec (the line may show the old one)
        self.emit(S.new_event(S.PROCESS_EXEC, rec.ts, filename=filename, ppid=f.ppid, **common))

    def _fd_tuple(self, pid: int, arg: str) -> tuple[int | None, Tuple | None]:
        """The fd and its tuple, completed from what earlier lines said about it; None if not TCP."""
        fd, decode = split_fd(arg)
        t = parse_tuple(decode)
        if fd is None or t is None:
            return fd, None
        known = self._tuples.get((pid, fd), NO_TUPLE)
        merged = tuple(a if a is not None else b for a, b in zip(t, known))
        self._tuples[(pid, fd)] = merged              # type: ignore[assignment]
        return fd, merged                             # type: ignore[return-value]

    def _tcp_event(self, kind: str, rec: Syscall, t: Tuple, **extra: Any) -> None:
        saddr, sport, daddr, dport = t
        self.emit(S.new_event(kind, rec.ts, saddr=saddr, sport=sport, daddr=daddr, dport=dport,
                              **extra, **self._common(rec.tid, rec.comm)))

    def _close(self, rec: Syscall) -> None:
        args = split_top(rec.args)
        if not args:
            return
        pid = self.procs.tgid(rec.tid)
        fd, t = self._fd_tuple(pid, args[0])
        if fd is None or t is None:
            return
        if rec.name == "close":
            self._tuples.pop((pid, fd), None)
            self._connecting.pop((pid, fd), None)
            self._owned.discard((pid, fd))
        if rec.failed or (t[1] is None and t[3] is None):
            return                                    # EBADF, or a socket that never had an address
        how = "close" if rec.name == "close" else f"shutdown {args[1].strip() if len(args) > 1 else ''}".strip()
        self._tcp_event(S.SOCK_CLOSE, rec, t, reason=how)

    def _connect(self, rec: Syscall) -> None:
        args = split_top(rec.args)
        if len(args) < 2:
            return
        pid = self.procs.tgid(rec.tid)
        fd, t = self._fd_tuple(pid, args[0])
        if fd is None or t is None:
            return
        daddr, dport = sockaddr(args[1])
        t = (t[0], t[1], t[2] or daddr, t[3] or dport)
        self._tuples[(pid, fd)] = t
        if not rec.failed or rec.errno in ("EINPROGRESS", "EALREADY"):
            self._owned.add((pid, fd))
        if rec.errno in ("EINPROGRESS", "EALREADY"):
            self._connecting[(pid, fd)] = t
        elif rec.errno in CONNECT_ERRORS:
            self._tcp_event(S.CONNECT_ERROR, rec, t, reason=rec.errno)

    def _accept(self, rec: Syscall) -> None:
        args = split_top(rec.args)
        if not args:
            return
        pid = self.procs.tgid(rec.tid)
        _fd, t = self._fd_tuple(pid, args[0])
        if t is None:
            return
        if rec.failed and rec.errno not in ACCEPT_NORMAL:
            self._tcp_event(S.CONNECT_ERROR, rec, (t[0], t[1], None, None), reason=rec.errno)
        elif not rec.failed and rec.ret.isdigit():
            nt = parse_tuple(rec.retfd)
            if nt is not None and nt != NO_TUPLE:
                self._tuples[(pid, int(rec.ret))] = nt
                self._owned.add((pid, int(rec.ret)))

    def _getsockopt(self, rec: Syscall) -> None:
        m = _SO_ERROR.search(rec.args)
        if m is None or rec.failed:
            return
        args = split_top(rec.args)
        pid = self.procs.tgid(rec.tid)
        fd, t = self._fd_tuple(pid, args[0])
        if fd is None or t is None:
            return
        pending = self._connecting.pop((pid, fd), None)
        err = m.group("err")
        if pending is not None and err in CONNECT_ERRORS:
            full = tuple(a if a is not None else b for a, b in zip(t, pending))
            self._tcp_event(S.CONNECT_ERROR, rec, full, reason=err)      # type: ignore[arg-type]

    def _io(self, rec: Syscall) -> None:
        if not rec.failed:
            # cheap path for the bulk of the trace: only remember TCP tuples (a reset socket later
            # decodes as a bare inode) and see a pending connect succeed
            if "<TCP" in rec.args[:120]:
                pid = self.procs.tgid(rec.tid)
                fd, _t = self._fd_tuple(pid, rec.args.split(", ", 1)[0])
                if fd is not None:
                    self._connecting.pop((pid, fd), None)
            return
        args = split_top(rec.args)
        if not args:
            return
        pid = self.procs.tgid(rec.tid)
        fd, t = self._fd_tuple(pid, args[0])
        if fd is None or t is None:
            return
        pending = self._connecting.pop((pid, fd), None)
        if pending is not None and rec.errno in CONNECT_ERRORS:
            # a non-blocking connect that failed, seen by the first read/write (nginx's upstream recv)
            full = tuple(a if a is not None else b for a, b in zip(t, pending))
            self._tcp_event(S.CONNECT_ERROR, rec, full, reason=rec.errno)  # type: ignore[arg-type]
        elif rec.errno == "ECONNRESET":
            self._tcp_event(S.TCP_RESET_RECEIVED, rec, t, reason=rec.name)

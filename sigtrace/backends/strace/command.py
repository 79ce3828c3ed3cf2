"""The strace command line the backend runs, and the checks made before running it.

Flag choices (strace 6.1), each needed by the parser:
  -f                 follow forks: the workers, fpm children and preStop execs born after attach
  -ttt               epoch timestamps with microseconds (schema ts is epoch seconds)
  -yy                decode fds: `3<TCP:[10.0.0.5:80->10.0.0.9:51234]>` gives sock_close its tuple
  --decode-pids=comm,pidns
                     `1<nginx> /* 4242 in strace's PID NS */`: kill() targets and si_pid come with
                     the node pid and the command name, so no NSpid lookups race with exits
  -s 64              execve argv long enough to recognise `nginx -s quit` in a preStop
  -e signal=all      every received signal: `--- SIGTERM {si_code=SI_USER, si_pid=0, ...} ---`
  -o /dev/fd/N       trace lines alone on a pipe ("PID<comm> TS ..." on every line); strace's own
                     messages (attach results, failures) stay on stderr. strace writes each line as it
                     goes (a call's entry before the call runs), not at the end of a stdio buffer
  exit_group         traced: its entry says a process exits, and with which code, before it is gone
  -e inject=exit_group:delay_enter=200ms
                     only when the recorder dies with a traced process (EXIT_DELAY_MS)
Exit lines (`+++ exited with N +++`, `+++ killed by SIGKILL +++`) are kept: no -qq.
"""
from __future__ import annotations

import re
import shutil
import subprocess

from ...errors import PermissionProblem, SigtraceError
from ...pods import caps
from ...pods.proc import PROC, read_comm, read_status, read_text

# The syscalls we print. ptrace stops every syscall anyway; this only limits decoding and output.
SIGNAL_SYSCALLS = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal")
PROCESS_SYSCALLS = ("execve", "execveat", "exit_group")
SOCKET_SYSCALLS = ("close", "shutdown", "connect", "accept", "accept4", "getsockopt")
# Read/write calls only matter when they fail with ECONNRESET on a socket (a reset received).
IO_SYSCALLS = ("read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg", "sendfile")
SYSCALLS = SIGNAL_SYSCALLS + PROCESS_SYSCALLS + SOCKET_SYSCALLS + IO_SYSCALLS
STRING_LIMIT = 64


class StraceMissing(SigtraceError):
    exit_code = 3


def find_strace(path: str = "strace") -> str:
    found = shutil.which(path)
    if found is None:
        raise StraceMissing(f"strace not found ({path}); install it (Debian: apt-get install strace) "
                            f"or use --backend bpf")
    return found


def strace_version(binary: str) -> str:
    """'6.1' from `strace -V`; '' when it cannot be read (the recording still works)."""
    try:
        out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"version\s+(\S+)", out)
    return m.group(1) if m else ""


# A recorder in the PID namespace of the init it traces dies with that init. Holding every traced
# exit_group() this long gives it time to write the exit (strace prints the call's entry at once)
# and whatever came before, so a graceful exit is never taken for a SIGKILL.
EXIT_DELAY_MS = 200


def build_argv(binary: str, pids: list[int], out_fd: int, *, delay_exits: bool = False) -> list[str]:
    """The full strace argv attaching to `pids`, trace lines written to file descriptor out_fd."""
    argv = [binary, "-f", "-ttt", "-yy", "--decode-pids=comm,pidns", "-s", str(STRING_LIMIT),
            "-e", "trace=" + ",".join("?" + s for s in SYSCALLS), "-e", "signal=all",
            "-o", f"/dev/fd/{out_fd}"]
    if delay_exits:
        argv += ["-e", f"inject=exit_group:delay_enter={EXIT_DELAY_MS}ms"]
    for pid in pids:
        argv += ["-p", str(pid)]
    return argv


# ---- permission checks, before strace prints something less clear --------------------


def has_cap_sys_ptrace(status_text: str) -> bool:
    return caps.effective(status_text) is not None and caps.has(caps.CAP_SYS_PTRACE, status_text)


def check_ptrace_permission(proc: str = PROC) -> None:
    """Fail with one line when this process cannot ptrace processes it did not start.

    Yama scope 3 forbids ptrace entirely; scopes 1-2 need CAP_SYS_PTRACE for attaching to
    non-descendants (which every target is). Without Yama, another user's processes need
    the capability too, which strace then reports per pid (`Operation not permitted`).
    CAP_SYS_PTRACE is what `kubectl debug --profile=sysadmin` or `capabilities: add: [SYS_PTRACE]` grants.
    """
    scope = (read_text(f"{proc}/sys/kernel/yama/ptrace_scope") or "").strip()
    if scope == "3":
        raise PermissionProblem("ptrace is disabled on this node (kernel.yama.ptrace_scope=3); "
                                "use --backend bpf, or a node where the scope is 0-2")
    status = read_text(f"{proc}/self/status") or ""
    if scope in ("1", "2") and not has_cap_sys_ptrace(status):
        # without Yama, same-user targets need no capability: strace reports each refused pid
        raise PermissionProblem(f"no CAP_SYS_PTRACE and kernel.yama.ptrace_scope={scope} forbids attaching "
                                f"to running processes; run as root, or give the debug container SYS_PTRACE "
                                f"(kubectl debug --profile=sysadmin)")


def tracer_of(pid: int, proc: str = PROC) -> int:
    """TracerPid of pid (0 when not traced or gone): a second tracer cannot attach."""
    st = read_status(pid, proc)
    return (st.tracer_pid if st else None) or 0


def comm_of(pid: int, proc: str = PROC) -> str:
    return (read_comm(pid, proc) or "").strip()

"""Everything sigtrace reads from /proc, parsed once, here.

Every reader takes the /proc root as `proc` (a node's /proc seen from a debug pod, a test's fake
tree) and is tolerant of the process going away between listing and reading: a gone process (ENOENT,
ESRCH) or one we may not read (EACCES) gives None or nothing, never an exception. Reads are bounded:
tenants choose what their processes are called and how many sockets they hold, so a file is read up
to a limit, and the tables that grow with the node (net/tcp, mountinfo, cgroup.procs) are read one
line at a time.

What the kernel prints, and the traps in it:
  stat     "pid (comm) state ppid ...": comm is raw and may hold spaces, ')' and newlines, so it
           ends at the LAST ')' in the file
  status   "Key:\\tvalue" lines; Name is escaped (a newline in comm is the two characters \\n)
  comm     the raw name and a newline
"""
from __future__ import annotations

import ipaddress
import os
import re
from typing import Iterable, Iterator, NamedTuple

PROC = "/proc"
# status, stat, cgroup, comm and sysctls are a few KiB at most (status ~1.5 KiB; a v1 node's cgroup
# file ~13 lines); more than this is not a file we know how to read
READ_LIMIT = 64 * 1024
# comm is at most 15 bytes (TASK_COMM_LEN) and a newline; a kernel worker's also names its workqueue
# ("kworker/u8:2-events_unbound", a 64-byte buffer)
COMM_LIMIT = 256


# ---- reading, tolerantly and bounded ---------------------------------------------------------
def read_text(path: str, limit: int = READ_LIMIT) -> str | None:
    """Up to `limit` bytes of a file as text (undecodable bytes replaced); None when it cannot be
    read (the process is gone, or we may not look)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit)
    except OSError:
        return None
    return data.decode("utf-8", errors="replace")


def read_lines(path: str) -> Iterator[str]:
    """The lines of a table (net/tcp, mountinfo, cgroup.procs) one at a time, without their newline:
    memory stays flat however many sockets or mounts a node has. Nothing (or the lines read so far)
    when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                yield line.rstrip("\n")
    except OSError:
        return


def _lines(src: str | Iterable[str]) -> Iterable[str]:
    return src.splitlines() if isinstance(src, str) else src


def list_pids(proc: str = PROC) -> list[int]:
    """The pids (thread group leaders) now in `proc`; [] when it cannot be listed."""
    try:
        return [int(e) for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return []


def is_alive(pid: int, proc: str = PROC) -> bool:
    return os.path.isdir(f"{proc}/{pid}")


# ---- /proc/<pid>/status ----------------------------------------------------------------------
def parse_fields(text: str) -> dict[str, str]:
    """'Key:  value' lines (status, smaps_rollup, fdinfo, meminfo) -> {key: value}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.lstrip()
    return out


class Status(NamedTuple):
    """The fields of /proc/<pid>/status sigtrace uses; None (or ()) where absent or unreadable."""
    name: str | None = None           # comm, escaped by the kernel (a newline reads "\\n")
    tgid: int | None = None
    ppid: int | None = None
    nspid: tuple[int, ...] = ()       # the pid in each PID namespace, the node's first, innermost last
    tracer_pid: int | None = None
    cap_eff: int | None = None        # effective capability mask
    sig_cgt: int | None = None        # signals with a handler installed (mask, bit n-1 = signal n)
    sig_ign: int | None = None        # signals ignored
    vm_rss_kb: int | None = None      # resident set size
    vm_hwm_kb: int | None = None      # peak resident set size


def _int(value: str | None, base: int = 10) -> int | None:
    try:
        return int(value.split()[0], base) if value else None
    except (ValueError, IndexError):
        return None


def _ints(value: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split()) if value else ()
    except ValueError:
        return ()


def parse_status(text: str) -> Status:
    f = parse_fields(text)
    return Status(name=f.get("Name"), tgid=_int(f.get("Tgid")), ppid=_int(f.get("PPid")),
                  nspid=_ints(f.get("NSpid")), tracer_pid=_int(f.get("TracerPid")),
                  cap_eff=_int(f.get("CapEff"), 16), sig_cgt=_int(f.get("SigCgt"), 16),
                  sig_ign=_int(f.get("SigIgn"), 16), vm_rss_kb=_int(f.get("VmRSS")), vm_hwm_kb=_int(f.get("VmHWM")))


def read_status(pid: int | str, proc: str = PROC) -> Status | None:
    """The status of pid ("self": ours); None when it is gone."""
    text = read_text(f"{proc}/{pid}/status")
    return parse_status(text) if text is not None else None


# ---- /proc/<pid>/stat ------------------------------------------------------------------------
class Stat(NamedTuple):
    pid: int
    comm: str                 # raw: spaces, ')' and newlines included
    state: str                # R, S, D, Z...
    ppid: int
    pgrp: int
    utime: int                # clock ticks (os.sysconf("SC_CLK_TCK"))
    stime: int
    start_time: int           # clock ticks after boot


def parse_stat(text: str) -> Stat | None:
    """None when the text is not a stat line (cut short, or not from /proc)."""
    open_, close = text.find("("), text.rfind(")")
    if open_ < 0 or close < open_:
        return None
    rest = text[close + 2:].split()        # fields after comm: state is the first (stat's field 3)
    try:
        return Stat(int(text[:open_]), text[open_ + 1:close], rest[0], int(rest[1]), int(rest[2]),
                    int(rest[11]), int(rest[12]), int(rest[19]))
    except (ValueError, IndexError):
        return None


def read_stat(pid: int | str, proc: str = PROC) -> Stat | None:
    text = read_text(f"{proc}/{pid}/stat")
    return parse_stat(text) if text is not None else None


# ---- names, cgroups, namespaces, fds, children ------------------------------------------------
def read_comm(pid: int | str, proc: str = PROC) -> str | None:
    """The process's name exactly (the kernel's trailing newline removed); None when it is gone."""
    text = read_text(f"{proc}/{pid}/comm", COMM_LIMIT)
    return text[:-1] if text and text.endswith("\n") else text


def read_cgroup(pid: int | str, proc: str = PROC) -> str | None:
    """/proc/<pid>/cgroup as text (sigtrace.pods.cgroup.parse_proc_cgroup reads it)."""
    return read_text(f"{proc}/{pid}/cgroup")


def read_ns(pid: int | str, kind: str, proc: str = PROC) -> str | None:
    """The namespace link of pid, e.g. "pid:[4026531836]" (kind: pid, net, mnt...); None when gone."""
    try:
        return os.readlink(f"{proc}/{pid}/ns/{kind}")
    except OSError:
        return None


def ns_id(pid: int | str, kind: str, proc: str = PROC) -> tuple[int, int] | None:
    """(inode, device) of pid's namespace: what the kernel's helpers compare (bpf_get_ns_current_pid_tgid)."""
    try:
        st = os.stat(f"{proc}/{pid}/ns/{kind}")
    except OSError:
        return None
    return st.st_ino, st.st_dev


def fd_links(pid: int, proc: str = PROC, limit: int = 4096) -> list[str] | None:
    """What the first `limit` fds of pid point to ("socket:[123]", paths); [] when it is gone,
    None when we may not look (another user's process, or one holding capabilities we lack)."""
    try:
        names = os.listdir(f"{proc}/{pid}/fd")
    except PermissionError:
        return None
    except OSError:
        return []
    out = []
    for name in names[:limit]:     # a process with huge fd tables: its listeners come first in practice
        try:
            out.append(os.readlink(f"{proc}/{pid}/fd/{name}"))
        except OSError:
            continue
    return out


def children(pid: int | str, proc: str = PROC) -> list[int]:
    """The children of every thread of pid (/proc/<pid>/task/*/children)."""
    try:
        tasks = os.listdir(f"{proc}/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for task in tasks:
        out += [int(c) for c in (read_text(f"{proc}/{pid}/task/{task}/children") or "").split() if c.isdigit()]
    return out


def mountinfo(proc: str = PROC) -> list[str] | None:
    """Our mount table's lines, all of them (a mount missed could be the one that matters: the lab
    never deletes through a bind mount); None when it cannot be read."""
    try:
        with open(f"{proc}/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            return fh.read().splitlines()
    except OSError:
        return None


# ---- /proc/<pid>/net: the network namespace of pid ---------------------------------------------
LISTEN = "0A"


def _hex_addr(text: str) -> bytes:
    """/proc/net/tcp{,6} address: 32-bit words in host (little-endian) order -> 16 bytes (v4 mapped)."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return b"\0" * 10 + b"\xff\xff" + words
    return words


def parse_proc_net_tcp(src: str | Iterable[str], state: str = LISTEN) -> list[tuple[bytes, int, int]]:
    """(addr16, port, inode) of the sockets in `state` of a net/tcp{,6} table (text or lines)."""
    out = []
    lines = iter(_lines(src))
    next(lines, None)               # the header
    for line in lines:
        f = line.split()
        if len(f) < 10 or f[3] != state:
            continue
        addr, port = f[1].split(":")
        out.append((_hex_addr(addr), int(port, 16), int(f[9])))
    return out


def tcp_sockets(pid: int, proc: str = PROC, state: str = LISTEN) -> list[tuple[bytes, int, int]]:
    """(addr16, port, inode) of the IPv4 and IPv6 TCP sockets in `state` of pid's network namespace."""
    return [s for name in ("tcp", "tcp6") for s in parse_proc_net_tcp(read_lines(f"{proc}/{pid}/net/{name}"), state)]


def parse_fib_trie_local(src: str | Iterable[str]) -> set[bytes]:
    """Local IPv4 addresses (v4 mapped) of a network namespace from its net/fib_trie."""
    out: set[bytes] = set()
    last = None
    for line in _lines(src):
        m = re.search(r"\|--\s+(\d+\.\d+\.\d+\.\d+)", line)
        if m:
            last = m.group(1)
        elif "/32 host LOCAL" in line and last:
            out.add(b"\0" * 10 + b"\xff\xff" + ipaddress.IPv4Address(last).packed)
    return out


def parse_if_inet6(src: str | Iterable[str]) -> set[bytes]:
    return {bytes.fromhex(line.split()[0]) for line in _lines(src) if line.strip()}


def netns_local_addrs(pid: int, proc: str = PROC) -> set[bytes]:
    """Local addresses (v4 mapped and v6) of the network namespace of pid."""
    return (parse_fib_trie_local(read_lines(f"{proc}/{pid}/net/fib_trie"))
            | parse_if_inet6(read_lines(f"{proc}/{pid}/net/if_inet6")))

"""Which TCP sockets a process holds and listens on, from /proc (its fds and its netns's
/proc/<pid>/net/tcp{,6}). Used by the recorder (a pod's endpoints) and the lab (readiness)."""
from __future__ import annotations

import os


def _hex_addr(text: str) -> bytes:
    """/proc/net/tcp{,6} address: 32-bit words in host (little-endian) order -> 16 bytes (v4 mapped)."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return b"\0" * 10 + b"\xff\xff" + words
    return words


def parse_proc_net_tcp(text: str, state: str = "0A") -> list[tuple[bytes, int, int]]:
    """(addr16, port, inode) of the sockets in `state` (0A = LISTEN)."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10 or f[3] != state:
            continue
        addr, port = f[1].split(":")
        out.append((_hex_addr(addr), int(port, 16), int(f[9])))
    return out


# /proc/<pid>/fd of processes this one may not ptrace-read (no CAP_SYS_PTRACE against a container's
# processes, which hold capabilities we lack): counted, so the recorder can say what it could not learn
refused_fd_reads = 0


def socket_inodes(pid: int, proc: str = "/proc", limit: int = 4096) -> set[int]:
    global refused_fd_reads
    out: set[int] = set()
    try:
        for i, name in enumerate(os.listdir(f"{proc}/{pid}/fd")):
            if i >= limit:     # a process with huge fd tables: its listeners come first in practice
                break
            try:
                target = os.readlink(f"{proc}/{pid}/fd/{name}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(int(target[8:-1]))
    except PermissionError:
        refused_fd_reads += 1
    except OSError:
        pass
    return out


def read_proc_text(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""

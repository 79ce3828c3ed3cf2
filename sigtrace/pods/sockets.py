"""Which TCP sockets a process holds, from its fds (/proc/<pid>/fd, read by sigtrace.pods.proc). Used by
the recorder (a pod's endpoints) and the lab (readiness)."""
from __future__ import annotations

from .proc import PROC, fd_links

# /proc/<pid>/fd of processes this one may not ptrace-read (no CAP_SYS_PTRACE against a container's
# processes, which hold capabilities we lack): counted, so the recorder can say what it could not learn
refused_fd_reads = 0


def socket_inodes(pid: int, proc: str = PROC, limit: int = 4096) -> set[int]:
    global refused_fd_reads
    links = fd_links(pid, proc, limit)
    if links is None:
        refused_fd_reads += 1
        return set()
    return {int(target[8:-1]) for target in links if target.startswith("socket:[")}

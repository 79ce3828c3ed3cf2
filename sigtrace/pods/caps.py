"""This process's effective capabilities, from /proc/self/status (CapEff). Not the uid: root in a
container has only the capabilities its runtime left it (the DaemonSet adds three)."""
from __future__ import annotations

import os

from .proc import PROC, parse_status, read_text

CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 19, 21, 38, 39


def effective(status_text: str | None = None) -> int | None:
    """The CapEff bit mask, or None when it cannot be read."""
    if status_text is None:
        status_text = read_text(f"{PROC}/self/status")
        if status_text is None:
            return None
    return parse_status(status_text).cap_eff


def has(cap: int, status_text: str | None = None) -> bool:
    eff = effective(status_text)
    if eff is None:
        return os.geteuid() == 0       # no /proc status to read: the uid is all there is
    return bool(eff >> cap & 1)

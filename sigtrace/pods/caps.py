"""This process's effective capabilities, from /proc/self/status (CapEff). Not the uid: root in a
container has only the capabilities its runtime left it (the DaemonSet adds three)."""
from __future__ import annotations

import os
import re

CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 19, 21, 38, 39


def effective(status_text: str | None = None) -> int | None:
    """The CapEff bit mask, or None when it cannot be read."""
    if status_text is None:
        try:
            with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
                status_text = fh.read()
        except OSError:
            return None
    m = re.search(r"^CapEff:\s*([0-9a-fA-F]+)", status_text, re.M)
    return int(m.group(1), 16) if m else None


def has(cap: int, status_text: str | None = None) -> bool:
    eff = effective(status_text)
    if eff is None:
        return os.geteuid() == 0       # no /proc status to read: the uid is all there is
    return bool(eff >> cap & 1)

"""What the numbers were measured on, and how busy the machine was meanwhile."""
from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _first(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text, re.M)
    return m.group(1).strip() if m else None


def busy_processes(limit: int = 6) -> list[str]:
    """The processes using the most CPU right now (ps over their lifetime is useless: sample
    /proc/<pid>/stat twice), to say who else was running."""
    import time

    from .procs import proc_stats

    def ticks() -> dict[int, tuple[int, str]]:
        return {st.pid: (st.utime + st.stime, st.comm) for st in proc_stats()}
    a = ticks()
    time.sleep(1.0)
    b = ticks()
    hz = os.sysconf("SC_CLK_TCK")
    use = sorted(((b[p][0] - a[p][0]) / hz, b[p][1], p) for p in b if p in a and p != os.getpid())
    return [f"{comm} (pid {pid}) {100 * cpu:.0f}%" for cpu, comm, pid in reversed(use[-limit:]) if cpu > 0.02]


def describe() -> dict[str, Any]:
    cpu = _run(["lscpu"])
    osr = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    mem_kb = int(_first(r"^MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()) or 0)
    import pandas
    import pyarrow
    return {
        "cpu": _first(r"^Model name:\s*(.+)$", cpu), "cpus": os.cpu_count(),
        "hypervisor": _first(r"^Hypervisor vendor:\s*(.+)$", cpu),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(), "os": _first(r'^PRETTY_NAME="?([^"\n]+)', osr),
        "python": platform.python_version(), "pandas": pandas.__version__, "pyarrow": pyarrow.__version__,
        "bcc": _first(r"^Version:\s*(.+)$", _run(["dpkg", "-s", "python3-bpfcc"])),
        "nginx": _first(r"nginx/(\S+)", _run(["nginx", "-v"])),
        "wrk": _first(r"wrk (\S+)", _run(["wrk", "-v"])) or "debian",
        "strace": _first(r"version (\S+)", _run(["strace", "-V"])),
        "runc": _first(r"runc version (\S+)", _run(["runc", "--version"])),
    }


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]

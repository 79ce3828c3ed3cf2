"""Where `sigtrace report` spends its time: py-spy (PyPI) samples the report of a synthetic
recording; the summary groups samples by sigtrace function (inclusive) and by the library call a
sigtrace frame is waiting in. Optional: skipped with a note when py-spy is not installed."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from . import procs


def py_spy() -> str | None:
    return shutil.which("py-spy") or (str(Path(sys.executable).parent / "py-spy")
                                      if (Path(sys.executable).parent / "py-spy").exists() else None)


def summarize(raw: str, top: int = 12) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks -> inclusive share per sigtrace function and the library
    calls sigtrace frames wait in."""
    total = 0
    incl: Counter = Counter()
    calls: Counter = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        for f in set(frames):
            if "sigtrace/" in f:
                incl[f] += int(n)
        last = max((i for i, f in enumerate(frames) if "sigtrace/" in f), default=None)
        if last is not None and last + 1 < len(frames):
            callee = re.sub(r" \(.*\)$", "", frames[last + 1])
            calls[f"{re.sub(r' [(].*', '', frames[last])} -> {callee}"] += int(n)
    pct = (lambda c: [(k, round(100 * v / total, 1)) for k, v in c.most_common(top)]) if total else (lambda c: [])
    return {"samples": total, "inclusive": pct(incl), "waiting_in": pct(calls)}


def profile_report(directory: Path, timeout: float = 300) -> dict[str, Any]:
    spy = py_spy()
    if spy is None:
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "prof.txt"
        # --jobs 1: every part's work in the one process py-spy samples; the report to a file, as
        # report writes only regular files
        cmd = [spy, "record", "-f", "raw", "-r", "100", "-o", str(out), "--", *procs.SIGTRACE,
               "report", str(directory), "--format", "json", "--jobs", "1", "-o", str(Path(tmp) / "report.json")]
        try:
            subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=procs.REPO)
        except subprocess.TimeoutExpired:
            return {"skipped": f"py-spy run over {timeout:.0f} s"}
        if not out.exists():
            return {"skipped": "py-spy wrote no profile"}
        return summarize(out.read_text())

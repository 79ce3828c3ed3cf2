"""Startup of `sigtrace record` (spawn -> ready, i.e. meta.json written after compile + attach)
and its memory: peak RSS (VmHWM, which includes bcc's in-process clang/LLVM compile) and the
resident size once recording (VmRSS)."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from . import procs
from .stats import median


def measure(runs: int = 3, log: Callable[[str], None] = print) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="sigtrace-bench-start-"))
    try:
        for i in range(runs):
            tr = procs.start_record(tmp / f"s{i}", [], "startup")
            time.sleep(2.0)                       # steady state: a couple of scans and flushes
            rss = procs.vm_rss_kb(tr.proc.pid)
            info = procs.finish_record(tr)
            r = {"ready_s": round(tr.ready_s or 0, 3), "startup_s": info["startup_s"], "rss_kb": rss,
                 "peak_rss_kb": info["peak_rss_kb"],
                 "pss_kb": info["pss_kb"], "anon_kb": info["anon_kb"], "live_reports": info["live_reports"], "lost_events": info["lost_events"]}
            out.append(r)
            log(f"startup: ready in {r['ready_s']:.2f}s (compile+attach {r['startup_s']}s), "
                f"RSS {rss} KiB, peak {r['peak_rss_kb']} KiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"runs": out,
            "median_ready_s": median([r["ready_s"] for r in out]),
            "median_startup_s": median([r["startup_s"] for r in out]),
            "median_rss_kb": median([r["rss_kb"] for r in out]),
            "median_peak_rss_kb": median([r["peak_rss_kb"] for r in out]),
            "median_pss_kb": median([r["pss_kb"] for r in out]),
            "median_anon_kb": median([r["anon_kb"] for r in out])}

"""Capacity: the highest event rate the bcc recorder takes with zero lost events, and past it.

A generator sends SIGURG to an nginx worker of a running pod at a fixed rate (one
signal_generate event per kill, nothing else happens); the recorder runs with its defaults.
Per step: events sent, recorded (counted in events.jsonl), lost (meta.json), and whether
sent == recorded + lost (the recorder's accounting: a loss it did not count would show here).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from . import procs
from .overhead import bench_pod

DEFAULT_RATES = (5_000, 10_000, 15_000, 20_000, 30_000, 40_000, 80_000, 160_000)


def count_signals(out_dir: Path, sender: int, target: int) -> int:
    """signal_generate lines from the generator to the target in every segment of the recording
    (the recorder also sees the node's other pods)."""
    from sigtrace.events.segments import list_segments
    pat = re.compile(rb'"kind":"signal_generate","pid":%d,' % sender)
    tgt = b'"target_pid":%d,' % target
    n = 0
    for _, path in list_segments(out_dir):
        with open(path, "rb") as fh:
            for line in fh:
                if pat.search(line) and tgt in line and b'"sig":"SIGURG"' in line:
                    n += 1
    return n


def one_step(pod: Any, tmp: Path, rate: int, seconds: float) -> dict[str, Any]:
    out = tmp / f"cap-{rate}"
    target = next(p for p in pod.pids("nginx") if p != pod.pid1("nginx"))   # a worker
    tracer = procs.start_record(out, [], f"capacity-{rate}")
    time.sleep(1.2)                      # the pod scan has put the worker in the kernel's map
    cpu0 = procs.group_cpu_s(tracer.proc.pid)
    gen = subprocess.Popen([sys.executable, "-m", "bench.siggen", str(target), str(rate), str(seconds)],
                           stdout=subprocess.PIPE, text=True, cwd=procs.REPO)
    sent = json.loads(gen.communicate(timeout=seconds + 60)[0])
    time.sleep(1.5)                      # let the recorder drain its ring buffer before stopping
    # the recorder's own CPU for the step: decoding, encoding and writing (one write(2) per signal
    # event, which the recorder makes durable at once); idle polling adds ~nothing
    cpu = procs.group_cpu_s(tracer.proc.pid) - cpu0
    info = procs.finish_record(tracer)
    recorded = count_signals(out, gen.pid, target)
    lost_sig = int((info.get("lost_by_probe") or {}).get("signal:signal_generate", 0))
    shutil.rmtree(out, ignore_errors=True)
    return {"rate_asked": rate, "rate_sent": round(sent["rate"]), "sent": sent["sent"], "seconds": seconds,
            "recorded": recorded, "lost_events": info["lost_events"], "lost_signal_generate": lost_sig,
            "unaccounted": sent["sent"] - recorded - lost_sig, "recorder_rc": info["rc"],
            "peak_rss_kb": info["peak_rss_kb"], "recorded_rate": round(recorded / seconds),
            "recorder_cpu_s": round(cpu, 2), "cpu_us_per_event": round(cpu / recorded * 1e6, 2) if recorded else None}


def measure(rates: tuple[int, ...] = DEFAULT_RATES, seconds: float = 5.0,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="sigtrace-bench-cap-"))
    try:
        with bench_pod(tmp) as pod:
            lossy = 0
            for rate in rates:
                try:
                    s = one_step(pod, tmp, rate, seconds)
                except Exception as exc:
                    s = {"rate_asked": rate, "error": str(exc)[:300]}
                steps.append(s)
                log(f"capacity: {rate:>7}/s asked, {s.get('rate_sent', 0):>7}/s sent, recorded {s.get('recorded')}, "
                    f"lost {s.get('lost_events')}, unaccounted {s.get('unaccounted')}")
                lossy = lossy + 1 if s.get("lost_events") else 0
                # two lossy steps in a row show the slope past the limit; more only burn time
                if lossy >= 2 or s.get("rate_sent", rate) < 0.8 * rate:
                    break
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    clean = [s for s in steps if "error" not in s and not s["lost_events"] and s["unaccounted"] == 0]  # exact: every event sent is in the file
    return {"config": {"seconds": seconds, "rates": list(rates), "signal": "SIGURG to an nginx worker"},
            "steps": steps,
            "max_lossless_rate": max((s["rate_sent"] for s in clean), default=None)}

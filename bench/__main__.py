"""`make bench` = `python -m bench`: run the parts, write docs/benchmarks.json and docs/benchmarks.md.

Configuration by environment (defaults fit ~15 minutes on 2 cores):
  BENCH_PARTS=overhead,capacity,startup,analysis,soak
  BENCH_SOAK_SECONDS=600  BENCH_SOAK_PODS=3  BENCH_SOAK_RATE=200 (connections/s per running pod)
  BENCH_SOAK_STOP_EVERY=60  BENCH_SOAK_MAX_DISK=1GiB
  BENCH_ROUNDS=5  BENCH_WRK_SECONDS=5  BENCH_WRK_CONNECTIONS=32
  BENCH_CAPACITY_RATES=5000,10000,...  BENCH_CAPACITY_SECONDS=5
  BENCH_STARTUP_RUNS=3
  BENCH_EVENTS=1000000,10000000      read + export sizes
  BENCH_REPORT_EVENTS=20000,100000,1000000,10000000   report + analyze sizes (skipped when
                                     projected past the stage timeout from the smaller size)
  BENCH_STAGE_TIMEOUT=300            seconds per analysis stage
  BENCH_CACHE=/var/tmp/sigtrace-bench (synthetic recordings, reused)
  BENCH_OUT=docs
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from . import capacity, machine, overhead, soak, startup
from . import analysis as analysis_mod
from .report import write_docs

REPO = Path(__file__).resolve().parent.parent


def _ints(name: str, default: str) -> list[int]:
    return [int(float(x)) for x in os.environ.get(name, default).split(",") if x.strip()]


def config() -> dict:
    return {
        "parts": os.environ.get("BENCH_PARTS", "overhead,capacity,startup,analysis,soak").split(","),
        "soak_seconds": float(os.environ.get("BENCH_SOAK_SECONDS", 600)),
        "soak_pods": int(os.environ.get("BENCH_SOAK_PODS", 3)),
        "soak_rate": float(os.environ.get("BENCH_SOAK_RATE", 200)),
        "soak_stop_every": float(os.environ.get("BENCH_SOAK_STOP_EVERY", 60)),
        "soak_max_disk": os.environ.get("BENCH_SOAK_MAX_DISK", "1GiB"),
        "rounds": int(os.environ.get("BENCH_ROUNDS", 5)),
        "wrk_seconds": float(os.environ.get("BENCH_WRK_SECONDS", 5)),
        "wrk_connections": int(os.environ.get("BENCH_WRK_CONNECTIONS", 32)),
        "capacity_rates": _ints("BENCH_CAPACITY_RATES", ",".join(map(str, capacity.DEFAULT_RATES))),
        "capacity_seconds": float(os.environ.get("BENCH_CAPACITY_SECONDS", 5)),
        "startup_runs": int(os.environ.get("BENCH_STARTUP_RUNS", 3)),
        "events": _ints("BENCH_EVENTS", "1000000,10000000"),
        "report_events": _ints("BENCH_REPORT_EVENTS", "20000,100000,1000000,10000000"),
        "stage_timeout": float(os.environ.get("BENCH_STAGE_TIMEOUT", 300)),
        "cache": os.environ.get("BENCH_CACHE", "/var/tmp/sigtrace-bench"),
        "out": os.environ.get("BENCH_OUT", str(REPO / "docs")),
    }


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


PARTS = ("overhead", "capacity", "startup", "analysis", "soak")


def keep_previous(results: dict, path: Path, parts: list[str]) -> None:
    """A run of some parts (BENCH_PARTS=soak) keeps the other parts' last figures in the docs,
    marked with the run they come from, instead of wiping them."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    for part in PARTS:
        if part not in parts and part in previous:
            results[part] = previous[part]
            # a part the previous run had kept itself comes from an earlier run still
            since = (previous.get("kept_from_previous") or {}).get(part, previous.get("started"))
            results.setdefault("kept_from_previous", {})[part] = since


def main() -> int:
    if os.geteuid() != 0:
        print("bench: needs root (runc, BPF, ip netns)", file=sys.stderr)
        return 77
    # started in the background by a non-interactive shell, SIGINT is ignored and children (bcc's
    # tcpstates) inherit that: they could only be SIGKILLed. Restore the default for everyone.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cfg = config()
    started = time.time()
    results: dict = {"config": cfg, "machine": machine.describe(), "started": started,
                     "loadavg_start": machine.loadavg(), "busy_at_start": machine.busy_processes()}
    log(f"bench: {cfg['parts']} on {results['machine']['cpu']} x{results['machine']['cpus']}, "
        f"load {results['loadavg_start']}")
    parts = cfg["parts"]
    if "overhead" in parts:
        results["overhead"] = overhead.measure(cfg["rounds"], cfg["wrk_seconds"], 2, cfg["wrk_connections"], log=log)
    if "capacity" in parts:
        results["capacity"] = capacity.measure(tuple(cfg["capacity_rates"]), cfg["capacity_seconds"], log=log)
    if "startup" in parts:
        results["startup"] = startup.measure(cfg["startup_runs"], log=log)
    if "analysis" in parts:
        results["analysis"] = analysis_mod.measure(cfg["events"], cfg["report_events"], Path(cfg["cache"]),
                                                   cfg["stage_timeout"], log=log)
    if "soak" in parts:
        results["soak"] = soak.measure(cfg["soak_seconds"], cfg["soak_pods"], cfg["soak_rate"], 1.0,
                                       cfg["soak_stop_every"], cfg["soak_max_disk"], Path(cfg["out"]), log=log)
    results["duration_s"] = round(time.time() - started)
    results["loadavg_end"] = machine.loadavg()
    results["busy_at_end"] = machine.busy_processes()
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    keep_previous(results, out / "benchmarks.json", parts)
    (out / "benchmarks.json").write_text(json.dumps(results, indent=1, sort_keys=True, default=str) + "\n")
    (out / "benchmarks.md").write_text(write_docs(results))
    log(f"bench: wrote {out / 'benchmarks.md'} and benchmarks.json in {results['duration_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

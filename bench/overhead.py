"""Overhead: requests/s of a real nginx pod under connection churn, untraced vs each tracer.

The pod is a LocalPod (runc, kubelet-style cgroup, own netns) with nginx (2 workers) and an
idle php-fpm; wrk runs inside the pod's netns on loopback with `Connection: close`, so every
request is a TCP connection: the worst case for a tracer of TCP state changes. Modes run in
interleaved rounds (A B C ... A B C ...); each traced run starts its tracer fresh, waits until
it is ready, runs wrk, stops the tracer and collects its lost-event count.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from sigtrace.lab.netns import in_netns

from . import procs
from .stats import interleaved, median, paired_ratios, ratio, spread

STATIC_PATH = "/static"
MODES = ("untraced", "bpf", "bpf-armed", "strace", "tcpstates")
MODE_DOC = {
    "untraced": "no tracer",
    "bpf": "`sigtrace record` (bcc), pod not stopping: TCP transitions counted in the kernel, not streamed",
    "bpf-armed": "`sigtrace record --tcp-detail always`: TCP detail as for a stopping pod (routine closes counted in "
                 "the kernel, resets and a sample of closes streamed)",
    "strace": "`sigtrace record --backend strace --pid <nginx master>` (ptrace of master and workers)",
    "tcpstates": "bcc `tcpstates-bpfcc` (every TCP state change of the node to user space, printed)",
}


def nginx_conf(workers: int) -> str:
    """The lab's nginx.conf plus a static location: the request costs nginx nothing but the TCP
    connection, so the tracer's share is as large as it gets."""
    from sigtrace.lab import configs
    conf = configs.nginx_conf(workers=workers)
    return conf.replace("        location / {",
                        f'        location = {STATIC_PATH} {{ return 200 "ok\\n"; }}\n        location / {{', 1)


@contextmanager
def bench_pod(workdir: Path, workers: int = 2) -> Iterator[Any]:
    from sigtrace.lab import configs
    from sigtrace.lab.pod import LocalPod, PodSpec
    app = configs.write_app_dir(workdir / "app", nginx=nginx_conf(workers), fpm=configs.fpm_conf(children=2))
    spec = PodSpec(name="bench", layout="cgroupfs", grace_period_s=5, app_dir=app.root,
                   containers=[configs.nginx_container(app), configs.fpm_container(app)])
    with LocalPod(spec) as pod:
        yield pod


def run_wrk(netns: str, seconds: float, threads: int, connections: int) -> dict[str, Any]:
    cmd = in_netns(netns, ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s",
           "-H", "Connection: close", f"http://127.0.0.1:8080{STATIC_PATH}"])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    return parse_wrk(out.stdout) | {"rc": out.returncode}


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/sec, request count and socket errors from wrk's summary."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    reqs = re.search(r"(\d+) requests in", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": float(rps.group(1)) if rps else None, "requests": int(reqs.group(1)) if reqs else None,
            "socket_errors": sum(map(int, errors.groups())) if errors else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def one_run(mode: str, pod: Any, tmp: Path, seconds: float, threads: int, conns: int) -> dict[str, Any]:
    out = tmp / f"{mode}-{time.monotonic_ns()}"
    tracer = None
    if mode in ("bpf", "bpf-armed"):
        # armed: TCP detail as for a stopping pod, without stopping it
        tracer = procs.start_record(out, ["--tcp-detail", "always"] if mode == "bpf-armed" else [], mode)
        time.sleep(1.2)                        # the recorder arms within its 1 s scan
    elif mode == "strace":
        tracer = procs.start_record(out, ["--backend", "strace", "--pid", str(pod.pid1("nginx"))], mode)
        time.sleep(1.2)
    elif mode == "tcpstates":
        tracer = procs.start_tcpstates(out)
        time.sleep(1.2)
    else:
        time.sleep(1.2)
    load_before = loadavg()
    cpu0 = procs.group_cpu_s(tracer.proc.pid) if tracer else None
    bpf_mode = mode in ("bpf", "bpf-armed", "tcpstates")
    with procs.bpf_stats_enabled():
        b0 = procs.bpf_prog_stats(tracer.proc.pid) if bpf_mode and tracer else None
        result = run_wrk(pod.netns, seconds, threads, conns)
        b1 = procs.bpf_prog_stats(tracer.proc.pid) if bpf_mode and tracer else None
    result["loadavg_before"] = load_before
    if b0 is not None and b1 is not None:
        ns, runs = b1[0] - b0[0], b1[1] - b0[1]
        result["bpf_ns"], result["bpf_runs"] = ns, runs
        if result.get("requests"):
            result["bpf_us_per_request"] = round(ns / 1000 / result["requests"], 2)
        if runs:
            result["bpf_ns_per_run"] = round(ns / runs)
    if tracer is not None and cpu0 is not None:
        used = procs.group_cpu_s(tracer.proc.pid) - cpu0
        result["tracer_cpu_s"] = round(used, 3)
        if result.get("requests"):
            result["tracer_cpu_us_per_request"] = round(1e6 * used / result["requests"], 1)
    if tracer is not None:
        info = procs.finish_tcpstates(tracer) if mode == "tcpstates" else procs.finish_record(tracer)
        result["tracer"] = info
        if mode != "tcpstates":
            result["tracer"]["events_by_kind"] = _kinds(out)
    shutil.rmtree(out, ignore_errors=True)
    return {"mode": mode, **result}


def _kinds(out_dir: Path) -> dict[str, int]:
    """Events per kind in every segment of the recording."""
    from sigtrace.events.segments import list_segments
    counts: dict[str, int] = {}
    for _, path in list_segments(out_dir):
        with open(path, "rb") as fh:
            for line in fh:
                m = re.search(rb'"kind":"([a-z_]+)"', line)
                if m:
                    k = m.group(1).decode()
                    counts[k] = counts.get(k, 0) + 1
    return counts


def measure(rounds: int = 5, seconds: float = 5.0, threads: int = 2, conns: int = 32,
            modes: tuple[str, ...] = MODES, log: Callable[[str], None] = print) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="sigtrace-bench-"))
    try:
        with bench_pod(tmp) as pod:
            log(f"overhead: pod {pod.uid[:8]} netns {pod.netns}; warm-up")
            run_wrk(pod.netns, 2, threads, conns)
            for rnd, mode in interleaved(modes, rounds):
                try:
                    r = one_run(mode, pod, tmp, seconds, threads, conns)
                except Exception as exc:      # a tracer that fails is a result too, not a crash
                    r = {"mode": mode, "rps": None, "error": str(exc)[:300]}
                r["round"] = rnd
                runs.append(r)
                lost = r.get("tracer", {}).get("lost_events")
                log(f"overhead: round {rnd} {mode:10s} {r.get('rps') or 0:9.0f} req/s"
                    + (f"  lost {lost}" if lost is not None else "") + (f"  ERROR {r['error']}" if "error" in r else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"config": {"rounds": rounds, "seconds": seconds, "wrk_threads": threads, "wrk_connections": conns,
                       "nginx_workers": 2, "url": f"http://127.0.0.1:8080{STATIC_PATH}", "modes": MODE_DOC},
            "runs": runs, "summary": summarize(runs, modes)}


def summarize(runs: list[dict[str, Any]], modes: tuple[str, ...]) -> dict[str, Any]:
    """Per mode: median req/s, ratio of medians, median of per-round ratios, spread, lost events."""
    by_mode = {m: [r for r in sorted(runs, key=lambda r: r["round"]) if r["mode"] == m] for m in modes}
    base_by_round = {r["round"]: r.get("rps") for r in by_mode.get("untraced", [])}
    base_med = median([r.get("rps") for r in by_mode.get("untraced", [])])
    out = {}
    for m, rs in by_mode.items():
        rps = [r.get("rps") for r in rs]
        lost = [r.get("tracer", {}).get("lost_events") for r in rs if "tracer" in r]
        events = [r.get("tracer", {}).get("events") for r in rs if "tracer" in r]
        med = median(rps)
        out[m] = {
            "runs": len(rs), "rps": rps, "median_rps": med, "ratio_of_medians": ratio(med, base_med),
            "median_paired_ratio": median(paired_ratios(rps, [base_by_round.get(r["round"]) for r in rs])),
            "spread": spread(rps), "lost_events": lost, "runs_with_loss": sum(1 for x in lost if x),
            "events": events, "errors": [r["error"] for r in rs if "error" in r],
            "peak_rss_kb": median([r.get("tracer", {}).get("peak_rss_kb") for r in rs if "tracer" in r]),
            "bpf_us_per_request": median([r.get("bpf_us_per_request") for r in rs
                                          if r.get("bpf_us_per_request") is not None]),
            "bpf_ns_per_run": median([r.get("bpf_ns_per_run") for r in rs if r.get("bpf_ns_per_run") is not None]),
            "tracer_cpu_us_per_request": median([r.get("tracer_cpu_us_per_request") for r in rs
                                                 if r.get("tracer_cpu_us_per_request") is not None]),
        }
    return out

"""Soak: the agent left on a busy node, as the DaemonSet is.

`sigtrace agent --no-api` records the node while, for BENCH_SOAK_SECONDS (600 by default):
- BENCH_SOAK_PODS running pods (LocalPod: nginx + php-fpm, kubelet-style cgroups, own netns) take
  connection churn (bench.churn: `Connection: close` requests at BENCH_SOAK_RATE per second each)
  and an exec into every container every second (kubelet exec probes; sigtrace.lab.scenario.ExecProber);
  none of them stops;
- every BENCH_SOAK_STOP_EVERY seconds a lab pod (exec probes too) is stopped the way kubelet does,
  cycling through scenarios whose verdicts are known (STOPS).
Sampled every 5 s: the agent's RSS, its output's size on disk, events and lost events (meta.json),
its CPU. Afterwards: each stop's live report (did it name the right cause?), and how many TCP events
were streamed for the running pods against the connections they took.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from sigtrace.lab.netns import in_netns

from . import procs
from .overhead import nginx_conf

SAMPLE_S = 5.0
FPM_GRACEFUL = dict(stop_signal={"nginx": "SIGQUIT", "php-fpm": "SIGQUIT"}, prestop={"php-fpm": "sleep 2"},
                    process_control_timeout_s=10)
# name, Scenario keyword arguments, the verdicts its report must name (none: a clean shutdown)
STOPS: list[tuple[str, dict[str, Any], set[str]]] = [
    ("nginx-fast-shutdown", dict(workers=3, stop_signal={"nginx": "SIGTERM", "php-fpm": "SIGQUIT"},
                                 prestop={"php-fpm": "sleep 2"}, process_control_timeout_s=10, lb_delay_s=0,
                                 request_ms=1500), {"nginx-fast-shutdown"}),
    ("killed-after-grace", dict(workers=2, grace_s=2, request_ms=5000, lb_delay_s=0,
                                stop_signal={"nginx": "SIGQUIT", "php-fpm": "SIGQUIT"}, process_control_timeout_s=30),
     {"killed-after-grace"}),
    ("prestop-quit-superseded", dict(workers=2, prestop={"nginx": "nginx -s quit", "php-fpm": "sleep 2"},
                                     stop_signal={"nginx": "SIGTERM", "php-fpm": "SIGQUIT"},
                                     process_control_timeout_s=10, lb_delay_s=0, request_ms=3000),
     {"prestop-quit-superseded"}),
    ("clean", dict(workers=2, prestop={"nginx": "sleep 2", "php-fpm": "sleep 2"}, lb_delay_s=1, request_ms=500,
                   **{k: v for k, v in FPM_GRACEFUL.items() if k != "prestop"}), set()),
]


def _agent_supports(option: str) -> bool:
    out = subprocess.run(procs.SIGTRACE + ["agent", "--help"], capture_output=True, text=True, cwd=procs.REPO)
    return option in out.stdout


def _disk_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _metas(root: Path) -> list[dict[str, Any]]:
    out = []
    for meta in sorted(root.glob("*/meta.json")):
        try:
            out.append(json.loads(meta.read_text()))
        except (OSError, ValueError):
            pass
    return out


class Sampler(threading.Thread):
    def __init__(self, pid: int, root: Path, t0: float):
        super().__init__(name="soak-sampler", daemon=True)
        self.pid, self.root, self.t0 = pid, root, t0
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def sample(self) -> None:
        metas = _metas(self.root)
        self.samples.append({
            "t": round(time.monotonic() - self.t0, 1),
            "rss_kb": procs.vm_rss_kb(self.pid), "hwm_kb": procs.vm_hwm_kb(self.pid),
            "disk_bytes": _disk_bytes(self.root),
            "events": sum(int(m.get("events") or 0) for m in metas),
            "lost": sum(int(m.get("lost_events") or 0) for m in metas),
            "cpu_s": procs.group_cpu_s(self.pid),
        })

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            self.sample()


def _running_pod(stack: ExitStack, tmp: Path, i: int, seconds: float, rate: float, probe_s: float) -> dict:
    from sigtrace.lab import configs
    from sigtrace.lab.pod import LocalPod, PodSpec
    from sigtrace.lab.scenario import ExecProber
    app = configs.write_app_dir(tmp / f"app-{i}", nginx=nginx_conf(2), fpm=configs.fpm_conf(children=2))
    spec = PodSpec(name=f"running-{i}", layout="systemd" if i % 2 else "cgroupfs", grace_period_s=5,
                   app_dir=app.root, containers=[configs.nginx_container(app), configs.fpm_container(app)])
    pod = stack.enter_context(LocalPod(spec))
    prober = stack.enter_context(ExecProber(pod, probe_s))
    churner = subprocess.Popen(in_netns(pod.netns, [sys.executable, "-m", "bench.churn", "8080", str(rate),
                                                    str(seconds)]),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=procs.REPO)
    return {"pod": pod, "prober": prober, "churner": churner, "uid": pod.uid}


def _stop_one(n: int, probe_s: float) -> dict[str, Any]:
    from sigtrace.lab.scenario import Scenario, run_scenario
    name, kw, expect = STOPS[n % len(STOPS)]
    started = time.monotonic()
    try:
        r = run_scenario(Scenario(name=f"soak-{n}", exec_probe_s=probe_s, **kw))
    except Exception as exc:                                   # a lab failure is a result, not a crash
        return {"scenario": name, "expected": sorted(expect), "error": str(exc)[:300]}
    return {"scenario": name, "expected": sorted(expect), "pod_uid": r.pod_uid, "client": r.load.counts(),
            "seconds": round(time.monotonic() - started, 1)}


def _judge(stops: list[dict[str, Any]], root: Path) -> None:
    """Each stop's live report, as the agent wrote it: the verdicts it names."""
    for s in stops:
        if "pod_uid" not in s:
            continue
        found = sorted(root.glob(f"*/reports/{s['pod_uid']}.json"))
        if not found:
            s.update(fired=None, right=False, why="no live report")
            continue
        rep = json.loads(found[-1].read_text())
        pods = [p for p in rep.get("pods", []) if p.get("pod_uid") == s["pod_uid"]]
        fired = sorted({v["id"] for p in pods for v in p["verdicts"] if v.get("status") != "undecidable"})
        expect = set(s["expected"])
        s.update(fired=fired, right=expect <= set(fired) if expect else not fired)


def _streamed_for(root: Path, uids: set[str]) -> int:
    """TCP events in the recording attributed to these pods."""
    from sigtrace.events.reader import read_recording
    from sigtrace.events.schema import TCP_KINDS
    n = 0
    for meta in sorted(root.glob("*/meta.json")):
        try:
            ev = read_recording(meta.parent).events
        except Exception:                                      # an empty run directory
            continue
        n += int((ev["kind"].isin(TCP_KINDS) & ev["pod_uid"].astype(object).isin(uids)).sum())
    return n


def measure(seconds: float = 600.0, pods: int = 3, rate: float = 200.0, probe_s: float = 1.0,
            stop_every_s: float = 60.0, max_disk: str = "1GiB", out_dir: Path | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sigtrace-bench-soak-"))
    root = tmp / "agent"
    ready = tmp / "ready"
    args = procs.SIGTRACE + ["agent", "--no-api", "--node", "soak", "--output", str(root),
                             "--ready-file", str(ready)]
    if _agent_supports("--max-disk"):
        args += ["--max-disk", max_disk]
    log_file = open(tmp / "agent.log", "wb")
    agent = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, cwd=procs.REPO, start_new_session=True)
    result: dict[str, Any] = {"config": {"seconds": seconds, "pods": pods, "rate_per_pod": rate, "probe_s": probe_s,
                                         "stop_every_s": stop_every_s, "max_disk": max_disk if "--max-disk" in args
                                         else None, "agent": " ".join(args[2:])}}
    try:
        deadline = time.monotonic() + 90
        while not ready.exists():
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent did not start: {(tmp / 'agent.log').read_text()[-500:]}")
            time.sleep(0.1)
        t0 = time.monotonic()
        sampler = Sampler(agent.pid, root, t0)
        sampler.sample()
        sampler.start()
        stops: list[dict[str, Any]] = []
        with ExitStack() as stack:
            running = [_running_pod(stack, tmp, i, seconds, rate, probe_s) for i in range(pods)]
            log(f"soak: agent pid {agent.pid}, {pods} running pods under churn and exec probes, a stop every "
                f"{stop_every_s:g} s for {seconds:g} s")
            n = 0
            while time.monotonic() - t0 < seconds - stop_every_s / 2:
                slot = t0 + (n + 0.5) * stop_every_s
                time.sleep(max(0.0, slot - time.monotonic()))
                s = _stop_one(n, probe_s)
                s["t"] = round(time.monotonic() - t0, 1)
                stops.append(s)
                log(f"soak: stop {n} ({s['scenario']}) at {s['t']} s: {s.get('client') or s.get('error')}")
                n += 1
            time.sleep(max(0.0, t0 + seconds - time.monotonic()))
            churn = [json.loads(r["churner"].communicate(timeout=120)[0] or "{}") for r in running]
            probes = sum(r["prober"].runs for r in running)
            uids = {r["uid"] for r in running}
        sampler.stop.set()
        sampler.join(10)
        sampler.sample()
        agent.send_signal(signal.SIGTERM)
        agent_rc = agent.wait(60)
        _judge(stops, root)
        connections = sum(c.get("connections", 0) for c in churn)
        streamed = _streamed_for(root, uids)
        result.update(samples=sampler.samples, stops=stops, agent_rc=agent_rc, probes=probes, churn=churn,
                      running_connections=connections, running_streamed=streamed,
                      final_meta=[{k: m.get(k) for k in ("events", "lost_events", "lost_by_probe", "forgotten",
                                                         "kernel_filtered", "pruned", "end")}
                                  for m in _metas(root)])
        result["summary"] = summarize(result)
        if out_dir is not None:
            plot(result, out_dir / "soak.png")
        return result
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        log_file.close()
        shutil.rmtree(tmp, ignore_errors=True)


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    samples = [s for s in r["samples"] if s.get("rss_kb")]
    # growth is measured once the agent is whole: after start-up (bcc, first scans) and after its first
    # live report, which loads pandas once (~80 MB, a step, not growth)
    settled = 30 + min((s["t"] for s in r["stops"] if "t" in s), default=0)
    warm = [s for s in samples if s["t"] >= settled] or samples
    dur = (samples[-1]["t"] - samples[0]["t"]) if len(samples) > 1 else None
    judged = [s for s in r["stops"] if "right" in s]
    return {
        "peak_rss_mb": round(max(s["hwm_kb"] or 0 for s in samples) / 1024, 1) if samples else None,
        "rss_growth_mb": round((warm[-1]["rss_kb"] - warm[0]["rss_kb"]) / 1024, 1) if warm else None,
        "disk_max_mb": round(max(s["disk_bytes"] for s in r["samples"]) / 2**20, 1) if r["samples"] else None,
        "events_per_s": round((samples[-1]["events"] - samples[0]["events"]) / dur, 1) if dur else None,
        "lost": samples[-1]["lost"] if samples else None,
        "cpu_per_s": round((samples[-1]["cpu_s"] - samples[0]["cpu_s"]) / dur, 3) if dur else None,
        "stops": len(r["stops"]), "stops_right": sum(1 for s in judged if s["right"]),
        "streamed_share": round(r["running_streamed"] / r["running_connections"], 5)
        if r["running_connections"] else None,
    }


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    samples = r["samples"]
    t = [s["t"] for s in samples]
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    ax.plot(t, [(s["rss_kb"] or 0) / 1024 for s in samples], label="agent RSS (MB)", color="tab:blue")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MB)")
    ax2 = ax.twinx()
    ax2.plot(t, [s["disk_bytes"] / 2**20 for s in samples], label="output on disk (MB)", color="tab:orange")
    ax2.set_ylabel("disk (MB)")
    for s in r["stops"]:
        ax.axvline(s["t"], color="tab:green" if s.get("right") else "tab:red", alpha=0.3, lw=1)
    ax.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    lines = ax.get_lines()[:1] + ax2.get_lines()[:1]
    ax.legend(lines, [l.get_label() for l in lines], loc="upper left", fontsize=8)
    c = r["config"]
    ax.set_title(f"soak: {c['pods']} running pods with exec probes and churn; a stop every {c['stop_every_s']:g} s "
                 "(green: right cause)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)

"""Starting and stopping the things measured: recorders, tcpstates, wrk, timed commands.

Every process is ended by its own pid (SIGINT, then SIGKILL after a bound), never by name.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from sigtrace.pods.proc import PROC, Stat, list_pids, parse_fields, read_stat, read_status, read_text

REPO = Path(__file__).resolve().parent.parent
SIGTRACE = [sys.executable, "-m", "sigtrace"]
TCPSTATES = "/usr/sbin/tcpstates-bpfcc"


def vm_hwm_kb(pid: int) -> int | None:
    """Peak resident set size of a live process (VmHWM), in KiB."""
    st = read_status(pid)
    return st.vm_hwm_kb if st else None


def vm_rss_kb(pid: int) -> int | None:
    """Resident set size of a live process (VmRSS), in KiB."""
    st = read_status(pid)
    return st.vm_rss_kb if st else None


def proc_stats() -> Iterator[Stat]:
    """/proc/<pid>/stat of every live process."""
    for pid in list_pids():
        st = read_stat(pid)
        if st is not None:
            yield st


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group: the
    tracer and its helpers (strace runs as the recorder's child). Less noisy than req/s ratios
    on a shared machine: it is the tracer's own cost, whatever else runs."""
    hz = os.sysconf("SC_CLK_TCK")
    total = sum(st.utime + st.stime for st in proc_stats() if st.pgrp == pgid)
    return total / hz


BPF_STATS = Path(f"{PROC}/sys/kernel/bpf_stats_enabled")


def bpf_prog_stats(pid: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over the BPF programs a process holds (/proc/<pid>/fdinfo;
    counted only while kernel.bpf_stats_enabled=1): the in-kernel cost user-space CPU misses."""
    ns = cnt = 0
    try:
        fds = os.listdir(f"{PROC}/{pid}/fdinfo")
    except OSError:
        return 0, 0
    for fd in fds:
        info = parse_fields(read_text(f"{PROC}/{pid}/fdinfo/{fd}") or "")
        if "prog_type" not in info:
            continue
        ns += _int(info.get("run_time_ns"))
        cnt += _int(info.get("run_cnt"))
    return ns, cnt


def _int(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


class bpf_stats_enabled:
    """Turn kernel.bpf_stats_enabled on for a measurement and restore the previous value."""

    def __enter__(self) -> "bpf_stats_enabled":
        try:
            self.old = BPF_STATS.read_text().strip()
            BPF_STATS.write_text("1")
        except OSError:
            self.old = None
        return self

    def __exit__(self, *exc) -> None:
        if self.old is not None:
            try:
                BPF_STATS.write_text(self.old)
            except OSError:
                pass


def mem_kb(pid: int) -> dict[str, int]:
    """Rss, Pss (shared pages divided among their users: bcc's LLVM is file-backed) and anonymous
    memory of a live process, in KiB (/proc/<pid>/smaps_rollup)."""
    fields = parse_fields(read_text(f"{PROC}/{pid}/smaps_rollup") or "")
    return {key.lower(): int(fields[key].split()[0]) for key in ("Rss", "Pss", "Anonymous") if key in fields}


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> int | None:
    """SIGINT (the recorder's clean stop), then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


@dataclass
class Tracer:
    """A running tracer (sigtrace record or tcpstates) and what it reported."""
    mode: str
    proc: subprocess.Popen
    out_dir: Path
    spawned: float
    ready_s: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _ready(tr: Tracer, is_ready: Callable[[], bool], timeout: float) -> bool:
    """Poll until the tracer says it is ready (sets tr.ready_s), it exits, or timeout passes."""
    while time.monotonic() - tr.spawned < timeout:
        if is_ready():
            tr.ready_s = time.monotonic() - tr.spawned
            return True
        if tr.proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def start_record(out_dir: Path, args: list[str], mode: str, timeout: float = 60.0) -> Tracer:
    """`sigtrace record` in the background; ready when meta.json exists (the recorder writes it
    right after the probes are attached and the output is open)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # beside the output, not in it: record refuses a directory holding files it did not make
    log_path = out_dir.with_name(out_dir.name + ".log")
    log = open(log_path, "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(SIGTRACE + ["record", "--output", str(out_dir), "--no-live", *args],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    tr = Tracer(mode, proc, out_dir, t0)
    meta = out_dir / "meta.json"
    if _ready(tr, meta.exists, timeout):
        return tr
    stop_process(proc)
    raise RuntimeError(f"recorder {mode} did not become ready: {_tail(log_path)}")


def finish_record(tr: Tracer) -> dict[str, Any]:
    """Stop the recorder, then collect meta.json's figures and its peak RSS."""
    rss = vm_hwm_kb(tr.proc.pid)
    mem = mem_kb(tr.proc.pid)
    rc = stop_process(tr.proc)
    meta = json.loads((tr.out_dir / "meta.json").read_text())
    events = _count_lines(tr.out_dir)
    # a live report (a pod on this node stopped meanwhile) loads pandas into the recorder
    live_reports = len(list((tr.out_dir / "reports").glob("*.json"))) if (tr.out_dir / "reports").is_dir() else 0
    tr.info = {"rc": rc, "ready_s": tr.ready_s, "startup_s": meta.get("startup_s"), "peak_rss_kb": rss,
               "rss_kb": mem.get("rss"), "pss_kb": mem.get("pss"), "anon_kb": mem.get("anonymous"),
               "events": events, "live_reports": live_reports, "lost_events": int(meta.get("lost_events") or 0),
               "lost_by_probe": {k: v for k, v in (meta.get("lost_by_probe") or {}).items() if v},
               "kernel_filtered": meta.get("kernel_filtered"), "clean_end": meta.get("end") is not None}
    return tr.info


def start_tcpstates(out_dir: Path, timeout: float = 60.0) -> Tracer:
    """bcc's tcpstates (the naive baseline: every transition of every socket to user space);
    ready when it printed its header (after compile and attach)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = open(out_dir / "tcpstates.out", "wb")
    err = open(out_dir / "tcpstates.err", "wb")
    t0 = time.monotonic()
    # bcc compiles tcpstates against kernel headers too: give it the tree sigtrace uses (this
    # kernel ships none; the tool only reads tracepoint fields, so the fallback is safe)
    from sigtrace.backends.bpf.headers import ENV, find_headers
    headers = find_headers()
    env = dict(os.environ, **{ENV: headers.path})
    proc = subprocess.Popen([TCPSTATES], stdout=out, stderr=err, start_new_session=True, env=env)
    tr = Tracer("tcpstates", proc, out_dir, t0, info={"_headers": headers})
    if _ready(tr, lambda: (out_dir / "tcpstates.out").stat().st_size > 0, timeout):
        return tr
    stop_process(proc)
    headers.cleanup()
    raise RuntimeError(f"tcpstates did not start: {_tail(out_dir / 'tcpstates.err')}")


def finish_tcpstates(tr: Tracer) -> dict[str, Any]:
    rss = vm_hwm_kb(tr.proc.pid)
    # bcc tools poll in C with the Python callback in between: SIGINT is often swallowed
    # (bcc's own killsnoop test uses SIGKILL), so do not wait long for it
    rc = stop_process(tr.proc, timeout=3.0)
    tr.info.pop("_headers").cleanup()
    err = (tr.out_dir / "tcpstates.err").read_text(errors="replace")
    # bcc's perf reader without lost_cb only prints "Possibly lost N samples"
    lost = sum(int(n) for n in re.findall(r"[Ll]ost (\d+) samples", err))
    tr.info = {"rc": rc, "ready_s": tr.ready_s, "peak_rss_kb": rss,
               "events": max(0, _count_lines(tr.out_dir / "tcpstates.out") - 1), "lost_events": lost}
    return tr.info


@dataclass
class Timed:
    rc: int | None
    wall_s: float
    cpu_s: float
    max_rss_kb: int
    timed_out: bool
    stdout: str
    stderr: str
    tree_pss_kb: int = 0             # peak of the process group's summed PSS, sampled every 0.1 s


_LAUNCHER: subprocess.Popen | None = None
_ANSWERS = bytearray()                  # what the launcher wrote and was not read as a line yet


def start_launcher() -> None:
    """Start the process that spawns timed commands (bench.launcher), unless it runs: spawned by
    the bench, a command's max RSS would include the bench's own peak (kept across exec)."""
    global _LAUNCHER
    if _LAUNCHER is None or _LAUNCHER.poll() is not None:
        _ANSWERS.clear()
        _LAUNCHER = subprocess.Popen([sys.executable, "-m", "bench.launcher"], cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0)


def _launcher_answer(timeout: float | None) -> dict | None:
    """The launcher's next answer, None if none came within timeout seconds. Read from the pipe
    unbuffered: a buffered reader could hold the next answer where select cannot see it."""
    import select
    assert _LAUNCHER is not None and _LAUNCHER.stdout is not None
    fd = _LAUNCHER.stdout.fileno()
    while b"\n" not in _ANSWERS:
        if timeout is not None and not select.select([fd], [], [], timeout)[0]:
            return None
        data = os.read(fd, 1 << 16)
        if not data:
            raise RuntimeError("bench.launcher ended; see its stderr above")
        _ANSWERS.extend(data)
    line, _, rest = bytes(_ANSWERS).partition(b"\n")
    _ANSWERS[:] = rest
    return json.loads(line)


def run_timed(cmd: list[str], timeout: float, cwd: Path = REPO) -> Timed:
    """Run a command; wall time, CPU and peak RSS of that child (wait4, through bench.launcher),
    the peak summed PSS of its process group, killed at the timeout."""
    import tempfile
    start_launcher()
    assert _LAUNCHER is not None and _LAUNCHER.stdin is not None
    with tempfile.TemporaryDirectory(prefix="bench-timed-") as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        t0 = time.monotonic()
        _LAUNCHER.stdin.write(json.dumps({"cmd": cmd, "cwd": str(cwd), "out": str(out), "err": str(err)}).encode() + b"\n")
        started = _launcher_answer(None)
        if "error" in started:
            raise RuntimeError(started["error"])
        pid = started["pid"]
        timed_out = False
        tree_kb = 0
        while True:
            tree_kb = max(tree_kb, group_pss_kb(pid))    # the workers of report/analyze count too
            done = _launcher_answer(0.1)
            if done is not None:
                break
            if not timed_out and time.monotonic() - t0 > timeout:
                timed_out = True
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:       # it ended meanwhile: its answer is on the way
                    pass
        wall = time.monotonic() - t0
        return Timed(None if timed_out else done["status"], wall, done["cpu_s"], done["max_rss_kb"], timed_out,
                     _head(out), _head(err), tree_kb)


def _head(path: Path, limit: int = 1 << 20) -> str:
    with open(path, "rb") as fh:
        return fh.read(limit).decode(errors="replace")


def group_pss_kb(pgid: int) -> int:
    """The summed PSS of a process group's live processes (a command and the workers it forked):
    shared copy-on-write pages counted once in all, where summed RSS would count them in every one."""
    return sum(mem_kb(st.pid).get("pss", 0) for st in proc_stats() if st.pgrp == pgid)


def _count_lines(out_dir: Path) -> int:
    """Lines in every segment of the recording (a fast run passes the 64 MiB segment size)."""
    from sigtrace.events.segments import list_segments
    n = 0
    for _, path in list_segments(out_dir):
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                n += block.count(b"\n")
    return n


def _tail(path: Path, n: int = 400) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip().replace("\n", " | ")
    except OSError:
        return "(no log)"

"""The report's worker processes (sigtrace.report.workers): how many a machine or a pod gets, and
that none outlives its parent.

The CPU and memory limits are read from real cgroups made here (cgroup v1 on this machine, v2 where
the unified hierarchy is mounted at /sys/fs/cgroup), with a process moved into them as runc moves
a container; the v2 files' parsing is also checked on a copy of their layout."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO, require_kernel
from sigtrace.pods.proc import read_stat
from sigtrace.report import workers

CGROOT = Path("/sys/fs/cgroup")


def own_cgroups() -> dict[str, str]:
    """controller ("" for v2) -> this process's cgroup path."""
    out = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            out[name] = rel
    return out


@pytest.fixture
def limited_cgroup():
    """make(cpus, mem_bytes) -> the cgroup.procs files of new cgroups with those limits (under
    this process's own cgroups); removed at the end."""
    require_kernel(root=True)
    made: list[Path] = []

    def make(cpus: float, mem: int) -> list[Path]:
        name = f"sigtrace-test-{uuid.uuid4().hex[:8]}"
        own = own_cgroups()
        if (CGROOT / "cgroup.controllers").exists():               # v2
            d = CGROOT / name               # at the root, where the controllers are enabled
            d.mkdir()
            made.append(d)
            (d / "cpu.max").write_text(f"{int(cpus * 100000)} 100000")
            (d / "memory.max").write_text(str(mem))
            return [d / "cgroup.procs"]
        cpu = CGROOT / "cpu" / own["cpu"].strip("/") / name
        memory = CGROOT / "memory" / own["memory"].strip("/") / name
        for d in (cpu, memory):
            d.mkdir()
            made.append(d)
        (cpu / "cpu.cfs_period_us").write_text("100000")
        (cpu / "cpu.cfs_quota_us").write_text(str(int(cpus * 100000)))
        (memory / "memory.limit_in_bytes").write_text(str(mem))
        return [cpu / "cgroup.procs", memory / "cgroup.procs"]

    yield make
    for d in reversed(made):
        for _ in range(50):                 # the moved process has exited; its cgroup empties
            try:
                d.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def jobs_inside(procs_files: list[Path], env: dict[str, str] | None = None) -> int:
    """default_jobs() as a process moved into the cgroups sees it."""
    code = ("import os, sys\n"
            "for f in sys.argv[1:]:\n"
            "    open(f, 'w').write(str(os.getpid()))\n"
            "from sigtrace.report.workers import default_jobs\n"
            "print(default_jobs())\n")
    env = {k: v for k, v in os.environ.items() if k != "SIGTRACE_JOBS"} | (env or {})
    out = subprocess.run([sys.executable, "-c", code, *map(str, procs_files)], capture_output=True,
                         text=True, cwd=REPO, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to see a limit lower them")
def test_a_cpu_limit_lowers_the_workers(limited_cgroup):
    """A container limited to 1 CPU sees every CPU of the node in its affinity; its cgroup says 1."""
    assert jobs_inside(limited_cgroup(1, 8 << 30)) == 1
    assert jobs_inside(limited_cgroup(1.5, 8 << 30)) == min(2, workers.MAX_JOBS, len(os.sched_getaffinity(0)))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to see a limit lower them")
def test_a_memory_limit_lowers_the_workers(limited_cgroup):
    """One worker per WORKER_BYTES of the limit: 1.5 GiB is room for one."""
    assert jobs_inside(limited_cgroup(8, 3 * workers.WORKER_BYTES // 2)) == 1


def test_jobs_given_win_over_the_limits(limited_cgroup):
    procs = limited_cgroup(1, 1 << 30)
    assert jobs_inside(procs, {"SIGTRACE_JOBS": "3"}) == 3


def test_cgroup_v2_files(tmp_path):
    """cpu.max and memory.max of the cgroup and its ancestors, the lowest winning; "max" is none."""
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    pod = tmp_path / "kubepods" / "pod1"
    ctr = pod / "ctr"
    ctr.mkdir(parents=True)
    (tmp_path / "kubepods" / "cpu.max").write_text("max 100000\n")
    (pod / "cpu.max").write_text("250000 100000\n")
    (ctr / "cpu.max").write_text("max 100000\n")
    (pod / "memory.max").write_text("max\n")
    (ctr / "memory.max").write_text(str(3 << 30) + "\n")
    cg = tmp_path / "self-cgroup"
    cg.write_text("0::/kubepods/pod1/ctr\n")
    assert workers.cgroup_limits(str(tmp_path), str(cg)) == (2.5, 3 << 30)
    cg.write_text("0::/\n")
    assert workers.cgroup_limits(str(tmp_path), str(cg)) == (None, None)


def test_workers_die_with_their_parent(tmp_path):
    """A parent SIGKILLed (the OOM killer) while its workers correlate: they do not wait for work
    that will never come, holding their memory; they go with it."""
    require_kernel(root=False)
    from bench import synth
    synth.generate(tmp_path, 2000, events_per_pod=120, seed=5)
    code = ("import sys, time\n"
            "from sigtrace.events.partition import split_recording\n"
            "from sigtrace.events.source import plan_recording\n"
            "from sigtrace.report import workers\n"
            "from sigtrace.report.build import report_parts\n"
            "workers.report_unit = lambda job, unit: time.sleep(600)\n"     # a part that takes long
            "parts = split_recording(plan_recording(sys.argv[1]), part_bytes=50_000)\n"
            "print('splitting done', flush=True)\n"
            "report_parts(parts, jobs=2)\n")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    kids: list[str] = []
    try:
        assert parent.stdout.readline().strip() == "splitting done"
        deadline = time.monotonic() + 30
        while len(kids) < 2 and time.monotonic() < deadline:
            kids = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
            time.sleep(0.1)
        assert len(kids) >= 2, kids
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [k for k in kids if _alive(k)], "a worker outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for k in kids:                      # started by this test (through its parent): never left behind
            if _alive(k):
                os.kill(int(k), signal.SIGKILL)


def _alive(pid: str) -> bool:
    st = read_stat(pid)
    return st is not None and st.state != "Z"

"""Parts of a recording reported side by side: one worker process per CPU this process may use
(its affinity and its cgroup's cpu.max and memory.max; at most MAX_JOBS), each correlating one
part at a time (report.build.report_parts' parallel path).

Pods are independent once split by pod, so a part's reports need only the part and a few facts
of the whole recording (capabilities, meta, last event, ReplicaSets). The workers are forked after
the split: they inherit the parts object and those facts instead of being sent them, read their
part from its spill file themselves and send back each pod's report packed (compressed JSON, what
PodStore keeps), so the parent holds the reports and no events. At most one part per worker is
in flight: the peak is the parent plus one part's correlation per worker."""
from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import SigtraceError
from ..pods.proc import read_text


class WorkerDied(SigtraceError):
    """A worker process ended without its result (killed: OOM, a signal)."""
    exit_code = 1


# more workers than this add memory (a part's correlation each) faster than they save time
MAX_JOBS = 4
# about the most a worker holds (a 64 MB part of JSON correlated: ~0.3-0.5 GB), with room: a
# memory limit allows one worker per this much
WORKER_BYTES = 1 << 30


@dataclass
class PartJob:
    """What every part's reports need besides the part itself."""
    parts: Any                       # PodParts, FrameParts or analyze's NodeParts: units() and frame(unit)
    caps: frozenset[str]
    meta: dict[str, Any]
    lanes: bool
    last_ts: float | None
    rs_by_deployment: dict[str, set[str]]


PartResult = tuple[list[tuple[str, bytes]], list[dict[str, Any]]]

_JOB: PartJob | None = None          # set in the parent before the fork: what a worker inherits
_PARENT = 0                          # the parent's pid, for a worker to tell it is orphaned
PR_SET_PDEATHSIG = 1                 # <linux/prctl.h>


def default_jobs(jobs: int | None = None) -> int:
    """The workers to use: jobs when given and positive (1: none, parts in this process), else
    SIGTRACE_JOBS when set, else one per CPU this process may use, at most MAX_JOBS and at most
    one per WORKER_BYTES of its cgroup's memory limit."""
    if jobs:
        return max(1, jobs)
    env = os.environ.get("SIGTRACE_JOBS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    cpu_limit, mem_limit = cgroup_limits()
    if cpu_limit is not None:
        cpus = min(cpus, max(1, math.ceil(cpu_limit)))
    if mem_limit is not None:
        cpus = min(cpus, max(1, mem_limit // WORKER_BYTES))
    return max(1, min(cpus, MAX_JOBS))


def cgroup_limits(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> tuple[float | None, int | None]:
    """(CPUs, bytes) this process's cgroups and their ancestors allow (cgroup v2's cpu.max and
    memory.max, or v1's CFS quota and memory limit), None where unlimited or unknown: in a pod the
    node's CPUs are not the pod's (a container limited to 1 CPU still sees them all in its affinity)."""
    text = read_text(proc_cgroup)
    if text is None:
        return None, None
    lines = text.splitlines()
    base = Path(root)
    cpu: float | None = None
    mem: int | None = None
    for line in lines:
        _, controllers, rel = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        names = set(controllers.split(","))
        if controllers == "" and (base / "cgroup.controllers").exists():     # v2, mounted at root
            for d in _up(base, rel):
                cpu, mem = _min(cpu, _cpu_max(d / "cpu.max")), _min(mem, _int_file(d / "memory.max"))
        if "cpu" in names:                                                    # v1
            for d in _up(base / "cpu", rel):
                cpu = _min(cpu, _cfs_quota(d))
        if "memory" in names:
            for d in _up(base / "memory", rel):
                mem = _min(mem, _int_file(d / "memory.limit_in_bytes"))
    return cpu, mem


def _up(mount: Path, rel: str) -> list[Path]:
    """The cgroup's directory under its hierarchy's mount and its ancestors up to the mount."""
    path = mount / rel.strip("/") if rel.strip("/") else mount
    return [path, *[d for d in path.parents if d == mount or mount in d.parents]]


def _cpu_max(path: Path) -> float | None:
    quota, _, period = (read_text(str(path)) or "").strip().partition(" ")
    try:
        return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
    except ValueError:                  # unreadable, or not "QUOTA PERIOD"
        return None


def _cfs_quota(d: Path) -> float | None:
    quota, period = _int_file(d / "cpu.cfs_quota_us"), _int_file(d / "cpu.cfs_period_us")
    return quota / period if quota is not None and quota > 0 and period else None


def _int_file(path: Path) -> int | None:
    """An integer limit, None for "max", v1's "no limit" (near 2^63) or none readable."""
    text = (read_text(str(path)) or "").strip()
    try:
        value = None if text == "max" else int(text)
    except ValueError:                  # unreadable, or not a number
        return None
    return None if value is None or value >= 1 << 60 else value


def _min(a, b):
    return b if a is None else a if b is None else min(a, b)


def report_unit(job: PartJob, unit: Any) -> PartResult:
    """One part's reports, packed, and its pods' resets outside a stop."""
    from ..correlate.build import build_contexts
    from ..correlate.outside import pod_resets_outside_stop
    from .pod import report_for
    from .model import PodStore
    events, uids = job.parts.frame(unit)
    ctxs = build_contexts(events, job.caps, job.meta, job.lanes, pods=uids, last_ts=job.last_ts)
    del events
    packed, outside = [], []
    for ctx in ctxs.values():
        packed.append(PodStore.pack(report_for(ctx, job.rs_by_deployment)))
        entry = pod_resets_outside_stop(ctx)
        if entry is not None:
            outside.append(entry)
    return packed, outside


def _release_freed() -> None:
    """Give back what the split freed but Arrow's allocator kept: every worker starts as a copy
    of this process, and the kept pages would count in each one's memory."""
    try:
        import pyarrow as pa
        pa.default_memory_pool().release_unused()
    except (ImportError, AttributeError):
        pass


def _start_worker() -> None:
    """A worker's set-up, right after the fork.
    - Ctrl-C reaches the whole process group: a worker leaves it to the parent, which ends the
      workers and says it once (a worker ending on its own would look to the parent like one killed).
    - It dies with the parent (SIGKILLed by the OOM killer, or a plain SIGTERM): an orphaned
      worker would wait for work forever, holding its memory.
    - Fresh stdout and stderr: the parent's were copied with their locks as they were at the
      fork, maybe held by the progress bar's thread, and a worker flushes them when it ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != _PARENT:                 # the parent died before prctl took effect
        os._exit(1)
    sys.stdout = open(os.devnull, "w")          # a worker writes no document
    sys.stderr = open(2, "w", closefd=False)    # its crash, if any, still seen


def _in_worker(unit: Any) -> PartResult:
    assert _JOB is not None, "a worker forked without its job"
    return report_unit(_JOB, unit)


def report_units(job: PartJob, jobs: int) -> Iterator[PartResult]:
    """Each part's result, in the order the parts finish: in this process when jobs is 1 or there
    is one part, else in `jobs` forked workers with one part each in flight. An exception of a part
    (NotClean, DataError) is raised here, the parts not yet started cancelled."""
    units = job.parts.units()
    jobs = min(jobs, len(units))
    if jobs <= 1 or not can_fork():
        for unit in units:
            yield report_unit(job, unit)
        return
    global _JOB
    _JOB = job
    try:
        yield from _in_workers(_in_worker, units, jobs, "part")
    finally:
        _JOB = None


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _in_workers(fn: Any, units: Iterable[Any], jobs: int, what: str) -> Iterator[Any]:
    """fn(unit) of each unit in `jobs` forked workers, at most `jobs` in flight, in the order they
    finish. units may be a generator: it is read as workers free up."""
    global _PARENT
    _PARENT = os.getpid()
    # a forked worker flushes its copy of these buffers when it ends: empty them first, or a
    # document half-written to stdout would be written again by every worker
    sys.stdout.flush()
    sys.stderr.flush()
    _release_freed()
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_start_worker) as pool:
            yield from _bounded(pool, fn, units, jobs)
    except BrokenProcessPool:
        raise WorkerDied(f"a report worker process died before its {what} was done (most often the kernel's "
                         f"out-of-memory killer: {jobs} workers hold a {what} each); run again with --jobs 1 "
                         f"(SIGTRACE_JOBS=1): one {what} at a time, in one process") from None


def report_batches(batches: Iterable[Any], jobs: int) -> Iterator[tuple[Any, list[Any]]]:
    """(batch, its members' ReportSets) of each batch of small recordings (analyze's SmallNodes:
    .events, .nodes[i].member; report.batch), in the order they finish: in this process when jobs
    is 1, else in `jobs` forked workers, a batch's frame sent to its worker."""
    from .batch import report_batch
    if jobs <= 1 or not can_fork():
        for batch in batches:
            yield batch, report_batch(batch.events, [n.member for n in batch.nodes])
        return
    for batch, sets in _in_workers(_batch_in_worker, batches, jobs, "batch of nodes"):
        yield batch, sets


def _batch_in_worker(batch: Any) -> tuple[Any, list[Any]]:
    from .batch import report_batch
    events, batch.events = batch.events, None        # not sent back
    return batch, report_batch(events, [n.member for n in batch.nodes])


def _bounded(pool: ProcessPoolExecutor, fn: Any, units: Iterable[Any], jobs: int) -> Iterator[Any]:
    """pool.map with at most `jobs` units submitted at once: a submitted unit's result waits in
    the parent, and results are a part's reports, so this bounds the parent's memory too."""
    before = set(multiprocessing.active_children())        # the pool's workers are the others
    todo = iter(units)
    running: set[Future] = set()
    try:
        for unit in todo:
            running.add(pool.submit(fn, unit))
            if len(running) < jobs:
                continue
            done, running = _wait_any(running)
            for f in done:
                yield f.result()
        while running:
            done, running = _wait_any(running)
            for f in done:
                yield f.result()
    except BaseException:
        # an interrupt, a part's error, the caller closing the generator: the other parts' work
        # is not wanted, so it is not waited for
        for f in running:
            f.cancel()
        _end_workers(before)
        pool.shutdown(wait=True, cancel_futures=True)
        raise


def _end_workers(before: set) -> None:
    for proc in multiprocessing.active_children():
        if proc not in before:
            proc.terminate()


def _wait_any(running: set[Future]) -> tuple[set[Future], set[Future]]:
    done, pending = wait(running, return_when=FIRST_COMPLETED)
    return set(done), set(pending)


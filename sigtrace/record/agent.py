"""What `sigtrace agent` runs on each node: a record session fed by the kernel recorder and the
Kubernetes API watcher, one stream.

Each start writes a fresh recording ROOT/<node>-<UTC time>/ (events.jsonl and its segments,
meta.json, reports/), so agent restarts never mix two recordings; max_disk/max_age bound all of
them together (sigtrace.events.segments.DiskBudget). Trouble with one half never stops the
other: without API access the kernel events are still recorded (and the watcher retries with
backoff); without BPF (no headers, no capability) the API events are still recorded.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SigtraceError, UsageProblem
from .session import RecordResult, RecordSession

log = logging.getLogger("sigtrace.k8s")


@dataclass
class AgentRun:
    out: Path                   # this run's recording
    result: RecordResult
    api_events: int             # of result.events, those from the API watcher


def run_agent(output: str, node: str | None, *, kubeconfig: str | None = None, context: str | None = None,
              duration: float | None = None, all_processes: bool = False, watch_api: bool = True,
              kernel: bool = True, ready_file: str | None = None, metrics_address: str | None = None,
              max_disk: int | None = None, max_age_s: float | None = None, compact: bool = True) -> AgentRun:
    """Record this node into a new run under output until duration, SIGINT or SIGTERM. Raises
    only when neither half can record."""
    from ..events.writer import prepare_output_dir
    from ..k8s.health import AgentHealth
    from ..k8s.stream import WatcherBackend
    from ..k8s.watcher import start_watcher

    root = prepare_output_dir(output, root=True)
    # the caps cover every run under the root: a restart starts a new run within the same budget
    disk = {"max_disk": max_disk, "max_age_s": max_age_s, "disk_root": root, "compact": compact}
    name = node or os.uname().nodename
    out = root / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    stop = threading.Event()
    proxy = WatcherBackend(None, ready_file=ready_file, health=AgentHealth(root, name, out))
    metrics = _serve_metrics(metrics_address, proxy.health) if metrics_address else None
    watcher, thread = start_watcher(node, kubeconfig, context, proxy.put, stop) if watch_api else (None, None)
    if watcher is not None:
        proxy.follow(watcher.summary)
    try:
        if kernel:
            from .backends import make_backend
            note = use_fallback_headers()
            try:
                proxy.set_recorder(make_backend("bpf", all_processes=all_processes, pids=(), comms=()), note)
                return _record(proxy, out, duration, disk)
            except SigtraceError as exc:
                if watcher is None:
                    raise
                # KernelProblem (no headers/BPF), PermissionProblem...: keep the API half alive
                log.warning("kernel recorder unavailable (%s); recording Kubernetes API events only", exc)
                proxy.set_recorder(None, str(exc))
        if watcher is None:
            raise UsageProblem("nothing to record: --no-kernel and no Kubernetes API access")
        return _record(proxy, out, duration, disk)
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=10)
        if metrics is not None:
            metrics.close()


def _serve_metrics(address: str, health: Any) -> Any:
    from ..k8s.metrics import MetricsServer
    metrics = MetricsServer(address, health).start()
    log.info("serving Prometheus metrics on http://%s:%d/metrics", metrics.host, metrics.port)
    return metrics


def _record(proxy: Any, out: Path, duration: float | None, disk: dict[str, Any]) -> AgentRun:
    session = RecordSession(proxy, out, console=None, live=False, extra_meta={"agent": True}, **disk,
                            on_report=proxy.health.report_written)
    result = session.run(duration=duration)
    proxy.health.stopped(proxy)
    return AgentRun(out, result, proxy.api_events)


def use_fallback_headers() -> str | None:
    """On a node without kernel headers, point bcc at the image's Debian headers (one line why).
    The image sets SIGTRACE_FALLBACK_USR_SRC (daemonset/Dockerfile); the node's own headers win."""
    fallback = os.environ.get("SIGTRACE_FALLBACK_USR_SRC")
    if not fallback or os.environ.get("BCC_KERNEL_SOURCE") or not Path(fallback).is_dir():
        return None
    from ..backends.bpf.headers import find_headers
    try:
        find_headers()                     # the node's own headers (mounted /lib/modules, /usr/src)
        return None
    except SigtraceError:
        pass
    try:
        hs = find_headers(usr_src=Path(fallback))
    except SigtraceError:
        return None
    os.environ["BCC_KERNEL_SOURCE"] = hs.path     # the tree stays for the agent's lifetime
    note = f"node has no kernel headers for {os.uname().release}: using the image's ({hs.note})"
    log.warning("%s", note)
    return note

"""`sigtrace agent`: what the DaemonSet runs. `record` + the Kubernetes API watcher, one stream.

Each start writes a fresh recording OUTPUT/<node>-<UTC time>/ (events.jsonl and its segments,
meta.json, reports/), so agent restarts never mix two recordings; --max-disk/--max-age bound all of
them together (sigtrace.events.segments.DiskBudget). Trouble with one half never stops the
other: without API access the kernel events are still recorded (and the watcher retries with
backoff); without BPF (no headers, no capability) the API events are still recorded.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from ..errors import SigtraceError, UsageProblem
from .record import DURATION, SIZE, check_max_disk

log = logging.getLogger("sigtrace.k8s")

EPILOG = """\b
Examples:
  sigtrace agent --output /var/lib/sigtrace                  # in the DaemonSet (NODE_NAME from the downward API)
  sudo sigtrace agent --node node-a --kubeconfig ~/.kube/config --output /tmp/agent --duration 300
\b
Then: kubectl sigtrace collect --output ./rollout && kubectl sigtrace report ./rollout
"""


def use_fallback_headers() -> str | None:
    """On a node without kernel headers, point bcc at the image's Debian headers (one line why)."""
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


def start_watcher(node: str, kubeconfig: str | None, context: str | None, sink: Any,
                  stop: threading.Event) -> tuple[Any | None, threading.Thread | None]:
    from ..k8s.client import ClusterProblem, api_client
    from ..k8s.watcher import ApiWatcher
    try:
        api = api_client(kubeconfig, context)
    except ClusterProblem as exc:
        log.warning("%s; recording node events without pod names", exc)
        return None, None
    watcher = ApiWatcher(api, node, sink)
    t = threading.Thread(target=watcher.run, args=(stop,), name="k8s-watcher", daemon=True)
    t.start()
    return watcher, t


@click.command(epilog=EPILOG)
@click.option("--output", "-o", default="/var/lib/sigtrace", show_default=True, type=click.Path(file_okay=False),
              help="Root directory; each agent start records into OUTPUT/<node>-<time>/.")
@click.option("--node", envvar="NODE_NAME", help="This node's name (default: $NODE_NAME, from the downward API).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Outside a pod: the kubeconfig to use.")
@click.option("--context", help="Outside a pod: the kubeconfig context.")
@click.option("--duration", "-d", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after S seconds (default: until SIGTERM).")
@click.option("--all", "all_processes", is_flag=True, help="Record every process, not only pods.")
@click.option("--no-api", is_flag=True, help="Do not watch the Kubernetes API (kernel events only).")
@click.option("--no-kernel", is_flag=True, help="Do not load probes (Kubernetes API events only).")
@click.option("--max-disk", type=SIZE, default="1Gi", show_default=True,
              help="All runs under OUTPUT stay under this size (oldest closed segments removed first); or none.")
@click.option("--max-age", type=DURATION, default="7d", show_default=True,
              help="Remove segments and runs older than this; or none.")
@click.option("--ready-file", default="/tmp/sigtrace-ready", show_default=True,
              help="Created once recording runs (the DaemonSet's readiness probe tests it).")
@click.option("--metrics-address", default=None, metavar="HOST:PORT",
              help="Serve Prometheus metrics (read-only) on HOST:PORT, e.g. 0.0.0.0:9464. Default: off.")
def agent(output: str, node: str | None, kubeconfig: str | None, context: str | None, duration: float | None,
          all_processes: bool, no_api: bool, no_kernel: bool, ready_file: str, metrics_address: str | None,
          max_disk: int | None, max_age: float | None) -> int:
    """Run on a node: record pods' signals, exits and TCP events, plus their API lifecycle."""
    from ..events.writer import prepare_output_dir
    from ..k8s.health import AgentHealth
    from ..k8s.stream import WatcherBackend
    from .record import make_backend

    logging.basicConfig(level=logging.INFO, format="sigtrace agent: %(message)s", stream=sys.stderr)
    if not node and not no_api:
        raise UsageProblem("no node name: set NODE_NAME (the DaemonSet does, from spec.nodeName) or pass --node")
    check_max_disk(max_disk)
    root = prepare_output_dir(output, root=True)
    # the caps cover every run under the root: a restart starts a new run within the same budget
    disk = {"max_disk": max_disk, "max_age_s": max_age, "disk_root": root}
    out = root / f"{node or os.uname().nodename}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    stop = threading.Event()
    # stdout carries only the per-pod report lines (one JSON object each); the log is on stderr
    proxy = WatcherBackend(None, ready_file=ready_file, health=AgentHealth(root, node or os.uname().nodename, out))
    metrics = None
    if metrics_address:
        from ..k8s.metrics import MetricsServer
        metrics = MetricsServer(metrics_address, proxy.health).start()
        log.info("serving Prometheus metrics on http://%s:%d/metrics", metrics.host, metrics.port)
    watcher, thread = (None, None) if no_api else start_watcher(node, kubeconfig, context, proxy.put, stop)
    if watcher is not None:
        proxy._summary = watcher.summary
    try:
        if not no_kernel:
            note = use_fallback_headers()
            try:
                proxy.inner = make_backend("bpf", all_processes=all_processes, pids=(), comms=())
                proxy.name = proxy.inner.name
                return _record(proxy, out, duration, note, disk)
            except SigtraceError as exc:
                if watcher is None:
                    raise
                # KernelProblem (no headers/BPF), PermissionProblem...: keep the API half alive
                log.warning("kernel recorder unavailable (%s); recording Kubernetes API events only", exc)
                proxy.inner, proxy.name, proxy._note = None, "kubernetes-api-only", str(exc)
        if watcher is None:
            raise UsageProblem("nothing to record: --no-kernel and no Kubernetes API access")
        return _record(proxy, out, duration, None, disk)
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=10)
        if metrics is not None:
            metrics.close()


def _record(proxy: Any, out: Path, duration: float | None, note: str | None, disk: dict[str, Any]) -> int:
    from ..record import RecordSession
    if note:
        proxy._note = note
    session = RecordSession(proxy, out, console=None, live=False, extra_meta={"agent": True}, **disk,
                            on_report=proxy.health.report_written)
    result = session.run(duration=duration)
    proxy.health.stopped(proxy)
    click.echo(f"sigtrace agent: {result.events} events ({proxy.api_events} from the API) in "
               f"{result.duration_s:.1f}s, {result.lost_events} lost -> {out}", err=True)
    return 0

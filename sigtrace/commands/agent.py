"""`sigtrace agent`: what the DaemonSet runs (sigtrace.record.agent): `record` + the Kubernetes
API watcher, one stream; this parses its options and prints its summary."""
from __future__ import annotations

import logging
import sys

import click

from ..errors import UsageProblem
from .record import DURATION, SIZE, check_max_disk

EPILOG = """\b
Examples:
  sigtrace agent --output /var/lib/sigtrace                  # in the DaemonSet (NODE_NAME from the downward API)
  sudo sigtrace agent --node node-a --kubeconfig ~/.kube/config --output /tmp/agent --duration 300
\b
Then: kubectl sigtrace collect --output ./rollout && kubectl sigtrace report ./rollout
"""


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
@click.option("--compact/--no-compact", default=True, show_default=True,
              help="Compact each closed segment to a columnar file (~9x smaller: more history under --max-disk), "
                   "and those earlier runs under OUTPUT left as JSONL.")
@click.option("--ready-file", default="/tmp/sigtrace-ready", show_default=True,
              help="Created once recording runs (the DaemonSet's readiness probe tests it).")
@click.option("--metrics-address", default=None, metavar="HOST:PORT",
              help="Serve Prometheus metrics (read-only) on HOST:PORT, e.g. 0.0.0.0:9464. Default: off.")
def agent(output: str, node: str | None, kubeconfig: str | None, context: str | None, duration: float | None,
          all_processes: bool, no_api: bool, no_kernel: bool, ready_file: str, metrics_address: str | None,
          max_disk: int | None, max_age: float | None, compact: bool) -> int:
    """Run on a node: record pods' signals, exits and TCP events, plus their API lifecycle."""
    from ..record.agent import run_agent

    logging.basicConfig(level=logging.INFO, format="sigtrace agent: %(message)s", stream=sys.stderr)
    if not node and not no_api:
        raise UsageProblem("no node name: set NODE_NAME (the DaemonSet does, from spec.nodeName) or pass --node")
    check_max_disk(max_disk)
    # stdout carries only the per-pod report lines (one JSON object each); the log is on stderr
    run = run_agent(output, node, kubeconfig=kubeconfig, context=context, duration=duration,
                    all_processes=all_processes, watch_api=not no_api, kernel=not no_kernel, ready_file=ready_file,
                    metrics_address=metrics_address, max_disk=max_disk, max_age_s=max_age,
                    compact=compact)
    click.echo(f"sigtrace agent: {run.result.events} events ({run.api_events} from the API) in "
               f"{run.result.duration_s:.1f}s, {run.result.lost_events} lost -> {run.out}", err=True)
    return 0

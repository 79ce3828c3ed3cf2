"""`kubectl sigtrace` (console script kubectl-sigtrace; kubectl finds it on PATH as a plugin).

    kubectl sigtrace deploy [--overlay kernel-pre-5.11|kernel-pre-5.8|with-control-plane] [--image REG/sigtrace-agent:TAG]
    kubectl sigtrace status
    kubectl sigtrace collect --output DIR [--pod NS/NAME ...]
    kubectl sigtrace report DIR [--format text|json|html]
    kubectl sigtrace undeploy

kubectl conventions: --namespace/-n (where the agents run, default sigtrace), --context,
--kubeconfig. What the *user* needs in RBAC terms (the agents need none of this):
  deploy/undeploy: create/update/delete namespaces, serviceaccounts, clusterroles,
                   clusterrolebindings and apps daemonsets (in practice cluster-admin: granting a
                   ClusterRole requires holding its permissions);
  status:          get daemonsets, list pods in the agents' namespace, and create pods/exec there
                   for each agent's health (`cat /var/lib/sigtrace/status.json`; without it the
                   table still shows readiness, and says health is unavailable);
  collect:         list pods and create pods/exec in the agents' namespace (it runs `tar` in the
                   agent containers, like `kubectl cp`), get pods named by --pod.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .errors import DataError, SigtraceError, UsageProblem
from .k8s.collect import MAX_COLLECT_BYTES
from .k8s.manifests import OVERLAYS
from .render import FORMATS

DEFAULT_NS = "sigtrace"


class Ctx:
    def __init__(self, namespace: str, context: str | None, kubeconfig: str | None):
        self.namespace, self.context, self.kubeconfig = namespace, context, kubeconfig
        self._api = None

    @property
    def api(self) -> Any:
        if self._api is None:
            from .k8s.client import api_client
            self._api = api_client(self.kubeconfig, self.context)
        return self._api


# ---- CLI -----------------------------------------------------------------------------------------
EPILOG = """\b
Examples:
  kubectl sigtrace deploy --image registry.example/sigtrace-agent:0.1.0
  kubectl sigtrace status
  kubectl sigtrace collect --output ./rollout --pod shop/web-7d9c5b8f6d-x2x4q
  kubectl sigtrace report ./rollout
  kubectl sigtrace undeploy
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.option("--namespace", "-n", default=DEFAULT_NS, show_default=True, help="Namespace of the sigtrace agents.")
@click.option("--context", default=None, help="The kubeconfig context to use.")
@click.option("--kubeconfig", default=None, type=click.Path(dir_okay=False), help="Path to the kubeconfig file.")
@click.pass_context
def plugin(ctx: click.Context, namespace: str, context: str | None, kubeconfig: str | None) -> None:
    """Run sigtrace across a cluster: agents on every node, collection, reports."""
    ctx.obj = Ctx(namespace, context, kubeconfig)


@plugin.command()
@click.option("--overlay", type=click.Choice(list(OVERLAYS)), default="default", show_default=True,
              help="kernel-pre-5.11 adds CAP_SYS_RESOURCE (BPF maps charged to RLIMIT_MEMLOCK), kernel-pre-5.8 "
                   "also CAP_SYS_ADMIN (no CAP_BPF/CAP_PERFMON), with-control-plane runs on control-plane nodes too.")
@click.option("--image", default=None, help="Agent image (built from daemonset/Dockerfile).")
@click.option("--dry-run", is_flag=True, help="Print the manifests as JSON instead of applying them.")
@click.pass_obj
def deploy(c: Ctx, overlay: str, image: str | None, dry_run: bool) -> None:
    """Create or update the agent DaemonSet and its read-only RBAC."""
    from .k8s.deploy import deploy_objects
    from .k8s.manifests import render
    objs = render(overlay, namespace=c.namespace, image=image)
    if dry_run:
        click.echo(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}, indent=2))
        return
    for line in deploy_objects(c.api, objs):
        click.echo(line)


@plugin.command()
@click.pass_obj
def undeploy(c: Ctx) -> None:
    """Remove the agents, their RBAC and their namespace (node output under /var/lib/sigtrace stays)."""
    from .k8s.deploy import undeploy_objects
    from .k8s.manifests import render
    for line in undeploy_objects(c.api, render(namespace=c.namespace)):
        click.echo(line)


@plugin.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (each node's status.json under health).")
@click.option("--no-health", is_flag=True, help="Readiness only: no pods/exec into the agents.")
@click.pass_obj
def status(c: Ctx, as_json: bool, no_health: bool) -> None:
    """Per node: ready, armed pods, events/s, lost events, disk used, last report."""
    from .k8s.agents import add_health, agent_status
    from .k8s.status_table import readiness_rows, status_rows
    st = agent_status(c.api, c.namespace)
    if not no_health:
        add_health(c.api, c.namespace, st)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    from .render.safe import visible
    click.echo(f"agents ready: {st['ready']}/{st['desired']}")
    for line in readiness_rows(st) if no_health else status_rows(st, c.namespace):
        click.echo(visible(line))          # pod, node and problem texts come from the API and the nodes


@plugin.command(name="collect")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Local directory (created).")
@click.option("--pod", "pods", multiple=True, help="Only the nodes of this pod, NS/NAME or NAME (repeatable).")
@click.option("--pods-namespace", default="default", show_default=True, help="Namespace of --pod NAME without NS/.")
@click.option("--max-bytes", type=click.IntRange(min=1), default=MAX_COLLECT_BYTES, show_default=True,
              help="At most this many bytes per node, in transit and on disk.")
@click.pass_obj
def collect_cmd(c: Ctx, output: str, pods: tuple[str, ...], pods_namespace: str, max_bytes: int) -> None:
    """Pull events and reports from the agents into OUTPUT/<node>/."""
    from .k8s.collect import collect, recordings_in
    out = Path(output)
    got = collect(c.api, c.namespace, out, pods, pods_namespace, max_bytes)
    for node, files in sorted(got.items()):
        click.echo(f"{node}: {len(files)} files, {recordings_in(files)} recordings -> {out / node}")


@plugin.command(name="report")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
def report_cmd(directory: str, fmt: str) -> None:
    """Shutdown reports for every recording under DIRECTORY (as written by collect)."""
    from .events.segments import run_dirs_under
    from .render.safe import visible
    recs = run_dirs_under(Path(directory))
    if not recs:
        raise UsageProblem(f"{directory}: no recordings (no events*.jsonl or events*.arrow below it); run `kubectl sigtrace collect` first")
    unusable = []
    for rec in recs:
        click.echo(f"== {visible(str(rec))}", err=True)
        try:
            for line in api_data_notes(rec):
                click.echo(f"note: {line}", err=True)
            run_report(rec, fmt)
        except (SigtraceError, click.ClickException) as exc:
            # one bad recording (a node whose disk filled, a truncated copy) must not hide the others
            unusable.append(f"{rec} ({exc.format_message() if isinstance(exc, click.ClickException) else exc})")
            click.echo(f"sigtrace: {visible(str(rec))}: unusable, skipped", err=True)
    if unusable:
        raise DataError(f"{len(unusable)} of {len(recs)} recordings unusable: " + "; ".join(unusable))


def api_data_notes(rec: Path) -> list[str]:
    """What the agent's meta.json says is missing from the API side, with visible escapes (a
    collected file is remote input)."""
    from .k8s.collect import api_gaps
    from .render.safe import visible
    gaps = api_gaps(rec)
    if gaps is None:
        return ["no readable meta.json: Kubernetes API data may be missing"]
    notes = [f"API data incomplete: {visible(line)}" for line in gaps["problems"]]
    if gaps["unnamed_pods"]:
        notes.append("no container names from the API for: " + ", ".join(visible(x) for x in gaps["unnamed_pods"]))
    return notes


def run_report(rec: Path, fmt: str) -> None:
    """One recording's reports to stdout, as `sigtrace report` prints them (the same library calls)."""
    from .events.reader import read_recording
    from .render import write_report
    from .report import build_reports
    r = read_recording(rec)
    write_report(build_reports(r.events, r.meta, r.incomplete, lanes=fmt == "html"), fmt, sys.stdout)


def main(argv: list[str] | None = None) -> None:
    try:
        rc = plugin.main(args=argv, prog_name="kubectl sigtrace", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("kubectl-sigtrace: error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SigtraceError as exc:
        from .render.safe import visible
        click.echo(f"kubectl-sigtrace: error: {visible(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)

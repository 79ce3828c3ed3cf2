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

import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from .errors import DataError, SigtraceError, UsageProblem
from .events.segments import segment_seq
from .k8s.manifests import OVERLAYS
from .render import FORMATS

AGENT_LABEL = "app.kubernetes.io/name=sigtrace-agent"
AGENT_OUTPUT = "/var/lib/sigtrace"
DEFAULT_NS = "sigtrace"
STATUS_PATH = f"{AGENT_OUTPUT}/status.json"      # written by the agent (sigtrace/k8s/health.py)
STALE_AFTER_S = 30.0        # status.json is rewritten every 5 s: older means the agent's loop is stuck
EXEC_WORKERS = 8            # agents asked at once (one pods/exec each)


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


def _api_error(exc: Exception, what: str) -> SigtraceError:
    from .k8s.client import ClusterProblem
    from kubernetes.client.exceptions import ApiException
    if isinstance(exc, ApiException) and exc.status == 403:
        return ClusterProblem(f"{what}: forbidden (403): your user lacks the RBAC for it; see `kubectl sigtrace --help`")
    if isinstance(exc, ApiException) and exc.status:
        return ClusterProblem(f"{what}: the API server answered {exc.status} {exc.reason}")
    return ClusterProblem(f"{what}: cannot reach the API server ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); "
                          f"check --context/--kubeconfig")


# ---- deploy / undeploy ------------------------------------------------------------------------
def _ops(api: Any, obj: dict) -> tuple[Any, Any, Any, Any]:
    """(read, create, replace, delete) for one object, namespaced where it must be."""
    from kubernetes import client
    core, rbac, apps = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api), client.AppsV1Api(api)
    name, ns = obj["metadata"]["name"], obj["metadata"].get("namespace")
    table = {
        "Namespace": (core, "namespace", False),
        "ServiceAccount": (core, "namespaced_service_account", True),
        "ClusterRole": (rbac, "cluster_role", False),
        "ClusterRoleBinding": (rbac, "cluster_role_binding", False),
        "DaemonSet": (apps, "namespaced_daemon_set", True),
    }
    group, suffix, namespaced = table[obj["kind"]]
    args = (name, ns) if namespaced else (name,)
    cargs = (ns,) if namespaced else ()
    return (lambda: getattr(group, f"read_{suffix}")(*args),
            lambda: getattr(group, f"create_{suffix}")(*cargs, obj),
            lambda: getattr(group, f"replace_{suffix}")(*args, obj),
            lambda: getattr(group, f"delete_{suffix}")(*args))


def deploy_objects(api: Any, objs: list[dict]) -> list[str]:
    """Create or replace each object; returns 'kind/name created|configured' lines like kubectl apply."""
    from kubernetes.client.exceptions import ApiException
    done = []
    for obj in objs:
        read, create, replace, _ = _ops(api, obj)
        what = f"{obj['kind'].lower()}/{obj['metadata']['name']}"
        try:
            try:
                current = read()
            except ApiException as exc:
                if exc.status != 404:
                    raise
                create()
                done.append(f"{what} created")
                continue
            obj = dict(obj, metadata={**obj["metadata"], "resourceVersion": current.metadata.resource_version})
            _ops(api, obj)[2]()
            done.append(f"{what} configured")
        except SigtraceError:
            raise
        except Exception as exc:  # noqa: BLE001 - ApiException and connection errors become one line
            raise _api_error(exc, f"deploy {what}") from None
    return done


def undeploy_objects(api: Any, objs: list[dict]) -> list[str]:
    from kubernetes.client.exceptions import ApiException
    done = []
    for obj in reversed(objs):
        what = f"{obj['kind'].lower()}/{obj['metadata']['name']}"
        try:
            _ops(api, obj)[3]()
            done.append(f"{what} deleted")
        except ApiException as exc:
            if exc.status != 404:
                raise _api_error(exc, f"undeploy {what}") from None
            done.append(f"{what} not found")
        except Exception as exc:  # noqa: BLE001 - connection errors become one line
            raise _api_error(exc, f"undeploy {what}") from None
    return done


# ---- status / collect ---------------------------------------------------------------------------
def agent_pods(api: Any, namespace: str) -> list[dict]:
    from kubernetes import client
    try:
        resp = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=AGENT_LABEL,
                                                         _preload_content=False)
        return json.loads(resp.data)["items"]
    except Exception as exc:  # noqa: BLE001
        raise _api_error(exc, f"listing agent pods in {namespace}") from None


def agent_status(api: Any, namespace: str) -> dict[str, Any]:
    """DaemonSet counts and, per node, the agent pod and whether it is ready."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    try:
        resp = client.AppsV1Api(api).read_namespaced_daemon_set("sigtrace-agent", namespace, _preload_content=False)
        ds = json.loads(resp.data)
    except ApiException as exc:
        if exc.status == 404:
            raise UsageProblem(f"no sigtrace agents in namespace {namespace}: run `kubectl sigtrace deploy`") from None
        raise _api_error(exc, "reading the DaemonSet") from None
    except Exception as exc:  # noqa: BLE001
        raise _api_error(exc, "reading the DaemonSet") from None
    st = ds.get("status") or {}
    nodes = []
    for p in agent_pods(api, namespace):
        conds = {c["type"]: c["status"] for c in (p.get("status") or {}).get("conditions") or []}
        restarts = sum(c.get("restartCount", 0) for c in (p.get("status") or {}).get("containerStatuses") or [])
        nodes.append({"node": (p.get("spec") or {}).get("nodeName"), "pod": p["metadata"]["name"],
                      "ready": conds.get("Ready") == "True", "phase": (p.get("status") or {}).get("phase"),
                      "restarts": restarts})
    nodes.sort(key=lambda n: n["node"] or "")
    return {"desired": st.get("desiredNumberScheduled", 0), "ready": st.get("numberReady", 0), "nodes": nodes}


def add_health(api: Any, namespace: str, st: dict[str, Any]) -> dict[str, Any]:
    """Each running agent's status.json under nodes[].health, asked in parallel."""
    running = [n for n in st["nodes"] if n["phase"] == "Running"]
    with ThreadPoolExecutor(max_workers=EXEC_WORKERS) as pool:
        for n, h in zip(running, pool.map(lambda n: agent_health(api, namespace, n["pod"]), running)):
            n["health"] = h
    for n in st["nodes"]:
        n.setdefault("health", {"error": f"agent pod not running ({n['phase'] or 'no phase'})"})
    return st


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"


def status_rows(st: dict[str, Any], namespace: str = DEFAULT_NS, now: float | None = None) -> list[str]:
    """The `status` table: one line per node, then one note per node whose health is not plain."""
    now = now if now is not None else time.time()
    rows = [f"{'NODE':<20} {'POD':<28} {'READY':<5} {'RESTARTS':>8} {'ARMED':>5} {'EVENTS/S':>9} "
            f"{'LOST':>6} {'DISK':>9}  LAST REPORT"]
    notes = []
    for n in st["nodes"]:
        h = n.get("health") or {}
        last = h.get("last_report")
        if last:
            ago = max(0.0, now - float(last.get("at") or now))
            who = f"{last.get('namespace') or '?'}/{last.get('pod_name') or last.get('pod_uid') or '?'}"
            last_s = f"{_ago(ago)} ago {who} {','.join(last.get('verdicts') or []) or 'clean'}"
        else:
            last_s = "-" if "error" in h else "none yet"
        armed = h.get("armed_pods")
        rows.append(f"{n['node'] or '-':<20} {n['pod']:<28} {'yes' if n['ready'] else 'no':<5} {n['restarts']:>8} "
                    f"{'-' if armed is None else armed:>5} "
                    f"{'-' if 'events_per_s' not in h else format(h['events_per_s'], '.1f'):>9} "
                    f"{h.get('lost_events', '-'):>6} {_size(h.get('disk_used_bytes')):>9}  {last_s}")
        node = n["node"] or n["pod"]
        if "error" in h:
            notes.append(f"{node}: health unavailable: {h['error']}")
            continue
        if h.get("stale"):
            notes.append(f"{node}: status.json is {_ago(h['age_s'])} old: the agent's recording loop is stuck "
                         f"or it stopped (see `kubectl logs -n {namespace} {n['pod']}`)")
        elif not h.get("recording"):
            notes.append(f"{node}: the agent is not recording (starting, or stopped)")
        for res, problem in ((h.get("kubernetes") or {}).get("problems") or {}).items():
            notes.append(f"{node}: API {res}: {problem}")
        if h.get("backend") == "kubernetes-api-only":
            notes.append(f"{node}: no kernel recorder (API events only): see the agent's log")
    return rows + [f"note: {line}" for line in notes]


def _ago(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.0f}h" if s < 172800 else f"{s / 86400:.0f}d"


TAR_COMMAND = ["tar", "cf", "-", "-C", AGENT_OUTPUT, "."]
MAX_COLLECT_BYTES = 4 << 30          # per node; an agent keeps at most --max-disk (1 GiB by default)


def exec_read(api: Any, namespace: str, pod: str, command: list[str], max_bytes: int = 16 << 20) -> bytes:
    """Run `command` in the agent container over pods/exec; its stdout (at most max_bytes), or
    SigtraceError on failure."""
    out = io.BytesIO()
    exec_stream(api, namespace, pod, command, out, max_bytes)
    return out.getvalue()


def _exit_code(status: dict) -> int | None:
    """The command's exit code from a pods/exec status (details.causes ExitCode), when it says."""
    for cause in ((status.get("details") or {}).get("causes") or []):
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message"))
            except (TypeError, ValueError):
                return None
    return None


def exec_stream(api: Any, namespace: str, pod: str, command: list[str], sink: Any, max_bytes: int,
                ok_codes: tuple[int, ...] = ()) -> int:
    """Run `command` in the agent container over pods/exec, writing its stdout to sink as it arrives;
    never more than max_bytes (the remote end is not trusted to stop). Returns the bytes written."""
    from kubernetes import client
    from kubernetes.stream import stream
    from kubernetes.stream.ws_client import ERROR_CHANNEL, STDERR_CHANNEL, STDOUT_CHANNEL
    ws = stream(client.CoreV1Api(api).connect_get_namespaced_pod_exec, pod, namespace,
                command=command, container="agent",
                stderr=True, stdin=False, stdout=True, tty=False, binary=True, _preload_content=False)
    err = io.BytesIO()
    written = 0

    def take(chunk: bytes) -> None:
        nonlocal written
        if written + len(chunk) > max_bytes:
            raise SigtraceError(f"{command[0]} in {namespace}/{pod} sent more than {_size(max_bytes)}; "
                                f"raise --max-bytes, or collect with --pod to narrow it down")
        sink.write(chunk)
        written += len(chunk)
    try:
        while ws.is_open():
            ws.update(timeout=1)
            take(ws.read_channel(STDOUT_CHANNEL))
            if err.tell() < 4096:
                err.write(ws.read_channel(STDERR_CHANNEL))
        take(ws.read_channel(STDOUT_CHANNEL))
        err.write(ws.read_channel(STDERR_CHANNEL)[:4096])
        status = ws.read_channel(ERROR_CHANNEL)
    finally:
        ws.close()
    if status:
        st = json.loads(status)
        if st.get("status") != "Success" and _exit_code(st) not in ok_codes:
            stderr = err.getvalue()[:200].decode(errors="replace").strip()
            raise SigtraceError(f"{command[0]} in {namespace}/{pod} failed: "
                                f"{'; '.join(filter(None, [st.get('message'), stderr]))!r}")
    return written


def agent_health(api: Any, namespace: str, pod: str, now: float | None = None) -> dict[str, Any]:
    """One agent's status.json (see sigtrace/k8s/health.py), read over pods/exec, plus "stale"; or
    {"error": one line} when it cannot be had."""
    from kubernetes.client.exceptions import ApiException
    try:
        data = exec_read(api, namespace, pod, ["cat", STATUS_PATH])
        health = json.loads(data)
        if not isinstance(health, dict):
            raise ValueError("not a JSON object")
    except ApiException as exc:
        if exc.status == 403:
            return {"error": "pods/exec forbidden (403): your user lacks create on pods/exec"}
        return {"error": f"pods/exec failed: {exc.status} {exc.reason}"}
    except SigtraceError as exc:
        text = str(exc)
        if "No such file" in text or "exit code: 1" in text:
            return {"error": "no status.json yet (agent starting, or an older agent image)"}
        return {"error": text[:200]}
    except ValueError as exc:
        return {"error": f"status.json unreadable ({exc})"}
    except Exception as exc:  # noqa: BLE001 - a connection problem for one node must not hide the others
        return {"error": f"pods/exec failed ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"}
    age = (now if now is not None else time.time()) - float(health.get("written_at") or 0)
    health["age_s"] = round(age, 1)
    health["stale"] = age > max(STALE_AFTER_S, 3 * float(health.get("every_s") or 0))
    return health


def safe_extract(data: Any, dest: Path, max_bytes: int = MAX_COLLECT_BYTES) -> list[str]:
    """Extract regular files and directories only, never outside dest, never through a link already
    in dest, streaming each member (the archive is remote input: a sparse member may declare 4 GiB).
    data: bytes, a path, or a binary file object. Members past max_bytes in all are skipped."""
    names: list[str] = []
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    fileobj = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else None
    budget = max_bytes
    with (tarfile.open(fileobj=fileobj, mode="r|") if fileobj is not None else tarfile.open(str(data), mode="r|")) as tf:
        for m in tf:
            target = (dest / m.name).resolve()
            if not (target == root or root in target.parents):
                continue
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif m.isfile():
                if m.size > budget:
                    raise SigtraceError(f"{m.name} is {_size(m.size)}, more than the {_size(max_bytes)} this "
                                        f"collection may write; raise --max-bytes")
                budget -= m.size
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
                with src, os.fdopen(fd, "wb") as fh:
                    shutil.copyfileobj(src, fh, 1 << 20)
                names.append(str(target.relative_to(root)))
    return names


def nodes_of(api: Any, pods: tuple[str, ...], default_ns: str) -> set[str]:
    from kubernetes import client
    nodes = set()
    for ref in pods:
        ns, _, name = ref.rpartition("/")
        try:
            resp = client.CoreV1Api(api).read_namespaced_pod(name, ns or default_ns, _preload_content=False)
        except Exception as exc:  # noqa: BLE001
            raise _api_error(exc, f"reading pod {ref}") from None
        node = (json.loads(resp.data).get("spec") or {}).get("nodeName")
        if not node:
            raise UsageProblem(f"pod {ref} is not scheduled on a node yet; nothing to collect for it")
        nodes.add(node)
    return nodes


def collect(api: Any, namespace: str, output: Path, pods: tuple[str, ...] = (), pods_ns: str = "default",
            max_bytes: int = MAX_COLLECT_BYTES) -> dict[str, list[str]]:
    """Pull every agent's output (or only the agents on the nodes of `pods`) into output/<node>/."""
    wanted = nodes_of(api, pods, pods_ns) if pods else None
    agents = [p for p in agent_pods(api, namespace)
              if wanted is None or (p.get("spec") or {}).get("nodeName") in wanted]
    if not agents:
        where = f"on nodes {', '.join(sorted(wanted))}" if wanted else f"in namespace {namespace}"
        raise UsageProblem(f"no sigtrace agent pods {where}: run `kubectl sigtrace deploy` / check `status`")
    got: dict[str, list[str]] = {}
    failed: list[str] = []
    output.mkdir(parents=True, exist_ok=True)
    for p in agents:
        node = (p.get("spec") or {}).get("nodeName") or p["metadata"]["name"]
        try:
            got[node] = _collect_one(api, namespace, p["metadata"]["name"], output, node, max_bytes)
        except SigtraceError as exc:
            failed.append(f"{node}: {exc}")       # the other nodes are still collected
    if failed:
        raise SigtraceError(f"{len(failed)} of {len(agents)} nodes not collected ({'; '.join(failed)}); "
                            f"the others are in {output}")
    return got


def _collect_one(api: Any, namespace: str, pod: str, output: Path, node: str, max_bytes: int) -> list[str]:
    # the archive goes to disk as it arrives (never whole in memory), capped, then is extracted
    with tempfile.NamedTemporaryFile(dir=output, prefix=".collect-", suffix=".tar") as tmp:
        try:
            # tar exits 1 when a file changed or vanished while read: a running agent's current
            # segment grows, its status and reports are replaced, its disk cap removes segments
            exec_stream(api, namespace, pod, TAR_COMMAND, tmp, max_bytes, ok_codes=(1,))
        except SigtraceError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _api_error(exc, f"collecting from {namespace}/{pod} (pods/exec)") from None
        tmp.flush()
        try:
            return safe_extract(tmp.name, output / node, max_bytes)
        except tarfile.TarError as exc:
            raise SigtraceError(f"the archive from {namespace}/{pod} is unreadable ({exc}); collect again") from None


def recordings_under(root: Path) -> list[Path]:
    """Every run directory below root, also one whose events.jsonl the disk cap already removed."""
    from .events.segments import run_dirs_under
    return run_dirs_under(root)


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
    from .k8s.manifests import render
    for line in undeploy_objects(c.api, render(namespace=c.namespace)):
        click.echo(line)


@plugin.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (each node's status.json under health).")
@click.option("--no-health", is_flag=True, help="Readiness only: no pods/exec into the agents.")
@click.pass_obj
def status(c: Ctx, as_json: bool, no_health: bool) -> None:
    """Per node: ready, armed pods, events/s, lost events, disk used, last report."""
    st = agent_status(c.api, c.namespace)
    if not no_health:
        add_health(c.api, c.namespace, st)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f"agents ready: {st['ready']}/{st['desired']}")
    if no_health:
        click.echo(f"{'NODE':<24} {'POD':<32} {'READY':<6} {'PHASE':<10} RESTARTS")
        for n in st["nodes"]:
            click.echo(f"{n['node'] or '-':<24} {n['pod']:<32} {'yes' if n['ready'] else 'no':<6} "
                       f"{n['phase'] or '-':<10} {n['restarts']}")
        return
    for line in status_rows(st, c.namespace):
        click.echo(line)


@plugin.command(name="collect")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Local directory (created).")
@click.option("--pod", "pods", multiple=True, help="Only the nodes of this pod, NS/NAME or NAME (repeatable).")
@click.option("--pods-namespace", default="default", show_default=True, help="Namespace of --pod NAME without NS/.")
@click.option("--max-bytes", type=click.IntRange(min=1), default=MAX_COLLECT_BYTES, show_default=True,
              help="At most this many bytes per node, in transit and on disk.")
@click.pass_obj
def collect_cmd(c: Ctx, output: str, pods: tuple[str, ...], pods_namespace: str, max_bytes: int) -> None:
    """Pull events and reports from the agents into OUTPUT/<node>/."""
    out = Path(output)
    got = collect(c.api, c.namespace, out, pods, pods_namespace, max_bytes)
    for node, files in sorted(got.items()):
        # a run whose first segment the disk cap removed still counts
        recs = len({Path(f).parts[0] for f in files if segment_seq(Path(f).name) is not None})
        click.echo(f"{node}: {len(files)} files, {recs} recordings -> {out / node}")


@plugin.command(name="report")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
def report_cmd(directory: str, fmt: str) -> None:
    """Shutdown reports for every recording under DIRECTORY (as written by collect)."""
    recs = recordings_under(Path(directory))
    if not recs:
        raise UsageProblem(f"{directory}: no recordings (no events.jsonl below it); run `kubectl sigtrace collect` first")
    from .render.safe import visible
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
    """What the agent's meta.json says is missing from the API side (a collected file: checked and
    shown with visible escapes)."""
    from .events.validate import clean_meta
    from .render.safe import visible
    try:
        meta, _ = clean_meta(json.loads((rec / "meta.json").read_bytes()))
    except (OSError, ValueError):
        return ["no readable meta.json: Kubernetes API data may be missing"]
    k8s = meta.get("kubernetes") if isinstance(meta.get("kubernetes"), dict) else {}
    problems = k8s.get("problems") if isinstance(k8s.get("problems"), dict) else {}
    notes = [f"API data incomplete: {visible(line)}" for line in problems.values()]
    missing = k8s.get("pods_without_container_ids")
    if isinstance(missing, list) and missing:
        notes.append("no container names from the API for: " + ", ".join(visible(x) for x in missing))
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
        click.echo(f"kubectl-sigtrace: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)

"""Pull the agents' output to this machine (what `kubectl cp` does: `tar` in the agent container over
pods/exec), one directory per node. The archive is remote input: streamed to disk under a cap, then
extracted without links, paths outside the destination, or members larger than the cap."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from ..errors import SigtraceError, UsageProblem
from ..events.segments import segment_seq
from .agents import AGENT_OUTPUT, agent_pods
from .client import api_error
from .exec import exec_stream
from .units import human_size

TAR_COMMAND = ["tar", "cf", "-", "-C", AGENT_OUTPUT, "."]
MAX_COLLECT_BYTES = 4 << 30          # per node; an agent keeps at most --max-disk (1 GiB by default)


def collect(api: Any, namespace: str, output: Path, pods: tuple[str, ...] = (), pods_ns: str = "default",
            max_bytes: int = MAX_COLLECT_BYTES) -> dict[str, list[str]]:
    """Pull every agent's output (or only the agents on the nodes of `pods`) into output/<node>/;
    node -> the files written there. One failing node does not stop the others: SigtraceError
    naming it once the others are in."""
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
            if not _is_dns_name(node):
                # it names a directory under --output: never "..", "/", or a terminal's escape
                raise SigtraceError(f"the agent pod's node name {str(node)!r} is not a DNS name; skipped")
            got[node] = _collect_one(api, namespace, p["metadata"]["name"], output, node, max_bytes)
        except SigtraceError as exc:
            # the other nodes are still collected; the message is escaped where it is printed
            failed.append(f"{node}: {exc}")
    if failed:
        raise SigtraceError(f"{len(failed)} of {len(agents)} nodes not collected ({'; '.join(failed)}); "
                            f"the others are in {output}")
    return got


_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")


def _is_dns_name(name: Any) -> bool:
    """A Kubernetes node name (an RFC 1123 subdomain, at most 253 characters)."""
    return isinstance(name, str) and 0 < len(name) <= 253 and _DNS_NAME.match(name) is not None


def nodes_of(api: Any, pods: tuple[str, ...], default_ns: str) -> set[str]:
    """The nodes pods (NS/NAME, or NAME in default_ns) are scheduled on."""
    from kubernetes import client
    nodes = set()
    for ref in pods:
        ns, _, name = ref.rpartition("/")
        try:
            resp = client.CoreV1Api(api).read_namespaced_pod(name, ns or default_ns, _preload_content=False)
        except Exception as exc:  # noqa: BLE001
            raise api_error(exc, f"reading pod {ref}") from None
        try:
            body = json.loads(resp.data)
            node = (body.get("spec") or {}).get("nodeName") if isinstance(body, dict) else None
        except (ValueError, RecursionError, AttributeError):
            raise SigtraceError(f"the API's answer for pod {ref} is not a pod; try again") from None
        if not node:
            raise UsageProblem(f"pod {ref} is not scheduled on a node yet; nothing to collect for it")
        nodes.add(node)
    return nodes


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
            raise api_error(exc, f"collecting from {namespace}/{pod} (pods/exec)") from None
        tmp.flush()
        try:
            return safe_extract(tmp.name, output / node, max_bytes)
        except tarfile.TarError as exc:
            raise SigtraceError(f"the archive from {namespace}/{pod} is unreadable ({exc}); collect again") from None


def safe_extract(data: Any, dest: Path, max_bytes: int = MAX_COLLECT_BYTES) -> list[str]:
    """Extract regular files and directories only, never outside dest, never through a link already
    in dest, streaming each member (the archive is remote input: a sparse member may declare 4 GiB).
    data: bytes, a path, or a binary file object. Members past max_bytes in all are skipped."""
    names: list[str] = []
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    fileobj = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else None
    budget = max_bytes
    skipped: list[str] = []
    with (tarfile.open(fileobj=fileobj, mode="r|") if fileobj is not None else tarfile.open(str(data), mode="r|")) as tf:
        for m in tf:
            try:
                target = (dest / m.name).resolve()
                if not (target == root or root in target.parents):
                    continue
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    if m.size > budget:
                        raise SigtraceError(f"{m.name} is {human_size(m.size)}, more than the "
                                            f"{human_size(max_bytes)} this collection may write; raise --max-bytes")
                    budget -= m.size
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(m)
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
                    with src, os.fdopen(fd, "wb") as fh:
                        shutil.copyfileobj(src, fh, 1 << 20)
                    names.append(str(target.relative_to(root)))
            except OSError as exc:
                # a member whose name another took (a file, then a directory of that name), too long
                # a name: that member is skipped; a member's data is read past by the stream
                skipped.append(f"{m.name[:120]} ({exc.strerror or exc})")
    if skipped:
        raise SigtraceError(f"{len(skipped)} member(s) of the archive could not be written, first "
                            f"{skipped[0]}; the rest is in {dest}")
    return names


def recordings_in(files: list[str]) -> int:
    """How many recordings (run directories) a node's collected files hold; a run whose first
    segment the disk cap removed still counts."""
    return len({Path(f).parts[0] for f in files if segment_seq(Path(f).name) is not None})


def api_gaps(rec: Path) -> dict[str, list[Any]] | None:
    """What a collected recording's meta.json says is missing from the API side: {"problems": one
    line per resource, "unnamed_pods": pods the API gave no container names for}; None when there is
    no readable meta.json. Remote input: read through clean_meta and shape-checked, not escaped."""
    from ..events.validate import clean_meta
    try:
        meta, _ = clean_meta(json.loads((rec / "meta.json").read_bytes()))
    except (OSError, ValueError, RecursionError):
        return None
    k8s = meta.get("kubernetes") if isinstance(meta.get("kubernetes"), dict) else {}
    problems = k8s.get("problems") if isinstance(k8s.get("problems"), dict) else {}
    unnamed = k8s.get("pods_without_container_ids")
    return {"problems": list(problems.values()), "unnamed_pods": unnamed if isinstance(unnamed, list) else []}

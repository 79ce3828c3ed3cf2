"""Commands in an agent container over pods/exec (what `kubectl exec` does): its stdout streamed to
a sink, capped, because the remote end is not trusted to stop; its exit code from the status channel."""
from __future__ import annotations

import io
import json
from typing import Any

from ..errors import SigtraceError
from .units import human_size

AGENT_CONTAINER = "agent"       # the DaemonSet's container (daemonset/base/daemonset.yaml)


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
                command=command, container=AGENT_CONTAINER,
                stderr=True, stdin=False, stdout=True, tty=False, binary=True, _preload_content=False)
    err = io.BytesIO()
    written = 0

    def take(chunk: bytes) -> None:
        nonlocal written
        if written + len(chunk) > max_bytes:
            raise SigtraceError(f"{command[0]} in {namespace}/{pod} sent more than {human_size(max_bytes)}; "
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

"""Commands in an agent container over pods/exec (what `kubectl exec` does): its stdout streamed to
a sink, capped, because the remote end is not trusted to stop; its exit code from the status channel."""
from __future__ import annotations

import io
import json
import select
import time
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


STDERR_KEPT = 4096              # of the command's stderr, for the error line; the rest is read and dropped
STALL_S = 60.0                  # no output for this long (silence, or stderr only): the remote end is stuck
STATUS_KEPT = 64 << 10          # the status channel: one small JSON object


_CLOSED = object()


def _next_frame(ws: Any, timeout: float) -> tuple[int, bytes] | None | object:
    """The exec stream's next frame as (channel, bytes); None when nothing came within timeout;
    _CLOSED at its end. One frame at a time, dropped once the caller used it: the client's own
    update() reads every frame available before it returns (a flood never returns) and keeps all
    output in memory. (One frame is still read whole by websocket-client, whatever its length.)"""
    from websocket import ABNF
    sock = ws.sock
    if not sock.connected:
        return _CLOSED
    pending = getattr(sock.sock, "pending", None)
    if not (pending and pending()):
        poll = select.poll()                     # not select(): a descriptor may be past 1024
        poll.register(sock.sock, select.POLLIN)
        if not poll.poll(timeout * 1000):
            return None
    op, frame = sock.recv_data_frame(True)
    if op == ABNF.OPCODE_CLOSE:
        return _CLOSED
    data = frame.data if op in (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT) else b""
    if isinstance(data, str):
        data = data.encode()
    return (data[0], data[1:]) if data else None


def exec_stream(api: Any, namespace: str, pod: str, command: list[str], sink: Any, max_bytes: int,
                ok_codes: tuple[int, ...] = (), stall_s: float = STALL_S) -> int:
    """Run `command` in the agent container over pods/exec, writing its stdout to sink as it arrives;
    never more than max_bytes (the remote end is not trusted to stop), every channel drained as it
    comes (an endless stderr is read and dropped, not buffered), SigtraceError when no output arrives
    for stall_s. Returns the bytes written."""
    from kubernetes import client
    from kubernetes.stream import stream
    from kubernetes.stream.ws_client import ERROR_CHANNEL, STDERR_CHANNEL, STDOUT_CHANNEL
    ws = stream(client.CoreV1Api(api).connect_get_namespaced_pod_exec, pod, namespace,
                command=command, container=AGENT_CONTAINER,
                stderr=True, stdin=False, stdout=True, tty=False, binary=True, _preload_content=False)
    err = io.BytesIO()
    written = 0
    status = b""

    def take(chunk: bytes) -> None:
        nonlocal written
        if written + len(chunk) > max_bytes:
            raise SigtraceError(f"{command[0]} in {namespace}/{pod} sent more than {human_size(max_bytes)}; "
                                f"raise --max-bytes, or collect with --pod to narrow it down")
        sink.write(chunk)
        written += len(chunk)
    try:
        last = time.monotonic()
        while True:
            frame = _next_frame(ws, 1.0)
            if frame is _CLOSED:
                break
            if frame is not None:
                channel, data = frame
                if channel == STDOUT_CHANNEL:
                    take(data)
                    last = time.monotonic()
                elif channel == STDERR_CHANNEL and err.tell() < STDERR_KEPT:
                    err.write(data[:STDERR_KEPT - err.tell()])      # the rest is read and dropped
                elif channel == ERROR_CHANNEL and len(status) < STATUS_KEPT:
                    status += data
            if time.monotonic() - last > stall_s:       # silent, or only ever stderr
                raise SigtraceError(f"{command[0]} in {namespace}/{pod} sent no output for {stall_s:.0f} s; "
                                    "check the agent pod, then try again")
    finally:
        ws.close()
    if status:
        try:
            st = json.loads(status)
            st = st if isinstance(st, dict) else {}
        except (ValueError, RecursionError):
            st = {"message": "unreadable exec status"}
        if st.get("status") != "Success" and _exit_code(st) not in ok_codes:
            stderr = err.getvalue()[:200].decode(errors="replace").strip()
            raise SigtraceError(f"{command[0]} in {namespace}/{pod} failed: "
                                f"{'; '.join(filter(None, [st.get('message'), stderr]))!r}")
    return written

"""pods/exec for the fake API server: a real WebSocket (RFC 6455) upgrade speaking the
v4.channel.k8s.io protocol: each binary frame's first byte is the channel (1 stdout, 2 stderr,
3 the final Status), as the kubelet's streaming server sends it."""
from __future__ import annotations

import base64
import hashlib
import json
import struct
from urllib.parse import parse_qs, urlparse

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _frame(payload: bytes, opcode: int = 0x2) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload            # server frames are not masked


def serve_exec(handler, api, ns: str, pod: str, path: str) -> None:
    q = parse_qs(urlparse(path).query)
    command = q.get("command", [])
    key = handler.headers.get("Sec-WebSocket-Key")
    if not key or api.exec_handler is None:
        handler._send_json(400, {"kind": "Status", "status": "Failure", "code": 400, "message": "not an upgrade"})
        return
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    handler.send_response(101, "Switching Protocols")
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept)
    handler.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
    handler.end_headers()
    with api.cond:
        api.execs.append((ns, pod, command))
    result = api.exec_handler(ns, pod, command)
    w = handler.wfile
    if callable(result):
        # a misbehaving remote end: the handler writes frames itself, (channel, bytes) each, as long as it likes
        def write(channel: int, data: bytes) -> None:
            w.write(_frame(bytes([channel]) + data))
            w.flush()
        try:
            result(write)
        except OSError:
            pass                     # the client went away
        handler.close_connection = True
        return
    stdout, stderr, code = result
    for i in range(0, len(stdout), 32768):
        w.write(_frame(b"\x01" + stdout[i:i + 32768]))
    if stderr:
        w.write(_frame(b"\x02" + stderr))
    status = {"metadata": {}, "status": "Success"} if code == 0 else {
        "metadata": {}, "status": "Failure", "message": f"command terminated with non-zero exit code: {code}",
        "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
    w.write(_frame(b"\x03" + json.dumps(status).encode()))
    w.write(_frame(struct.pack("!H", 1000), opcode=0x8))
    w.flush()
    handler.close_connection = True

"""Connection churn for the soak benchmark: HTTP requests with `Connection: close` to a pod at a
fixed rate (one TCP connection each), run inside the pod's network namespace.

Usage: python -m bench.churn PORT RATE SECONDS [PATH]; prints {"connections", "ok", "failed",
"elapsed_s"} as JSON. Paced in 10 ms steps; a failed connection is counted, never retried.
"""
from __future__ import annotations

import json
import socket
import sys
import time


def one(port: int, request: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def churn(port: int, rate: float, seconds: float, path: str = "/static") -> dict:
    request = f"GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n".encode()
    done = ok = 0
    t0 = time.monotonic()
    while (elapsed := time.monotonic() - t0) < seconds:
        due = int(rate * elapsed) - done
        if due <= 0:
            time.sleep(0.01)
            continue
        for _ in range(min(due, 100)):
            ok += one(port, request)
            done += 1
    return {"connections": done, "ok": ok, "failed": done - ok, "elapsed_s": round(time.monotonic() - t0, 2)}


if __name__ == "__main__":
    port, rate, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(churn(port, rate, seconds, *sys.argv[4:5])))
